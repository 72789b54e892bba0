"""The chat prompt format on a checkpoint in DiffusionGemma's published layout (Gemma ids, no FIM markers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from dg_lsp.canvas import HoleKind
from dg_lsp.config import CompletionOptions, RewriteOptions
from dg_lsp.engine.denoiser import DenoiseOutcome
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.prompt_cache import EncodeStats, common_prefix_length
from dg_lsp.infill import complete, rewrite
from dg_lsp.model.loader import LoadedModel, ModelLoadError, load_model
from dg_lsp.prompting.chat import HOLE, TASKS, HoleText, instruction
from dg_lsp.syntax import DocumentTree
from dg_lsp.testing_published import (
    CHANNEL_CLOSE,
    CHANNEL_OPEN,
    PUBLISHED_GENERATION_CONFIG,
    build_published_checkpoint,
    without_eos_ids,
)

PREFIX = "import math\n\ndef mean(xs):\n    total = "
SUFFIX = "\n    return total / len(xs)\n"


@pytest.fixture(scope="module")
def loaded(published_model_dir: Path) -> LoadedModel:
    return load_model(published_model_dir, device="cpu")


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Engine:
    return Engine(loaded)


def request(**overrides: Any) -> InfillRequest:
    fields: dict[str, Any] = dict(
        prefix=PREFIX, suffix=SUFFIX, language="python", kind=HoleKind.REST_OF_LINE, file_name="stats.py"
    )
    fields.update(overrides)
    return InfillRequest(**fields)


def rendered_ids(path: Path, user_turn: str) -> list[int]:
    """What transformers' own apply_chat_template gives for one user turn (generation prompt on, thinking off)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_turn}], tokenize=True, add_generation_prompt=True, enable_thinking=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def test_the_published_layout_is_what_the_builder_writes(published_model_dir: Path) -> None:
    files = {p.name for p in published_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json"} <= files
    assert "model.safetensors.index.json" in files and len([f for f in files if f.startswith("model-0")]) >= 2
    vocab = json.loads((published_model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert [vocab[t] for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<unused0>")] == [0, 1, 2, 3, 4, 6]
    assert (vocab["<start_of_turn>"], vocab["<end_of_turn>"]) == (105, 106)
    assert not any("fim" in token for token in vocab)
    assert json.loads((published_model_dir / "generation_config.json").read_text()) == PUBLISHED_GENERATION_CONFIG


def test_a_checkpoint_without_fim_markers_loads_in_the_chat_format(loaded: LoadedModel, engine: Engine) -> None:
    assert loaded.layout is None
    assert loaded.prompting.formats == ("chat",)
    assert engine.prompt_format == "chat"
    facts = engine.describe()
    assert facts["promptFormat"] == "chat" and facts["promptFormats"] == ["chat"]
    assert facts["eosIds"] == [1, 50, 106]


def test_the_sampler_comes_from_generation_config(engine: Engine) -> None:
    defaults = engine.sampler_defaults
    assert (defaults.max_steps, defaults.entropy_bound, defaults.t_min, defaults.t_max) == (48, 0.1, 0.4, 0.8)
    assert (defaults.stability_threshold, defaults.confidence_threshold) == (1, 0.005)
    assert engine.describe()["sampler"]["maxSteps"] == 48
    # Unset settings take the checkpoint's values (a full canvas gets all 48 steps); set ones win.
    block = engine.prepare(request(kind=HoleKind.BLOCK, settings=CompletionOptions().sampler(defaults)))
    assert block.spec.length == 256 and block.settings.max_steps == 48 and block.settings.t_max == 0.8
    mine = engine.prepare(request(kind=HoleKind.BLOCK, settings=CompletionOptions(max_steps=20).sampler(defaults)))
    assert mine.settings.max_steps == 20 and mine.settings.t_min == 0.4


def test_prompt_is_the_chat_template_around_the_instruction(published_model_dir: Path, engine: Engine) -> None:
    prepared = engine.prepare(request())
    turn = instruction(HoleText(PREFIX, SUFFIX, "python", HoleKind.REST_OF_LINE, "stats.py"))
    assert prepared.prompt == rendered_ids(published_model_dir, turn)
    text = engine.loaded.tokenizer.decode(prepared.prompt, skip_special_tokens=False)
    assert text.startswith("<bos><start_of_turn>user\n")
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n<|channel>thought\n<channel|>")  # thinking off
    # The turn names the language and the file, marks the hole, and puts the code after it first.
    assert "Python file `stats.py`" in turn and f"{HOLE}{SUFFIX}" in turn and f"{PREFIX}{HOLE}" in turn
    assert turn.index(SUFFIX) < turn.index(PREFIX)
    assert "rest of the line" in turn and turn.endswith(TASKS[HoleKind.REST_OF_LINE])


@pytest.mark.parametrize(
    ("kind", "words"),
    [(HoleKind.REST_OF_LINE, "rest of the line"), (HoleKind.LINE, "one line"), (HoleKind.BLOCK, "lines of code"),
     (HoleKind.SELECTION, "Rewrite the code in the hole")],
)
def test_the_instruction_says_what_to_produce(kind: HoleKind, words: str) -> None:
    assert words in instruction(HoleText(PREFIX, SUFFIX, "python", kind))


def test_typing_keeps_the_prompt_up_to_the_cursor(engine: Engine) -> None:
    before = engine.prepare(request()).prompt
    after = engine.prepare(request(prefix=PREFIX + "s")).prompt
    shared = common_prefix_length(before, after)
    rendered = engine.chat_prompt(request(), PREFIX, SUFFIX)
    cursor = rendered.index(PREFIX + HOLE) + len(PREFIX)
    up_to_cursor = engine.count_tokens(rendered[:cursor])
    assert shared >= up_to_cursor - 2, (len(before), shared, up_to_cursor)
    # Only what follows the cursor (hole marker, the short request, the template's end) is encoded again.
    assert len(before) - shared <= engine.count_tokens(rendered[cursor:]) + 2


def test_the_prompt_cache_is_reused_while_typing(engine: Engine) -> None:
    first = engine.infill(request(settings=CompletionOptions(max_steps=1).sampler()))
    second = engine.infill(request(prefix=PREFIX + "su", settings=CompletionOptions(max_steps=1).sampler()))
    assert first.encode.prompt_tokens > 100
    rendered = engine.chat_prompt(request(), PREFIX, SUFFIX)
    up_to_cursor = engine.count_tokens(rendered[: rendered.index(PREFIX + HOLE) + len(PREFIX)])
    assert second.encode.reused_tokens >= up_to_cursor - 2
    assert second.encode.encoded_tokens == second.encode.prompt_tokens - second.encode.reused_tokens


def test_context_is_cut_to_the_budget_near_the_hole(engine: Engine) -> None:
    far = "".join(f"value_{i} = {i}\n" for i in range(400))
    small = engine.prepare(request(prefix=far + PREFIX, suffix=SUFFIX + far, max_context_tokens=64))
    whole = engine.prepare(request())
    overhead = len(whole.prompt) - engine.count_tokens(PREFIX) - engine.count_tokens(SUFFIX)
    assert len(small.prompt) <= 64 + overhead + 8
    text = engine.loaded.tokenizer.decode(small.prompt, skip_special_tokens=False)
    assert PREFIX + HOLE in text and "value_0 =" not in text


def canvas_with(engine: Engine, *pieces: list[int] | str) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        ids += engine.loaded.tokenizer.encode(piece, add_special_tokens=False).ids if isinstance(piece, str) else piece
    return ids + [7] * (32 - len(ids))  # junk after the stop must be ignored


@pytest.mark.parametrize("stop", [1, 106, 50, 0])
def test_the_canvas_stops_at_the_checkpoint_eos_ids(engine: Engine, stop: int) -> None:
    prepared = engine.prepare(request())
    canvas = canvas_with(engine, "sum(xs)", [stop], "junk after")
    result = engine.result(prepared, DenoiseOutcome(canvas=canvas, steps=3, stopped_early=True), EncodeStats(1, 0, 1), 0, 0)
    assert result.text == "sum(xs)" and result.ended


def test_thinking_and_special_tokens_are_not_part_of_the_answer(engine: Engine) -> None:
    prepared = engine.prepare(request())
    canvas = canvas_with(engine, f"{CHANNEL_OPEN}thought\nthe sum of xs{CHANNEL_CLOSE}sum(xs)", [106])
    result = engine.result(prepared, DenoiseOutcome(canvas=canvas, steps=1, stopped_early=True), EncodeStats(1, 0, 1), 0, 0)
    assert result.text == "sum(xs)"


def test_drafts_are_decoded_the_same_way(engine: Engine) -> None:
    seen: list[str] = []
    report = engine.draft_reporter(lambda text, step, total, final: seen.append(text))
    assert report is not None
    from dg_lsp.engine.denoiser import Draft

    report(Draft(step=1, max_steps=8, canvas=canvas_with(engine, f"{CHANNEL_OPEN}thought\nhalf way"), final=False))
    report(Draft(step=2, max_steps=8, canvas=canvas_with(engine, "sum(xs)", [106]), final=True))
    assert seen == ["", "sum(xs)"]


def test_a_rewrite_seeds_the_canvas_with_the_selection(engine: Engine) -> None:
    selection = "sum(xs)"
    prepared = engine.prepare(request(kind=HoleKind.SELECTION, seed_text=selection))
    ids = engine.loaded.tokenizer.encode(selection, add_special_tokens=False).ids
    assert prepared.spec.seed_ids is not None
    assert prepared.spec.seed_ids[: len(ids)] == ids
    assert set(prepared.spec.seed_ids[len(ids) :]) == {106}  # then <end_of_turn>, an eos id
    turn = engine.loaded.tokenizer.decode(prepared.prompt, skip_special_tokens=False)
    assert "Rewrite the code in the hole" in turn and f"```python\n{selection}\n```" in turn


def test_completion_and_rewrite_run_end_to_end(engine: Engine) -> None:
    text = PREFIX + SUFFIX
    doc = DocumentTree(text, "python")
    options = CompletionOptions(max_steps=2, parse_check=False)
    drafts: list[str] = []
    result = complete(
        engine, text, doc.tree, "python", len(PREFIX), options,
        on_draft=lambda t, s, n, f: drafts.append(t), file_name="stats.py",
    )
    assert drafts and (result is None or "\n" not in result.text)  # a rest-of-line hole
    if result is not None:
        assert result.result.steps <= 8
    start = text.index("total / len(xs)")
    edit = rewrite(
        engine, text, "python", start, start + len("total / len(xs)"), options, RewriteOptions(max_steps=2),
        file_name="stats.py",
    )
    assert edit is None or (start <= edit.edit_start <= edit.edit_end <= start + len("total / len(xs)"))


def test_forcing_a_format_the_checkpoint_lacks_is_one_clear_error(loaded: LoadedModel, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="promptFormat is fim, but the tokenizer has no FIM markers"):
        Engine(loaded, prompt_format="fim")
    fim = load_model(tiny_model_dir, device="cpu")
    assert Engine(fim).prompt_format == "fim"
    with pytest.raises(ModelLoadError, match="no chat template"):
        Engine(fim, prompt_format="chat")


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_no_chat_template_and_no_fim_markers_is_one_clear_error(published_model_dir: Path, tmp_path: Path) -> None:
    bad = copy_checkpoint(published_model_dir, tmp_path / "no-template")
    (bad / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_model(bad, device="cpu")
    message = str(error.value)
    assert message.count(str(bad)) == 1
    assert "no FIM markers" in message and "no chat template (chat_template.jinja" in message


def test_no_eos_ids_is_one_clear_error(published_model_dir: Path, tmp_path: Path) -> None:
    bad = without_eos_ids(copy_checkpoint(published_model_dir, tmp_path / "no-eos"))
    with pytest.raises(ModelLoadError, match="names no eos ids"):
        load_model(bad, device="cpu")


def test_eos_ids_fall_back_to_config_json(published_model_dir: Path, tmp_path: Path) -> None:
    other = build_published_checkpoint(
        tmp_path / "config-eos", generation_config={k: v for k, v in PUBLISHED_GENERATION_CONFIG.items() if k != "eos_token_id"}
    )
    assert load_model(other, device="cpu").prompting.eos_ids == (1, 106)
    del published_model_dir


def test_an_invalid_generation_config_is_one_clear_error(published_model_dir: Path, tmp_path: Path) -> None:
    bad = copy_checkpoint(published_model_dir, tmp_path / "bad-gen")
    (bad / "generation_config.json").write_text(json.dumps({**PUBLISHED_GENERATION_CONFIG, "t_min": 0.9}))
    with pytest.raises(ModelLoadError, match="not a valid DiffusionGemma generation config"):
        load_model(bad, device="cpu")


def test_a_chat_template_inside_tokenizer_config_is_found(published_model_dir: Path, tmp_path: Path) -> None:
    other = copy_checkpoint(published_model_dir, tmp_path / "template-in-config")
    template = (other / "chat_template.jinja").read_text()
    (other / "chat_template.jinja").unlink()
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    engine = Engine(load_model(other, device="cpu"))
    assert engine.prompt_format == "chat"
    assert engine.prepare(request()).prompt == Engine(load_model(published_model_dir, device="cpu")).prepare(request()).prompt

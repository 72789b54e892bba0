"""Training: editor new-line holes, loss weighting, the encoder next-token loss, a tiny resumable run, GPU packing."""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import DynamicCache

from dg_lsp.canvas import resolve_layout_tokens
from dg_lsp.model.typing import text_config, vocab_size
from dg_lsp.train import gpu_run
from dg_lsp.train import trainer as T
from dg_lsp.train.examples import Example, ExampleMaker, SourceFile, editor_line_hole, read_corpus

SOURCE = '''import os


def walk(root):
    """Yield files."""
    for entry in os.scandir(root):
        if entry.is_dir():
            yield from walk(entry.path)
        else:
            yield entry.path


class Counter:
    def __init__(self):
        self.count = 0

    def add(self, n):
        self.count += n
        return self.count
'''


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def test_editor_line_hole_leaves_an_empty_line_with_the_cursor_at_column_zero() -> None:
    rng = random.Random(3)
    for _ in range(50):
        count = rng.randint(1, 4)
        span = editor_line_hole(SOURCE, rng, count)
        assert span is not None
        start, end = span
        assert start == 0 or SOURCE[start - 1] == "\n"  # the hole starts at column 0
        middle = SOURCE[start:end]
        assert middle.strip() and not middle.endswith("\n")
        lines = [line for line in middle.split("\n") if line.strip()]
        assert 1 <= len(lines) <= count
        holed = SOURCE[:start] + SOURCE[end:]
        line_end = holed.find("\n", start)
        assert holed[start:line_end] == ""  # an empty line where the hole was
    assert editor_line_hole("\n\n  \n", rng) is None


def test_editor_layout_examples_carry_indentation_in_the_middle(tokenizer: Tokenizer) -> None:
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    maker = ExampleMaker(tokenizer, layout, context_tokens=128, max_canvas=128, editor_line_share=1.0)
    rng = random.Random(0)
    source = SourceFile(SOURCE, "python")
    made = [e for e in (maker.make(source, rng) for _ in range(30)) if e is not None]
    assert len(made) >= 20
    decoded = [tokenizer.decode(e.canvas[: e.middle_tokens], skip_special_tokens=False) for e in made]
    assert any(text.startswith("    ") for text in decoded)  # indented lines are written in full
    for example in made:
        assert example.canvas[example.middle_tokens] == layout.end_of_middle
        assert len(example.canvas) in (32, 64, 128)


def _examples(tokenizer: Tokenizer, n: int, seed: int = 0) -> list[Example]:
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    maker = ExampleMaker(tokenizer, layout, context_tokens=96, max_canvas=32)
    stream = maker.stream([SourceFile(SOURCE, "python")], [1.0], random.Random(seed))
    return [next(stream) for _ in range(n)]


def test_collate_weights_padding_after_the_first_end_of_middle(tokenizer: Tokenizer) -> None:
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 4))
    batch = T.collate(group, layout, eom_weight=0.1)
    for row, example in enumerate(group):
        weights = batch.canvas_weight[row]
        assert torch.all(weights[: example.middle_tokens + 1] == 1.0)
        assert torch.allclose(weights[example.middle_tokens + 1 :], torch.tensor(0.1))
        # the next-token loss never targets a layout marker or padding
        scored = batch.prompt[row, 1:][batch.lm_mask[row]]
        markers = {layout.bos, layout.fim_prefix, layout.fim_suffix, layout.fim_middle, layout.pad}
        assert not set(scored.tolist()) & markers
        assert int(batch.lm_mask[row].sum()) > 0


def _replaced(share: float, batch: T.Batch, draws: int = 200) -> tuple[float, float]:
    """Share of middle-region and of padding positions that ``draw_noise`` replaced, over many draws."""
    config = T.TrainConfig(geometry="tiny", sampler_noise_share=share, min_noise=0.0)
    generator = torch.Generator().manual_seed(7)
    middle = tail = 0.0
    for _ in range(draws):
        noisy = T.draw_noise(batch.canvas, 50_000, config, generator, batch.middle_region).noisy
        changed = (noisy != batch.canvas).float()
        middle += float(changed[batch.middle_region].mean())
        tail += float(changed[~batch.middle_region].mean())
    return middle / draws, tail / draws


def test_sampler_noise_leaves_the_padding_cleaner_than_the_middle(tokenizer: Tokenizer) -> None:
    """The sampler accepts the padding first: some training canvases look like that, iid noise looks like nothing else."""
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    batch = T.collate(next(T.batches(iter(_examples(tokenizer, 40)), 4)), layout, eom_weight=0.1)
    assert bool(batch.middle_region.any()) and bool((~batch.middle_region).any())
    iid_middle, iid_tail = _replaced(0.0, batch)
    assert iid_middle == pytest.approx(0.5, abs=0.05) and iid_tail == pytest.approx(0.5, abs=0.05)
    sampler_middle, sampler_tail = _replaced(1.0, batch)
    assert sampler_middle == pytest.approx(0.5, abs=0.05)  # the middle keeps its level t ~ U(0, 1)
    assert sampler_tail == pytest.approx(0.25, abs=0.05)  # the padding gets U(0, t): a quarter on average
    # iid noise with the same seed is what it was before the sampler share existed
    config = T.TrainConfig(geometry="tiny", sampler_noise_share=0.0)
    with_region = T.draw_noise(batch.canvas, 1000, config, torch.Generator().manual_seed(1), batch.middle_region)
    without = T.draw_noise(batch.canvas, 1000, config, torch.Generator().manual_seed(1))
    assert torch.equal(with_region.noisy, without.noisy)


def test_sampler_state_randomizes_the_middle_and_keeps_the_padding(tokenizer: Tokenizer) -> None:
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    batch = T.collate(next(T.batches(iter(_examples(tokenizer, 40)), 4)), layout, eom_weight=0.1)
    state = T.sampler_state_noise(batch, 50_000, torch.Generator().manual_seed(0))
    assert torch.equal(state.noisy[~batch.middle_region], batch.canvas[~batch.middle_region])
    assert float((state.noisy != batch.canvas)[batch.middle_region].float().mean()) > 0.95
    assert not bool(state.use_sc.any())


def test_absorbing_noise_puts_the_noise_token_where_uniform_noise_would_replace(tokenizer: Tokenizer) -> None:
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    batch = T.collate(next(T.batches(iter(_examples(tokenizer, 40)), 4)), layout, eom_weight=0.1)
    unk = tokenizer.token_to_id("<unk>")
    assert unk not in batch.canvas.tolist()
    absorbing = T.TrainConfig(geometry="tiny", noise_id=unk)
    uniform = T.TrainConfig(geometry="tiny")
    noisy = T.draw_noise(batch.canvas, 50_000, absorbing, torch.Generator().manual_seed(3), batch.middle_region).noisy
    reference = T.draw_noise(batch.canvas, 50_000, uniform, torch.Generator().manual_seed(3), batch.middle_region).noisy
    assert torch.equal(noisy == unk, reference != batch.canvas)
    assert torch.equal(noisy[noisy != unk], batch.canvas[noisy != unk])
    state = T.sampler_state_noise(batch, 50_000, torch.Generator().manual_seed(0), unk)
    assert (state.noisy[batch.middle_region] == unk).all()
    assert torch.equal(state.noisy[~batch.middle_region], batch.canvas[~batch.middle_region])


def test_encoder_next_token_loss_matches_a_manual_computation(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 2))
    batch = T.collate(group, layout)
    cache = DynamicCache(config=text_config(model))
    hidden = model.model.encoder(input_ids=batch.prompt, attention_mask=batch.prompt_mask, past_key_values=cache).last_hidden_state
    logits = T._softcapped(model, hidden)
    assert float(logits.detach().abs().max()) <= model.final_logit_softcapping
    expected = F.cross_entropy(logits[:, :-1][batch.lm_mask], batch.prompt[:, 1:][batch.lm_mask])
    config = T.TrainConfig(geometry="tiny", lm_weight=1.0, self_conditioning_prob=0.0)
    losses = T.diffusion_loss(model, batch, model.config.text_config.vocab_size, config, torch.Generator().manual_seed(0))
    assert losses.lm == pytest.approx(float(expected), rel=1e-4)
    assert float(losses.total) == pytest.approx(losses.canvas + losses.lm, rel=1e-4)


def test_the_lm_objective_trains_the_next_token_loss_alone(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    """``--objective lm``: the same next-token loss as the infilling step's, and no decoder pass."""
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    batch = T.collate(next(T.batches(iter(_examples(tokenizer, 40)), 2)), layout)
    config = T.TrainConfig(geometry="tiny", lm_weight=1.0, objective="lm")
    joint = T.diffusion_loss(model, batch, vocab_size(model), config, torch.Generator().manual_seed(0))
    alone = T._compiled_step(False, "lm")(model, batch, vocab_size(model), config, torch.Generator().manual_seed(0))
    assert alone.lm == pytest.approx(joint.lm, rel=1e-5) and float(alone.total) == pytest.approx(joint.lm, rel=1e-5)
    assert alone.canvas is None and alone.middle is None
    model.zero_grad(set_to_none=True)
    alone.total.backward()  # type: ignore[no-untyped-call]
    trained = {name for name, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert "lm_head.weight" in trained or any("embed_tokens" in name for name in trained)
    assert any(".layers.0." in name for name in trained)
    assert not any("self_conditioning" in name for name in trained)  # only the decoder reads it
    assert T.trained_tokens(batch, "lm") == int(batch.prompt_mask.sum()) < T.trained_tokens(batch, "infill") == batch.tokens


def test_the_trainer_s_decoder_masks_give_the_logits_of_transformers_own(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    """The 4-D masks the trainer builds (no data-dependent test) mask exactly what transformers' 2-D path masks."""
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.train(False)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 3))
    batch = T.collate(group, layout, width=max(len(e.prompt) for e in group) + 11)  # right padding to mask
    assert not bool(batch.prompt_mask.all())
    masks = T.decoder_masks(model, batch)
    assert set(masks) == set(text_config(model).layer_types)

    def logits(decoder_mask: Any) -> torch.Tensor:
        cache = DynamicCache(config=text_config(model))
        with torch.no_grad():
            model.model.encoder(input_ids=batch.prompt, attention_mask=batch.prompt_mask, past_key_values=cache)
            return model(decoder_input_ids=batch.canvas, past_key_values=cache, decoder_attention_mask=decoder_mask,
                         decoder_position_ids=batch.positions).logits

    assert torch.allclose(logits(masks), logits(batch.decoder_mask), atol=1e-5)
    unmasked = {name: torch.ones_like(mask) for name, mask in masks.items()}  # padding visible: other logits
    assert not torch.allclose(logits(unmasked), logits(batch.decoder_mask), atol=1e-3)


def test_the_loss_is_one_graph_for_dynamo(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    """No graph break in the step's loss (what ``--compile`` compiles): breaks multiplied its graphs past dynamo's
    recompile limit, and the steps past it ran eager."""
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 2))
    batch = T.collate(group, layout, eom_weight=0.1, width=max(len(e.prompt) for e in group) + 8)
    config = T.TrainConfig(geometry="tiny")
    noise = T.draw_noise(batch.canvas, vocab_size(model), config, torch.Generator().manual_seed(0), batch.middle_region)
    infill = torch._dynamo.explain(T.loss_terms)(model, batch, noise, 0.5, True)
    lm = torch._dynamo.explain(T.lm_terms)(model, batch)
    assert (infill.graph_break_count, infill.graph_count) == (0, 1), [r.reason for r in infill.break_reasons]
    assert (lm.graph_break_count, lm.graph_count) == (0, 1), [r.reason for r in lm.break_reasons]


def _loss_parts(model: Any, batch: T.Batch) -> list[float]:
    config = T.TrainConfig(geometry="tiny", lm_weight=0.5, self_conditioning_prob=0.5, eom_weight=0.1)
    losses = T.diffusion_loss(model, batch, vocab_size(model), config, torch.Generator().manual_seed(3))
    return [float(losses.total), losses.canvas, losses.middle, losses.lm]


def test_fixed_prompt_width_pads_without_changing_the_loss(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    """Compiled steps pad every prompt to one width: the extra padding is masked and moves nothing."""
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.train(False)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 3))
    natural = T.collate(group, layout, eom_weight=0.1)
    width = natural.prompt.shape[1] + 23
    padded = T.collate(group, layout, eom_weight=0.1, width=width)
    assert padded.prompt.shape[1] == width and padded.tokens == natural.tokens
    assert torch.equal(padded.positions, natural.positions)
    with torch.no_grad():
        assert _loss_parts(model, padded) == pytest.approx(_loss_parts(model, natural), rel=1e-4)
    assert T.prompt_width(T.TrainConfig(context_tokens=256), layout) >= 256 + 4


@pytest.mark.skipif(os.environ.get("DG_LSP_TEST_COMPILE") != "1", reason="set DG_LSP_TEST_COMPILE=1 (minutes)")
def test_compiled_loss_matches_the_eager_loss_and_trains(tiny_model_dir: Path, tokenizer: Tokenizer) -> None:
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    group = next(T.batches(iter(_examples(tokenizer, 40)), 2))
    batch = T.collate(group, layout, eom_weight=0.1, width=max(len(e.prompt) for e in group) + 8)
    compiled = T._compiled_step(True)
    config = T.TrainConfig(geometry="tiny", lm_weight=0.5, self_conditioning_prob=0.5, eom_weight=0.1)
    vocab = vocab_size(model)
    eager = T.diffusion_loss(model, batch, vocab, config, torch.Generator().manual_seed(3))
    fast = compiled(model, batch, vocab, config, torch.Generator().manual_seed(3))
    assert [float(fast.total), fast.canvas, fast.middle, fast.lm] == pytest.approx(
        [float(eager.total), eager.canvas, eager.middle, eager.lm], rel=1e-3
    )
    fast.total.backward()  # type: ignore[no-untyped-call]
    grad = model.lm_head.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(60):
            handle.write(json.dumps({"text": SOURCE.replace("walk", f"walk{i}"), "language": "python"}) + "\n")
    return path


def test_tiny_run_warm_starts_resumes_stops_on_request_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    out = tmp_path / "train"
    argv = [
        "--corpus", str(corpus), "--tokenizer", str(tiny_model_dir), "--out", str(out), "--geometry", "tiny",
        "--init-from", str(tiny_model_dir), "--total-steps", "3", "--batch-size", "2", "--context-tokens", "64",
        "--max-canvas", "32", "--eval-every", "2", "--eval-batches", "1", "--threads", "1", "--no-progress",
        "--resume", "--device", "cpu",
    ]
    export = T.train(T.build_parser().parse_args(argv))
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] > 0 and summary["init_from"] == str(tiny_model_dir)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert "eval_middle" in history[0] and "eval_lm" in history[-1]
    assert history[0]["eval_sampler_middle"] > 0 and "eval_sampler_middle" in history[-1]
    assert (export / "model.safetensors").exists() and json.loads((export / "dg_lsp.json").read_text())["steps"] == 3
    # resume: continues from step 3 to the new schedule's end
    T.train(T.build_parser().parse_args([*argv[:-6], "--total-steps", "5", *argv[-6:]]))
    assert json.loads((out / "train-summary.json").read_text())["steps"] == 5
    # a STOP file ends the run before any further step
    (out / "STOP").touch()
    T.train(T.build_parser().parse_args([*argv[:-6], "--total-steps", "50", *argv[-6:]]))
    assert json.loads((out / "train-summary.json").read_text())["steps"] == 5


def test_an_lm_objective_run_evaluates_the_infilling_losses_and_counts_prompt_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lm"
    argv = [
        "--corpus", str(_corpus(tmp_path)), "--tokenizer", str(tiny_model_dir), "--out", str(out), "--geometry", "tiny",
        "--init-from", str(tiny_model_dir), "--total-steps", "2", "--batch-size", "2", "--context-tokens", "64",
        "--max-canvas", "32", "--eval-every", "1", "--eval-batches", "1", "--threads", "1", "--no-progress",
        "--device", "cpu", "--objective", "lm",
    ]
    T.train(T.build_parser().parse_args(argv))
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["objective"] == "lm"
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    steps = [r for r in history if "loss" in r]
    assert [r["middle"] for r in steps] == [None, None] and all(r["lm"] > 0 for r in steps)
    assert all(r["eval_middle"] > 0 and r["eval_sampler_middle"] > 0 and r["eval_lm"] > 0 for r in history if "eval_lm" in r)
    # two prompts per step, each at most the context budget plus its markers: no canvas tokens counted
    assert 0 < summary["tokens"] <= 2 * 2 * (64 + 8)
    with pytest.raises(SystemExit):
        T.build_parser().parse_args([*argv[:-1], "denoise"])


def test_gpu_pack_leaves_held_out_files_and_other_languages_behind(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": f"x = {i}\n", "language": "python" if i % 3 else "go"} for i in range(120)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = gpu_run.pack_corpus(corpus, tmp_path / "c.jsonl.gz", ("python",), held_out_every=50)
    packed = read_corpus(tmp_path / "c.jsonl.gz")
    expected = [r["text"] for i, r in enumerate(rows) if i % 50 and r["language"] == "python"]
    assert [f.text for f in packed] == expected and stats["files"] == len(expected)


def test_gpu_shard_script_round_trips_through_unpack(tiny_model_dir: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    (tmp_path / "export").mkdir()
    for item in tiny_model_dir.iterdir():
        (tmp_path / "export" / item.name).write_bytes(item.read_bytes())
    (tmp_path / "export" / "dg_lsp.json").write_text('{"context_tokens": 64}')
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", gpu_run._SHARD_SCRIPT, str(tmp_path / "export"), str(shards), "200KB"], check=True)
    files = sorted(p.name for p in shards.iterdir())
    assert len(files) <= 8 and sum(name.endswith(".safetensors") for name in files) >= 2
    assert all(p.stat().st_size <= 16 * 2**20 for p in shards.iterdir())
    out = tmp_path / "model"
    gpu_run.unpack(argparse.Namespace(files=shards, out=out, tokenizer=tiny_model_dir))
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    from transformers import DiffusionGemmaForBlockDiffusion

    merged = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
    original = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(merged.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_parallel_stream_makes_examples_in_worker_processes(tokenizer: Tokenizer) -> None:
    from dg_lsp.train.examples import parallel_stream

    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    maker = ExampleMaker(tokenizer, layout, context_tokens=96, max_canvas=32)
    stream = parallel_stream(maker, [SourceFile(SOURCE, "python")], [1.0], seed=1, workers=2)
    made = [next(stream) for _ in range(70)]  # more than one 64-example chunk
    stream.close()
    assert all(isinstance(e, Example) and e.canvas and e.prompt[0] == layout.bos for e in made)
    assert len({tuple(e.canvas) for e in made}) > 5


def test_a_run_with_a_noise_token_records_it_for_the_loader(tiny_model_dir: Path, tmp_path: Path) -> None:
    from dg_lsp.model.loader import load_model

    argv = [
        "--corpus", str(_corpus(tmp_path)), "--tokenizer", str(tiny_model_dir), "--out", str(tmp_path / "train"),
        "--geometry", "tiny", "--total-steps", "2", "--batch-size", "2", "--context-tokens", "64", "--max-canvas", "32",
        "--eval-every", "2", "--eval-batches", "1", "--threads", "1", "--no-progress", "--device", "cpu",
    ]
    export = T.train(T.build_parser().parse_args([*argv, "--noise-token", "<unk>"]))
    assert json.loads((export / "dg_lsp.json").read_text())["noise_token"] == "<unk>"
    loaded = load_model(export, "cpu", "float32")
    assert loaded.noise_id == loaded.tokenizer.token_to_id("<unk>")
    # a warm start from that model keeps its noise token without being told
    again = T.train(T.build_parser().parse_args([*argv[:5], str(tmp_path / "again"), *argv[6:], "--init-from", str(export)]))
    assert json.loads((again / "dg_lsp.json").read_text())["noise_token"] == "<unk>"
    with pytest.raises(ValueError, match="--noise-token '<nope>' is not a token"):
        T.train(T.build_parser().parse_args([*argv, "--noise-token", "<nope>"]))


def test_two_data_parallel_processes_train_one_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from dg_lsp.train import data_parallel

    corpus = _corpus(tmp_path)
    argv = [
        "--corpus", str(corpus), "--tokenizer", str(tiny_model_dir), "--geometry", "tiny",
        "--init-from", str(tiny_model_dir), "--total-steps", "3", "--batch-size", "2", "--context-tokens", "64",
        "--max-canvas", "32", "--eval-every", "2", "--eval-batches", "1", "--threads", "1", "--no-progress",
        "--device", "cpu",
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    T.train(T.build_parser().parse_args([*argv, "--out", str(single)]))
    args = T.build_parser().parse_args([*argv, "--out", str(double), "--procs", "2"])
    data_parallel.run(2, functools.partial(T._train_in, args))  # raises if the processes' weights differ
    one = json.loads((single / "train-summary.json").read_text())
    two = json.loads((double / "train-summary.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2) and one["steps"] == two["steps"] == 3
    assert two["tokens"] > one["tokens"] * 1.5  # both processes' examples counted
    assert (double / "model" / "model.safetensors").exists()
    weights = [load_file(str(d / "model" / "model.safetensors")) for d in (single, double)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the second stream changed the step


def test_the_time_schedule_decays_by_whichever_of_steps_and_time_is_further() -> None:
    config = T.TrainConfig(lr=1e-3, warmup_steps=10, total_steps=1000)
    assert T.learning_rate(config, 4, time_fraction=0.9) == pytest.approx(5e-4)  # warm-up is by steps only
    assert T.learning_rate(config, 10) == pytest.approx(1e-3)
    assert T.learning_rate(config, 10, time_fraction=1.0) == pytest.approx(1e-4)  # the deadline: annealed to 10%
    assert T.learning_rate(config, 10, time_fraction=0.5) == pytest.approx(T.learning_rate(config, 505))
    assert T.learning_rate(config, 800, time_fraction=0.1) == T.learning_rate(config, 800)  # steps further on
    assert T.learning_rate(config, 10, time_fraction=3.0) == pytest.approx(1e-4)


def test_a_timed_run_hands_the_schedule_its_elapsed_share(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fractions: list[float] = []
    real = T.learning_rate

    def spy(config: T.TrainConfig, step: int, time_fraction: float = 0.0) -> float:
        fractions.append(time_fraction)
        return real(config, step, time_fraction)

    monkeypatch.setattr(T, "learning_rate", spy)
    argv = [
        "--corpus", str(_corpus(tmp_path)), "--tokenizer", str(tiny_model_dir), "--out", str(tmp_path / "train"),
        "--geometry", "tiny", "--init-from", str(tiny_model_dir), "--total-steps", "3", "--batch-size", "2",
        "--context-tokens", "64", "--max-canvas", "32", "--eval-every", "100", "--eval-batches", "1", "--threads", "1",
        "--no-progress", "--device", "cpu", "--minutes", "30", "--time-schedule",
    ]
    T.train(T.build_parser().parse_args(argv))
    assert len(fractions) == 3 and 0.0 < fractions[0] < fractions[1] < fractions[2] < 0.5


def test_the_time_schedule_needs_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["trainer", "--corpus", "c", "--tokenizer", "t", "--out", "o", "--procs", "2", "--time-schedule"])
    with pytest.raises(SystemExit, match="one process"):
        T.main()

"""Weight-only quantization (fp8, int8) of the text projections and the fused MoE experts, against full precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchao.utils import TorchAOBaseTensor

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import LoadedModel, ModelLoadError, load_model
from dg_lsp.engine.compiled_step import cpu_inductor_options
from dg_lsp.model.quantize import (
    DEQUANTIZED_EXPERTS,
    QUANTIZE_MODES,
    is_quantized_param,
    quantized_bytes,
    storage_bytes,
)

torch.manual_seed(0)
PROMPT = torch.randint(300, 500, (1, 48))
CANVAS = torch.randint(300, 500, (1, 32))


def logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.inference_mode():  # as the engine runs it
        return loaded.model(input_ids=PROMPT, decoder_input_ids=CANVAS).logits.float()


@pytest.fixture(scope="module")
def reference(published_model_dir: Path) -> torch.Tensor:
    return logits(load_model(published_model_dir, "cpu", "float32"))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def test_modes() -> None:
    assert QUANTIZE_MODES == ("none", "fp8", "int8")


def test_which_weights_are_quantized() -> None:
    for name in (
        "model.decoder.layers.3.self_attn.q_proj.weight",
        "model.decoder.layers.3.mlp.down_proj.weight",
        "model.decoder.layers.3.experts.gate_up_proj",
        "model.decoder.layers.3.experts.down_proj",
        "model.decoder.self_conditioning.up_proj.weight",
    ):
        assert is_quantized_param(name), name
    for name in (
        "model.decoder.embed_tokens.weight",
        "lm_head.weight",
        "model.decoder.layers.3.router.proj.weight",
        "model.decoder.layers.3.input_layernorm.weight",
        "model.encoder.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight",
    ):
        assert not is_quantized_param(name), name


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_the_fused_experts_are_quantized_and_stay_tied(published_model_dir: Path, mode: str) -> None:
    loaded = load_model(published_model_dir, "cpu", "bfloat16", quantize=mode)
    assert loaded.quantize == mode
    decoder, encoder = loaded.model.model.decoder, loaded.model.model.encoder.language_model
    experts = decoder.layers[0].experts
    assert isinstance(experts.gate_up_proj, TorchAOBaseTensor) and experts.gate_up_proj.dim() == 3
    assert isinstance(decoder.layers[0].self_attn.q_proj.weight, TorchAOBaseTensor)
    assert loaded.model.config.get_text_config()._experts_implementation == DEQUANTIZED_EXPERTS
    assert cpu_inductor_options(loaded.model) == {}  # a CPU compile of quantized weights keeps inductor's defaults
    # the encoder shares the decoder's quantized tensors (one copy in memory)
    assert encoder.layers[0].experts.gate_up_proj is experts.gate_up_proj
    assert encoder.layers[0].self_attn.q_proj.weight is decoder.layers[0].self_attn.q_proj.weight
    assert loaded.model.lm_head.weight is decoder.embed_tokens.weight
    for name, param in loaded.model.named_parameters():
        assert isinstance(param, TorchAOBaseTensor) == is_quantized_param(name), name
        if isinstance(param, TorchAOBaseTensor):
            assert storage_bytes(param) == quantized_bytes(mode, tuple(param.shape), torch.bfloat16)  # type: ignore[arg-type]


def test_quantized_weights_take_half_the_memory_of_bfloat16(published_model_dir: Path) -> None:
    sizes = {}
    for mode in ("none", "fp8", "int8"):
        loaded = load_model(published_model_dir, "cpu", "bfloat16", quantize=mode)
        quantized = [p for n, p in loaded.model.named_parameters() if is_quantized_param(n)]
        sizes[mode] = sum(storage_bytes(p) for p in quantized)
    # one byte per weight instead of two, plus a scale (and for int8 a zero point) per row
    assert sizes["none"] / 2 < sizes["fp8"] < sizes["int8"] < sizes["none"] * 0.6


@pytest.mark.parametrize(("mode", "bound"), [("int8", 0.02), ("fp8", 0.06)])
def test_quantized_experts_and_mlp_match_full_precision(
    published_model_dir: Path, mode: str, bound: float
) -> None:
    """Same tokens, same routing: the fused experts and the dense MLP differ by the quantization grid only."""
    full = load_model(published_model_dir, "cpu", "float32").model.model.decoder.layers[0]
    quantized = load_model(published_model_dir, "cpu", "float32", quantize=mode).model.model.decoder.layers[0]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, full.experts.hidden_dim, generator=generator)
    experts = torch.randint(0, full.experts.num_experts, (40, 2), generator=generator)
    weights = torch.rand(40, 2, generator=generator)
    with torch.inference_mode():
        assert relative_error(quantized.experts(hidden, experts, weights), full.experts(hidden, experts, weights)) < bound
        assert relative_error(quantized.mlp(hidden), full.mlp(hidden)) < bound


@pytest.mark.parametrize(("mode", "cosine", "agreement"), [("int8", 0.98, 0.75), ("fp8", 0.95, 0.6)])
def test_quantized_logits_are_close(
    published_model_dir: Path, reference: torch.Tensor, mode: str, cosine: float, agreement: float
) -> None:
    """The whole model: routing may flip where random router scores are near-tied, so looser than one layer."""
    out = logits(load_model(published_model_dir, "cpu", "float32", quantize=mode))
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > cosine
    assert (out.argmax(-1) == reference.argmax(-1)).float().mean() >= agreement


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_the_engine_completes_with_quantized_weights(tiny_model_dir: Path, mode: str) -> None:
    request = InfillRequest(
        prefix="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        language="python",
        kind=HoleKind.REST_OF_LINE,
        settings=SamplerSettings(max_steps=4),
        seed=0,
    )
    full = Engine(load_model(tiny_model_dir, "cpu", "float32")).infill(request)
    engine = Engine(load_model(tiny_model_dir, "cpu", "float32", quantize=mode))
    first, second = engine.infill(request), engine.infill(request)
    assert engine.describe()["quantize"] == mode
    assert (first.text, first.steps) == (second.text, second.steps)  # deterministic, prompt cache reused
    assert first.canvas_length == full.canvas_length and 1 <= first.steps <= 4


def test_an_unknown_mode_is_refused(published_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^unknown quantization 'int4' \(use none, fp8, int8\)$"):
        load_model(published_model_dir, "cpu", "float32", quantize="int4")


def test_the_quantize_setting_wins_over_the_command_line_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from dg_lsp.cli import build_parser
    from dg_lsp.server.model_manager import QUANTIZE_ENV, model_spec

    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    assert model_spec(None, "cpu", "auto").quantize == "none"
    monkeypatch.setenv(QUANTIZE_ENV, "fp8")  # what `dg-lsp serve --quantize fp8` sets
    assert model_spec(None, "cpu", "auto").quantize == "fp8"
    assert model_spec(None, "cpu", "auto", quantize="int8").quantize == "int8"  # the setting
    for command in (["serve"], ["info"], ["infill", "f.py", "--line", "1", "--col", "1"],
                    ["rewrite", "f.py", "--range", "1:1-1:2"], ["engine-serve"]):
        assert build_parser().parse_args([*command, "--quantize", "int8"]).quantize == "int8", command


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_quantized_models_can_be_made_resident(published_model_dir: Path, mode: str) -> None:
    from dg_lsp.model.resident import make_resident

    loaded = load_model(published_model_dir, "cpu", "float32", quantize=mode)
    before = logits(loaded)
    make_resident(loaded.model, loaded.path)  # quantized weights are skipped: they were computed, not mapped
    assert torch.equal(logits(loaded), before)

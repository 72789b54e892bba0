"""The memory estimate made before loading, and the refusal of a model that would not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dg_lsp.model.geometry import GEOMETRIES
from dg_lsp.model.loader import ModelLoadError, load_model
from dg_lsp.model.memory import (
    GIB,
    MAX_MEMORY_ENV,
    available_bytes,
    estimate,
    load_config,
    parse_size,
    refusal,
    weight_bytes,
)
from dg_lsp.model.quantize import storage_bytes

BIG = GEOMETRIES["26b-a4b"]


def unique_bytes(model: torch.nn.Module) -> int:
    return sum(storage_bytes(p) for p in model.parameters())  # parameters() yields tied ones once


@pytest.mark.parametrize(("dtype", "quantize"), [("float32", "none"), ("bfloat16", "none"), ("float32", "fp8"),
                                                 ("bfloat16", "int8")])
def test_the_weight_estimate_is_exact_at_tiny_geometry(published_model_dir: Path, dtype: str, quantize: str) -> None:
    loaded = load_model(published_model_dir, "cpu", dtype, quantize=quantize)
    text, vision = weight_bytes(load_config(published_model_dir), loaded.dtype, quantize)  # type: ignore[arg-type]
    assert unique_bytes(loaded.model) == text  # resident: the text model, as quantized
    assert vision > 0


def test_the_26b_geometry_needs_what_its_parameter_count_says() -> None:
    config = BIG.to_config()
    bf16 = estimate(config, torch.bfloat16, "none")
    fp8 = estimate(config, torch.bfloat16, "fp8")
    int8 = estimate(config, torch.bfloat16, "int8")
    # 25.25B text parameters: 2 bytes each in bfloat16 (tied encoder/decoder/lm_head counted once)
    assert 25.2e9 * 2 < bf16.weights < 25.3e9 * 2
    # quantized: 1 byte per quantized weight + scales; the 0.74B-parameter embedding stays bfloat16
    embedding = BIG.vocab_size * BIG.hidden_size * 2
    assert fp8.weights < bf16.weights / 2 + embedding
    assert int8.weights - fp8.weights > 0  # int8 also keeps a zero point per row
    assert 2 * GIB < bf16.working < 5 * GIB and fp8.working > bf16.working  # + a dequantized layer of experts
    assert bf16.total == bf16.weights + max(bf16.vision, bf16.working)


def test_sizes_parse() -> None:
    assert parse_size("20GiB") == 20 * GIB
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("1000") == 1000
    for bad in ("", "lots", "-1GiB", "0", "3 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_env_cap_replaces_what_the_device_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_MEMORY_ENV, "3GiB")
    assert available_bytes(torch.device("cpu")) == (3 * GIB, MAX_MEMORY_ENV)
    monkeypatch.delenv(MAX_MEMORY_ENV)
    free, source = available_bytes(torch.device("cpu"))
    assert source == "available RAM" and free is not None and free > 0


def test_a_model_that_does_not_fit_is_refused_with_the_ways_out(
    published_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_MEMORY_ENV, "1MiB")
    with pytest.raises(ModelLoadError) as caught:
        load_model(published_model_dir, "cpu", "float32")
    message = str(caught.value)
    assert message.startswith(f"{published_model_dir.name} needs about ")
    assert f"but {MAX_MEMORY_ENV} allows 0.0 GiB (quantized with fp8 or int8 it would still need about " in message
    assert "use a GPU (--device cuda)" in message
    assert "run `dg-lsp engine-serve` on a machine that has the memory" in message
    monkeypatch.setenv(MAX_MEMORY_ENV, "64GiB")
    assert load_model(published_model_dir, "cpu", "float32").name == published_model_dir.name


def test_a_bad_cap_is_reported(published_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_MEMORY_ENV, "plenty")
    with pytest.raises(ModelLoadError, match=rf"^{MAX_MEMORY_ENV}: 'plenty' is not a size"):
        load_model(published_model_dir, "cpu", "float32")


def test_26b_on_a_32gb_gpu_is_refused_naming_fp8_and_the_engine_server() -> None:
    config = BIG.to_config()
    need = estimate(config, torch.bfloat16, "none")
    free = int(31.4 * GIB)
    message = refusal(config, "google/diffusiongemma-26B-A4B-it", torch.device("cuda:0"), need, free, "free on cuda:0")
    fp8 = estimate(config, torch.bfloat16, "fp8").total
    assert message == (
        f"google/diffusiongemma-26B-A4B-it needs about {need.total / GIB:.1f} GiB on cuda:0 (bfloat16 weights "
        f"{need.weights / GIB:.1f} GiB + {(need.total - need.weights) / GIB:.1f} GiB to load and run) but 31.4 GiB "
        f'is free on cuda:0: quantize it (--quantize fp8 or int8, about {fp8 / GIB:.1f} GiB; setting "quantize"), '
        "use a GPU with more free memory (e.g. --device cuda:1), or run `dg-lsp engine-serve` on a machine that "
        'has the memory and set engine.kind to "remote"'
    )


def test_26b_on_a_24gb_gpu_says_quantizing_is_not_enough() -> None:
    config = BIG.to_config()
    need = estimate(config, torch.bfloat16, "none")
    message = refusal(config, "m", torch.device("cuda:0"), need, int(23.6 * GIB), "free on cuda:0")
    assert "(quantized with fp8 or int8 it would still need about 28.3 GiB): use a GPU with more free memory" in message
    assert "engine-serve" in message and "quantize it" not in message
    quantized = estimate(config, torch.bfloat16, "fp8")
    already = refusal(config, "m", torch.device("cuda:0"), quantized, int(23.6 * GIB), "free on cuda:0")
    assert "fp8 weights 24.3 GiB" in already and "quantize" not in already.split(": ", 1)[1]


def test_an_engine_servers_batch_needs_room_for_every_canvas() -> None:
    config = BIG.to_config()
    one = estimate(config, torch.bfloat16, "fp8")
    eight = estimate(config, torch.bfloat16, "fp8", canvases=8)
    assert eight.weights == one.weights and eight.canvases == 8
    logits = 256 * BIG.vocab_size * 4 * 4  # float32 logits of a 256-token canvas and the sampler's copies
    assert eight.working - one.working > 7 * logits
    assert one.total < 31.4 * GIB < eight.total  # a 32 GB card serves one canvas at a time, not eight
    message = refusal(config, "m", torch.device("cuda:0"), estimate(config, torch.bfloat16, "none", 8),
                      int(31.4 * GIB), "free on cuda:0")
    assert f"it would still need about {eight.total / GIB:.1f} GiB" in message

"""GPU checks of loading DiffusionGemma as published (skipped without CUDA).

The published-layout checkpoint on CUDA: sharded load straight onto the GPU, vision tower gone
from GPU memory, fp8/int8 weights (fused experts included) with the memory they save, chat-format
infills through the engine, and the memory check refusing what the GPU cannot hold.
The 26B-A4B-scale check is benchmarks/gpu_diffusiongemma_check.py (minutes, not a unit test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _allocated() -> int:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def test_published_checkpoint_loads_onto_the_gpu_without_the_vision_tower(published_model_dir: Path) -> None:
    from dg_lsp.model.loader import load_model

    before = _allocated()
    loaded = load_model(published_model_dir, device="cuda", dtype="bfloat16")
    assert loaded.model.model.encoder.vision_tower is None
    assert all(p.device.type == "cuda" for p in loaded.model.parameters())
    resident = sum(p.nbytes for p in loaded.model.parameters()) + sum(b.nbytes for b in loaded.model.buffers())
    assert _allocated() - before <= resident + 2**20  # nothing else left behind (e.g. the tower)


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_quantized_chat_infill_on_the_gpu(published_model_dir: Path, mode: str) -> None:
    from torchao.utils import TorchAOBaseTensor

    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import load_model
    from dg_lsp.model.quantize import storage_bytes

    full = load_model(published_model_dir, device="cuda", dtype="bfloat16")
    quantized = load_model(published_model_dir, device="cuda", dtype="bfloat16", quantize=mode)
    experts = quantized.model.model.decoder.layers[0].experts.gate_up_proj
    assert isinstance(experts, TorchAOBaseTensor) and experts.device.type == "cuda"
    assert sum(storage_bytes(p) for p in quantized.model.parameters()) < sum(p.nbytes for p in full.model.parameters())
    engine = Engine(quantized)
    assert engine.prompt_format == "chat"
    request = InfillRequest(
        prefix="def mean(xs):\n    return ", suffix="\n", language="python", kind=HoleKind.REST_OF_LINE,
        settings=SamplerSettings(max_steps=4), file_name="stats.py",
    )
    first, second = engine.infill(request), engine.infill(request)
    assert (first.text, first.steps) == (second.text, second.steps)


def test_a_model_larger_than_the_free_gpu_memory_is_refused(
    published_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dg_lsp.model.loader import ModelLoadError, load_model
    from dg_lsp.model.memory import MAX_MEMORY_ENV

    monkeypatch.setenv(MAX_MEMORY_ENV, "1MiB")
    with pytest.raises(ModelLoadError, match=r"use a GPU with more free memory \(e\.g\. --device cuda:1\)"):
        load_model(published_model_dir, device="cuda", dtype="bfloat16")

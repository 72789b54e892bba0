"""GPU checks of the engine (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_engine_on_cuda_matches_cpu_shapes(tiny_model_dir: Path) -> None:
    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import load_model

    loaded = load_model(tiny_model_dir, device="cuda", dtype="auto")
    assert loaded.dtype == torch.bfloat16
    engine = Engine(loaded)
    request = InfillRequest(
        prefix="def f(x):\n    return ", suffix="\n", language="python", kind=HoleKind.REST_OF_LINE,
        settings=SamplerSettings(max_steps=4),
    )
    first = engine.infill(request)
    second = engine.infill(request)
    assert first.text == second.text
    assert second.encode.reused_tokens == second.encode.prompt_tokens

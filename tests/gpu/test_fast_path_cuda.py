"""The engine's fast path on CUDA: compiled with CUDA graphs, same greedy canvases as the eager path (skipped without CUDA)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_compiled_cuda_graph_step_gives_the_eager_canvases(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dg_lsp.engine.denoiser import CanvasSpec, Draft, denoise
    from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
    from dg_lsp.engine.prompt_cache import PromptCache
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import load_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = load_model(tiny_model_dir, device="cuda", dtype="float32").model
    fast = FastDenoiser(model, FastPathSettings(compile="on", draft_interval=2))
    assert fast.compiled and fast.steps.cuda_graphs
    rng = random.Random(0)
    for seed, context, length in ((0, 40, 32), (1, 100, 64), (2, 40, 32)):
        ids = [rng.randrange(8, 512) for _ in range(context)]
        cache = PromptCache(model)
        cache.encode(ids)
        settings = SamplerSettings(max_steps=6)
        eager = denoise(model, cache.cache, len(ids), CanvasSpec(length=length), settings, seed)
        drafts: list[Draft] = []
        quick = fast.denoise(cache, CanvasSpec(length=length), settings, seed, on_draft=drafts.append)
        assert quick.canvas == eager.canvas
        assert (quick.steps, quick.stopped_early) == (eager.steps, eager.stopped_early)
        assert drafts[-1].final and drafts[-1].canvas == quick.canvas
        assert all(d.step % 2 == 0 for d in drafts[:-1])


def test_engine_uses_the_compiled_fast_path_on_cuda(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest
    from dg_lsp.engine.fast_path import FastPathSettings
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import load_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    fast = Engine(load_model(tiny_model_dir, device="cuda", dtype="float32"), fast_path=FastPathSettings(compile="on"))
    eager = Engine(load_model(tiny_model_dir, device="cuda", dtype="float32"), fast_path=FastPathSettings(enabled=False))
    assert fast.fast is not None and fast.fast.compiled
    request = InfillRequest(
        prefix="def f(x):\n    return ", suffix="\n", language="python", kind=HoleKind.LINE,
        settings=SamplerSettings(max_steps=4),
    )
    assert fast.infill(request).text == eager.infill(request).text

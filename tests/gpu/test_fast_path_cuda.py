"""The compiled fast path gives the uncompiled fast path's answers.

On CUDA the step is compiled with CUDA graphs (skipped without CUDA); the same checks run on a CPU
with ``DG_LSP_TEST_COMPILE=1`` (minutes), as a rehearsal. They use the embedded (trained) model in
float32, whose distributions are peaked enough that kernel-order rounding rarely flips an argmax,
and compare the first step's numbers directly, so that a failure says whether the compiled graph
computes something else (a bug) or the same thing with different rounding. The first version of
these tests (a random tiny model, exact canvases against the old eager denoiser) failed on an H200
with the tracebacks lost (``benchmarks/RESULTS.md``, session 22).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.compiled_step import StepFunctions
from dg_lsp.engine.denoiser import CanvasSpec, Draft
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, LoadedModel, load_model

DEVICES = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    pytest.param("cpu", marks=pytest.mark.skipif(
        os.environ.get("DG_LSP_TEST_COMPILE") != "1", reason="compiling takes minutes on a CPU: set DG_LSP_TEST_COMPILE=1"
    )),
]

SOURCES = [
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return ",
    "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        return [line.rstrip() for line in f]\n\n\ndef main():\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.",
]


@pytest.fixture
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def embedded(device: str) -> LoadedModel:
    return load_model(EMBEDDED_MODEL_DIR, device=device, dtype="float32")


def recorded(steps: StepFunctions) -> list[tuple[torch.Tensor, ...]]:
    """Record copies of every ``forward_stats`` output of ``steps`` (wraps it in place)."""
    seen: list[tuple[torch.Tensor, ...]] = []
    inner: Callable[..., Any] = steps.forward_stats

    def forward_stats(*args: Any) -> Any:
        out = inner(*args)
        seen.append(tuple(t.detach().clone() for t in out))
        return out

    steps.forward_stats = forward_stats
    return seen


def pair(loaded: LoadedModel) -> tuple[FastDenoiser, FastDenoiser, list[tuple[torch.Tensor, ...]], list[tuple[torch.Tensor, ...]]]:
    """A compiled and an uncompiled fast path on one model, on the same (padded or not) layout, both recorded."""
    model = loaded.model
    compiled = FastDenoiser(model, FastPathSettings(compile="on", draft_interval=2), steps=StepFunctions(model, True), noise_id=loaded.noise_id)
    plain = FastDenoiser(model, FastPathSettings(compile="off", draft_interval=2), steps=StepFunctions(model, False), noise_id=loaded.noise_id)
    plain.padded = compiled.padded  # CUDA graphs pad the prompt to its bucket; compare like with like
    compiled.steps.sampled_compiled = True  # sampled requests on the compiled halves now, not after a background compile
    assert compiled.compiled and compiled.steps.cuda_graphs == (model.device.type == "cuda")
    return compiled, plain, recorded(compiled.steps), recorded(plain.steps)


def encoded(loaded: LoadedModel, text: str) -> PromptCache:
    cache = PromptCache(loaded.model)
    cache.encode(loaded.tokenizer.encode(text, add_special_tokens=False).ids)
    return cache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_of_the_uncompiled_step_give_its_answers() -> None:
    """``compile: "graphs"``: real CUDA graphs (tests/unit/test_step_graphs.py checks the plumbing with an emulation)."""
    loaded = embedded("cuda")
    model = loaded.model
    captured = FastDenoiser(model, FastPathSettings(compile="graphs", draft_interval=2), noise_id=loaded.noise_id)
    plain = FastDenoiser(model, FastPathSettings(compile="off", draft_interval=2), noise_id=loaded.noise_id)
    plain.padded = True
    assert captured.graphs is not None and captured.padded and not captured.compiled
    for seed, (text, length) in enumerate(zip(SOURCES + SOURCES[:1], (32, 64, 32, 32), strict=True)):
        cache = encoded(loaded, text)
        spec, settings = CanvasSpec(length=length, noise_id=loaded.noise_id), SamplerSettings(max_steps=6)
        drafts: list[Draft] = []
        theirs: list[Draft] = []
        mine = captured.denoise(cache, spec, settings, seed, on_draft=drafts.append)
        reference = plain.denoise(cache, spec, settings, seed, on_draft=theirs.append)
        assert (mine.canvas, mine.steps, mine.stopped_early) == (reference.canvas, reference.steps, reference.stopped_early)
        assert [(d.step, d.canvas, d.final) for d in drafts] == [(d.step, d.canvas, d.final) for d in theirs]
    assert 2 <= captured.graphs.captures <= 3  # (bucket 256, 32), (256, 64); more only if the buffers grew
    torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
def test_the_compiled_step_computes_the_uncompiled_steps_numbers(device: str, inductor_cache: None) -> None:
    loaded = embedded(device)
    compiled, plain, fast_seen, plain_seen = pair(loaded)
    settings = SamplerSettings(max_steps=2, greedy=False)  # a sampled step calls forward_stats itself (greedy: one fused step)
    for index, text in enumerate(SOURCES):
        cache = encoded(loaded, text)
        spec = CanvasSpec(length=32, noise_id=loaded.noise_id)
        compiled.denoise(cache, spec, settings, seed=index)
        plain.denoise(cache, spec, settings, seed=index)
    assert len(fast_seen) == len(plain_seen) == 2 * len(SOURCES)
    for request in range(len(SOURCES)):  # a request's first step: the same inputs on both paths
        (probs, entropy, argmax, conditioning), (p_probs, p_entropy, p_argmax, p_conditioning) = (
            fast_seen[2 * request], plain_seen[2 * request]
        )
        assert torch.isfinite(probs).all() and torch.isfinite(entropy).all()
        assert (probs - p_probs).abs().max().item() < 1e-4
        assert (entropy - p_entropy).abs().max().item() < 1e-3
        assert (conditioning - p_conditioning).abs().max().item() < 1e-2  # logits / temperature
        top2 = p_probs.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 1e-4  # positions whose argmax rounding cannot flip
        assert torch.equal(argmax[clear], p_argmax[clear])


@pytest.mark.parametrize("device", DEVICES)
def test_the_compiled_step_gives_the_uncompiled_canvases(device: str, inductor_cache: None) -> None:
    loaded = embedded(device)
    compiled, plain, _, _ = pair(loaded)
    for seed, (text, length) in enumerate(zip(SOURCES, (32, 64, 32), strict=True)):
        cache = encoded(loaded, text)
        spec, settings = CanvasSpec(length=length, noise_id=loaded.noise_id), SamplerSettings(max_steps=6)
        drafts: list[Draft] = []
        quick = compiled.denoise(cache, spec, settings, seed, on_draft=drafts.append)
        reference = plain.denoise(cache, spec, settings, seed)
        assert quick.canvas == reference.canvas
        assert (quick.steps, quick.stopped_early) == (reference.steps, reference.stopped_early)
        assert drafts[-1].final and drafts[-1].canvas == quick.canvas
        assert all(d.step % 2 == 0 for d in drafts[:-1])


@pytest.mark.parametrize("device", DEVICES)
def test_the_engine_answers_alike_compiled_or_not(device: str, inductor_cache: None) -> None:
    loaded = embedded(device)
    fast = Engine(loaded, fast_path=FastPathSettings(compile="on"))
    plain = Engine(loaded, fast_path=FastPathSettings(compile="off"))
    assert fast.fast is not None and fast.fast.compiled
    for text in SOURCES:
        request = InfillRequest(prefix=text, suffix="\n", language="python", kind=HoleKind.LINE, settings=SamplerSettings(max_steps=8))
        mine, theirs = fast.infill(request), plain.infill(request)
        assert (mine.text, mine.steps) == (theirs.text, theirs.steps)
    assert fast.compile_facts()["state"] == "ready"

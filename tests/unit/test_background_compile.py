"""Compiling the denoising step in the background and swapping it in between requests (issue 12).

The state machine and the swap are tested with cheap stand-ins for the compile (an
uncompiled step flagged as compiled, or functions that fail); the real compile runs only
with ``DG_LSP_TEST_COMPILE=1``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from dg_lsp.engine.background_compile import BACKGROUND_COMPILE_ENV, BackgroundCompile, CompileState
from dg_lsp.engine import compiled_step
from dg_lsp.engine.compiled_step import StepFunctions, compile_plan
from dg_lsp.engine.denoiser import CanvasSpec, Draft, denoise
from dg_lsp.engine.engine import Engine
from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model import cpu_dtype
from dg_lsp.model.loader import LoadedModel, load_model

VOCAB = 512
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, "cpu", "float32")


@pytest.fixture
def background_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "1")  # the suite's conftest turns it off for server tests


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(8, VOCAB) for _ in range(length)]


def flagged_compiled(model: Any) -> StepFunctions:
    """A stand-in for the compiled step: the uncompiled functions, taking the compiled step's first-step branch."""
    steps = StepFunctions(model, False)
    steps.compiled = True
    return steps


def test_compile_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "1")
    assert compile_plan("auto", CPU) == "background"
    assert compile_plan("auto", CUDA) == "never"  # until the compiled CUDA path is verified
    assert compile_plan("on", CPU) == "now" and compile_plan("on", CUDA) == "now"
    assert compile_plan("off", CPU) == "never" and compile_plan("off", CUDA) == "never"
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    assert compile_plan("auto", CPU) == "never"
    assert compile_plan("auto", CUDA) == "never"
    with pytest.raises(ValueError):
        compile_plan("later", CPU)


def test_state_machine_reports_every_shape_then_swaps_once() -> None:
    calls: list[tuple[str, object]] = []
    job: BackgroundCompile[str] = BackgroundCompile(
        build=lambda: "compiled",
        warm=lambda step, shape: calls.append(("warm", (step, shape))),
        swap=lambda step: calls.append(("swap", step)),
        shapes=[32, 64, 128],
        nice=None,
    )
    assert job.state is CompileState.PENDING and job.facts()["done"] == 0
    progress: list[tuple[str, int, int]] = []
    done: list[CompileState] = []
    job.start(lambda message, d, total: progress.append((message, d, total)), lambda j: done.append(j.state))
    assert job.wait(60)
    assert calls == [("warm", ("compiled", 32)), ("warm", ("compiled", 64)), ("warm", ("compiled", 128)),
                     ("swap", "compiled")]
    assert job.state is CompileState.READY and done == [CompileState.READY]
    assert [(d, total) for _, d, total in progress] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert "32-token canvas (1/3)" in progress[0][0]
    facts = job.facts()
    assert facts["state"] == "ready" and facts["done"] == 3 and facts["error"] is None
    with pytest.raises(RuntimeError):
        job.start()


def test_a_failed_compile_is_logged_once_and_swaps_nothing(caplog: pytest.LogCaptureFixture) -> None:
    swapped: list[object] = []

    def warm(step: object, shape: int) -> None:
        if shape == 64:
            raise RuntimeError("inductor fell over")

    job: BackgroundCompile[object] = BackgroundCompile(
        build=object, warm=warm, swap=swapped.append, shapes=[32, 64, 128], nice=None
    )
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.background_compile"):
        job.start()
        assert job.wait(60)
    assert job.state is CompileState.FAILED and swapped == []
    assert job.error is not None and "inductor fell over" in job.error and job.done == 1
    assert len([r for r in caplog.records if "compiling the denoising step failed" in r.getMessage()]) == 1


def test_a_cancelled_compile_never_swaps() -> None:
    release = threading.Event()
    swapped: list[object] = []

    def warm(step: object, shape: int) -> None:
        release.wait(60)

    job: BackgroundCompile[object] = BackgroundCompile(
        build=object, warm=warm, swap=swapped.append, shapes=[32, 64], nice=None
    )
    job.start()
    job.cancel()
    release.set()
    assert job.wait(60)
    assert swapped == [] and job.cancelled and job.state is not CompileState.READY


def test_the_compiling_thread_runs_at_low_priority() -> None:
    seen: list[int] = []
    job: BackgroundCompile[object] = BackgroundCompile(
        build=object, warm=lambda step, shape: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        swap=lambda step: None, shapes=[32],
    )
    job.start()
    assert job.wait(60) and job.state is CompileState.READY
    assert seen and seen[0] >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + 1)


def test_fast_path_states_without_a_compile(loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    off = FastDenoiser(loaded.model, FastPathSettings(compile="auto"))
    assert off.plan == "never" and off.compile_state is CompileState.OFF and off.background_compile([32]) is None
    assert off.compile_facts() == {"setting": "auto", "when": "never", "state": "off"}
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "1")
    pending = FastDenoiser(loaded.model, FastPathSettings(compile="auto"))
    assert pending.plan == "background" and pending.compile_state is CompileState.PENDING and not pending.compiled
    assert FastDenoiser(loaded.model, FastPathSettings(compile="off")).background_compile([32]) is None


def test_the_swap_waits_for_the_request_in_progress(loaded: LoadedModel, background_on: None) -> None:
    model = loaded.model
    fast = FastDenoiser(model, FastPathSettings(compile="auto"))
    uncompiled, replacement = fast.steps, flagged_compiled(model)
    cache = PromptCache(model)
    cache.encode(prompt(3, 40))
    spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=8, confidence_threshold=-1.0)
    reference = fast.denoise(cache, spec, settings, seed=5)

    in_request, resume = threading.Event(), threading.Event()
    used: list[StepFunctions] = []

    def on_draft(draft: Draft) -> None:
        used.append(fast.steps)
        if draft.step == 2:
            in_request.set()
            resume.wait(60)

    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(fast.denoise(cache, spec, settings, 5, on_draft=on_draft)))
    worker.start()
    assert in_request.wait(60)
    swapper = threading.Thread(target=fast.swap_steps, args=(replacement,))
    swapper.start()
    swapper.join(0.3)
    assert swapper.is_alive() and fast.steps is uncompiled  # not inside the request
    resume.set()
    worker.join(60)
    swapper.join(60)
    assert used and all(steps is uncompiled for steps in used)  # one step function for the whole request
    assert outcome[0].canvas == reference.canvas
    assert fast.steps is replacement and fast.compiled
    after = fast.denoise(cache, spec, settings, seed=5)
    assert after.canvas == reference.canvas and after.steps == reference.steps


def test_background_compile_through_the_engine(loaded: LoadedModel, background_on: None) -> None:
    engine = Engine(loaded, fast_path=FastPathSettings(compile="auto"))
    options = compiled_step.cpu_inductor_options(loaded.model)  # what it will compile with
    assert engine.describe()["compile"] == {"setting": "auto", "when": "background", "state": "pending", "options": options}
    job = engine.background_compile()
    assert job is not None and job.shapes == (32, 64, 128, 256) and engine.background_compile() is job
    warmed: list[int] = []
    real_warm = job._warm

    def warm(steps: StepFunctions, shape: int) -> None:
        warmed.append(shape)
        real_warm(steps, shape)  # runs two steps on private buffers

    job._build, job._warm = (lambda: flagged_compiled(loaded.model)), warm
    job.start()
    assert job.wait(120)
    facts = engine.compile_facts()
    assert facts["state"] == "ready" and facts["done"] == 4 and warmed == [32, 64, 128, 256]
    assert engine.fast is not None and engine.fast.compiled
    assert Engine(loaded, fast_path=FastPathSettings(enabled=False)).compile_facts()["state"] == "off"


def test_a_compiled_step_failing_at_run_time_falls_back(
    loaded: LoadedModel, background_on: None, caplog: pytest.LogCaptureFixture
) -> None:
    model = loaded.model
    fast = FastDenoiser(model, FastPathSettings(compile="auto"))
    cache = PromptCache(model)
    cache.encode(prompt(4, 30))
    spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=8)
    reference = fast.denoise(cache, spec, settings, seed=1)
    broken = flagged_compiled(model)
    working, armed = broken.greedy_step, threading.Event()  # greedy requests' one function

    def fail(*args: Any) -> Any:  # compiles and warms up fine, then fails on a later request
        if armed.is_set():
            raise RuntimeError("recompile blew up")
        return working(*args)

    broken.greedy_step = fail
    job = fast.background_compile([32])
    assert job is not None
    job._build = lambda: broken
    job.start()
    assert job.wait(60) and fast.steps is broken and job.state is CompileState.READY
    armed.set()
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.fast_path"):
        again = fast.denoise(cache, spec, settings, seed=1)
    assert again.canvas == reference.canvas
    assert fast.compile_state is CompileState.FAILED and not fast.compiled
    assert "recompile blew up" in str(fast.compile_facts()["error"])
    assert len([r for r in caplog.records if "compiled denoising step failed" in r.getMessage()]) == 1


def test_a_step_compiled_up_front_that_fails_falls_back_for_good(
    loaded: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """The GPU default (plan ``now``): a compile this machine cannot build costs one retry, not every request."""
    model = loaded.model
    reference = FastDenoiser(model, FastPathSettings(compile="off"))
    broken = flagged_compiled(model)
    calls: list[int] = []

    def fail(*args: Any) -> Any:
        calls.append(1)
        raise RuntimeError("inductor could not build a kernel")

    broken.greedy_step = fail  # what a greedy request calls
    fast = FastDenoiser(model, FastPathSettings(compile="on"), steps=broken)
    assert fast.plan == "now" and fast.compiled and fast.compile_state is CompileState.READY
    cache = PromptCache(model)
    cache.encode(prompt(5, 30))
    spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=6)
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.fast_path"):
        first = fast.denoise(cache, spec, settings, seed=3)
        second = fast.denoise(cache, spec, settings, seed=3)
    expected = reference.denoise(cache, spec, settings, seed=3)
    assert first.canvas == second.canvas == expected.canvas and first.steps == expected.steps
    assert calls == [1]  # dropped after its first failure
    assert fast.compile_state is CompileState.FAILED and not fast.compiled
    facts = fast.compile_facts()
    assert facts["state"] == "failed" and "inductor could not build a kernel" in str(facts["error"])
    assert len([r for r in caplog.records if "compiled denoising step failed" in r.getMessage()]) == 1


@pytest.mark.skipif(os.environ.get("DG_LSP_TEST_COMPILE") != "1", reason="set DG_LSP_TEST_COMPILE=1 (minutes)")
def test_the_real_background_compile_gives_the_eager_canvas(
    loaded: LoadedModel, background_on: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = loaded.model
    engine = Engine(loaded, fast_path=FastPathSettings(compile="auto"))
    job = engine.background_compile()
    assert job is not None
    job.start()
    assert job.wait(1800) and job.state is CompileState.READY, job.error
    assert engine.fast is not None and engine.fast.compiled
    for seed, length in [(0, 32), (1, 64)]:
        cache = PromptCache(model)
        cache.encode(prompt(seed, 60))
        spec, settings = CanvasSpec(length=length), SamplerSettings(max_steps=8)
        eager = denoise(model, cache.cache, 60, spec, settings, seed)
        quick = engine.fast.denoise(cache, spec, settings, seed)
        assert quick.canvas == eager.canvas and quick.steps == eager.steps


def test_cpu_dtype_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    flags = cpu_dtype.cpu_flags(info)
    assert "avx512_bf16" in flags and cpu_dtype.native_bf16(flags)
    assert not cpu_dtype.native_bf16({"avx2", "avx512f"})
    assert cpu_dtype.cpu_flags(tmp_path / "missing") == set()

    def never() -> float:
        raise AssertionError("no probe without native bfloat16")

    assert cpu_dtype.choose_cpu_dtype(False, never)[0] is torch.float32
    assert cpu_dtype.choose_cpu_dtype(True, lambda: 0.2)[0] is torch.bfloat16
    dtype, why = cpu_dtype.choose_cpu_dtype(True, lambda: 1.3)
    assert dtype is torch.float32 and "not faster" in why
    assert cpu_dtype.probe_ratio(rows=8, hidden=16, vocab=32, reps=1) > 0
    cpu_dtype.auto_cpu_dtype.cache_clear()
    try:
        monkeypatch.setenv(cpu_dtype.CPU_DTYPE_ENV, "bfloat16")
        assert cpu_dtype.auto_cpu_dtype() is torch.bfloat16
        cpu_dtype.auto_cpu_dtype.cache_clear()
        monkeypatch.setenv(cpu_dtype.CPU_DTYPE_ENV, "float32")
        assert cpu_dtype.auto_cpu_dtype() is torch.float32
    finally:
        cpu_dtype.auto_cpu_dtype.cache_clear()

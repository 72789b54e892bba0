"""The fast path (static prompt KV, fixed shapes, sync-free step) gives the eager path's answers."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from dg_lsp.canvas import CANVAS_LENGTHS, HoleKind
from dg_lsp.engine import compiled_step
from dg_lsp.engine.compiled_step import StepFunctions, compile_cache_dir, should_compile
from dg_lsp.engine.denoiser import CanvasSpec, DenoiseOutcome, Draft, denoise
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
from dg_lsp.engine.guard_skip import COMPILED_CALLS
from dg_lsp.engine.prompt_cache import PromptCache, cache_layers, layer_tensors
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine.static_cache import BUCKET, StaticPromptKV, context_bucket
from dg_lsp.model.loader import LoadedModel, load_model
from dg_lsp.model.typing import text_config

VOCAB = 512


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, "cpu", "float32")


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(8, VOCAB) for _ in range(length)]


def both(
    model: torch.nn.Module, fast: FastDenoiser, ids: list[int], spec: CanvasSpec, settings: SamplerSettings, seed: int
) -> tuple[DenoiseOutcome, DenoiseOutcome, list[Draft], list[Draft]]:
    cache = PromptCache(model)  # type: ignore[arg-type]
    cache.encode(ids)
    eager_drafts: list[Draft] = []
    fast_drafts: list[Draft] = []
    eager = denoise(model, cache.cache, len(ids), spec, settings, seed, on_draft=eager_drafts.append)  # type: ignore[arg-type]
    quick = fast.denoise(cache, spec, settings, seed, on_draft=fast_drafts.append)
    return eager, quick, eager_drafts, fast_drafts


def test_buckets_are_multiples_of_the_bucket_size() -> None:
    assert context_bucket(1) == BUCKET
    assert context_bucket(BUCKET) == BUCKET
    assert context_bucket(BUCKET + 1) == 2 * BUCKET
    assert context_bucket(2050) == 9 * BUCKET


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("length", CANVAS_LENGTHS[:2])
def test_same_canvases_drafts_and_steps_as_the_eager_path(loaded: LoadedModel, greedy: bool, length: int, padded: bool) -> None:
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off"))
    fast.padded = padded  # padded + masked is the CUDA-graph layout; exact views elsewhere
    for seed, context in ((0, 20), (1, 70), (2, 150)):
        settings = SamplerSettings(max_steps=6, greedy=greedy)
        eager, quick, eager_drafts, fast_drafts = both(
            loaded.model, fast, prompt(seed, context), CanvasSpec(length=length), settings, seed
        )
        assert quick.canvas == eager.canvas
        assert (quick.steps, quick.stopped_early) == (eager.steps, eager.stopped_early)
        assert fast_drafts == eager_drafts


def test_adaptive_stopping_stops_at_the_same_step(loaded: LoadedModel) -> None:
    # Every token accepted (the canvas settles) and a confidence threshold above any mean entropy:
    # the stability rule alone decides.
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off"))
    stopped = 0
    for seed in range(4):
        for threshold in (1, 2):
            settings = SamplerSettings(
                max_steps=12, entropy_bound=1e6, confidence_threshold=100.0, stability_threshold=threshold
            )
            eager, quick, _, _ = both(loaded.model, fast, prompt(seed, 40), CanvasSpec(length=32), settings, seed)
            assert (quick.canvas, quick.steps, quick.stopped_early) == (eager.canvas, eager.steps, eager.stopped_early)
            stopped += eager.stopped_early
    assert stopped > 0  # the rule did fire somewhere, so both paths were compared on it


def test_seeded_and_pinned_canvas_matches(loaded: LoadedModel) -> None:
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off"))
    seed_ids = prompt(9, 32)
    pins = [i % 3 == 0 for i in range(32)]
    spec = CanvasSpec(length=32, seed_ids=seed_ids, seed_noise=0.5, pinned=pins)
    eager, quick, _, _ = both(loaded.model, fast, prompt(3, 50), spec, SamplerSettings(max_steps=5), 3)
    assert quick.canvas == eager.canvas
    assert all(quick.canvas[i] == seed_ids[i] for i in range(32) if pins[i])


@pytest.mark.parametrize("greedy", [True, False])
def test_absorbing_noise_gives_the_eager_canvas(loaded: LoadedModel, greedy: bool) -> None:
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off"))
    pins = [i % 5 == 0 for i in range(32)]
    for spec in (CanvasSpec(length=32, noise_id=3), CanvasSpec(length=32, seed_ids=prompt(4, 32), seed_noise=0.5, pinned=pins, noise_id=3)):
        settings = SamplerSettings(max_steps=5, greedy=greedy)
        eager, quick, eager_drafts, fast_drafts = both(loaded.model, fast, prompt(7, 60), spec, settings, 7)
        assert quick.canvas == eager.canvas and fast_drafts == eager_drafts
        uniform, _, _, _ = both(loaded.model, fast, prompt(7, 60), replace(spec, noise_id=None), settings, 7)
        assert uniform.canvas != eager.canvas  # the noise token changed what the model saw


def test_sliding_window_layers_see_only_the_window(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, "cpu", "float32").model
    config = text_config(model)
    assert "sliding_attention" in (config.layer_types or [])
    config.sliding_window = 24  # prompts below are longer: the window really cuts
    for padded in (False, True):
        fast = FastDenoiser(model, FastPathSettings(compile="off"))
        fast.padded = padded
        for seed, context in ((0, 60), (1, 100)):
            spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=4)
            eager, quick, _, _ = both(model, fast, prompt(seed, context), spec, settings, seed)
            assert quick.canvas == eager.canvas


def test_typing_copies_only_the_changed_tail(loaded: LoadedModel) -> None:
    cache = PromptCache(loaded.model)
    kv = StaticPromptKV(loaded.model)
    ids = prompt(4, 90)
    cache.encode(ids)
    assert kv.sync(cache.full_cache, cache.ids, cache.reused_tokens) == 90
    assert kv.capacity == BUCKET
    for typed in (ids + [77], ids + [77, 78], ids[:50] + [79]):  # typing, typing on, deleting back
        stats = cache.encode(typed)
        assert kv.sync(cache.full_cache, cache.ids, cache.reused_tokens) == stats.encoded_tokens >= 1
    assert kv.sync(cache.full_cache, cache.ids) == 0  # same prompt again: nothing to copy
    longer = ids + prompt(5, 200)  # past the bucket: the buffers grow to the next one
    cache.encode(longer)
    assert kv.sync(cache.full_cache, cache.ids, cache.reused_tokens) == len(longer)
    assert kv.capacity == 2 * BUCKET


def test_the_static_buffers_hold_what_the_prompt_cache_holds(loaded: LoadedModel) -> None:
    cache = PromptCache(loaded.model)
    kv = StaticPromptKV(loaded.model)
    for ids in (prompt(6, 40), prompt(6, 40)[:30] + prompt(7, 20)):
        cache.encode(ids)
        kv.sync(cache.full_cache, cache.ids)
        view = kv.step_cache(context_bucket(len(ids)))
        for layer, theirs in zip(view.layers, cache.full_cache.layers, strict=True):
            assert theirs.keys is not None and theirs.values is not None
            assert torch.equal(layer.keys[..., : len(ids), :], theirs.keys)
            assert torch.equal(layer.values[..., : len(ids), :], theirs.values)


def test_draft_interval_reports_every_nth_step_and_the_last(loaded: LoadedModel) -> None:
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off", draft_interval=2))
    cache = PromptCache(loaded.model)
    cache.encode(prompt(8, 30))
    drafts: list[Draft] = []
    settings = SamplerSettings(max_steps=5, confidence_threshold=-1.0)
    outcome = fast.denoise(cache, CanvasSpec(length=32), settings, 0, on_draft=drafts.append)
    assert [d.step for d in drafts] == [2, 4, 5]
    assert [d.final for d in drafts] == [False, False, True]
    assert drafts[-1].canvas == outcome.canvas


def test_engine_answers_the_same_on_both_paths(tiny_model_dir: Path) -> None:
    fast = Engine(load_model(tiny_model_dir, "cpu", "float32"))
    eager = Engine(load_model(tiny_model_dir, "cpu", "float32"), fast_path=FastPathSettings(enabled=False))
    assert fast.fast is not None and eager.fast is None
    request = InfillRequest(
        prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", language="python",
        kind=HoleKind.LINE,
        settings=SamplerSettings(max_steps=4),
    )
    for typed in ("", "a", "a +"):  # typing on: the prompt cache and the static buffers are reused
        one = replace(request, prefix=request.prefix + typed)
        assert fast.infill(one).text == eager.infill(one).text


def test_compile_setting() -> None:
    assert should_compile("auto", torch.device("cpu")) is False
    assert should_compile("auto", torch.device("cuda")) is False  # opt in with "on" for now
    assert should_compile("on", torch.device("cpu")) is True
    assert should_compile("off", torch.device("cuda")) is False
    with pytest.raises(ValueError):
        should_compile("sometimes", torch.device("cpu"))


def test_cpu_compile_options(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # building compiled steps points the cache here
    options = compiled_step.cpu_inductor_options
    monkeypatch.delenv(compiled_step.CPU_TUNING_ENV, raising=False)
    assert options(loaded.model) == {"cpp_wrapper": True}  # the default on a CPU: C++ host code
    assert StepFunctions(loaded.model, True).inductor_options == {"cpp_wrapper": True}
    assert StepFunctions(loaded.model, False).inductor_options == {}
    monkeypatch.setenv(compiled_step.CPU_TUNING_ENV, "max")
    most = options(loaded.model)
    assert most["cpp_wrapper"] and most["freezing"] and most["max_autotune"] and most["max_autotune_gemm_backends"] == "CPP,ATEN"
    monkeypatch.setattr(compiled_step, "CPU_GEMM_MAX_WEIGHT_BYTES", compiled_step.parameter_bytes(loaded.model) - 1)
    assert options(loaded.model) == {"cpp_wrapper": True}  # too large to freeze a copy of
    for off in ("0", "off", "False", "no"):
        monkeypatch.setenv(compiled_step.CPU_TUNING_ENV, off)
        assert options(loaded.model) == {}
    monkeypatch.setenv(compiled_step.CPU_TUNING_ENV, "fastest")
    with caplog.at_level("WARNING", logger="dg_lsp.engine.compiled_step"):
        assert options(loaded.model) == {"cpp_wrapper": True}
    assert "DG_LSP_CPU_COMPILE_TUNING" in caplog.text and "fastest" in caplog.text
    monkeypatch.setenv(compiled_step.CPU_TUNING_ENV, "max")
    monkeypatch.setattr(loaded.model.config, "quantization_config", {"quant_method": "torchao"}, raising=False)
    assert options(loaded.model) == {}  # quantized weights: inductor's defaults
    monkeypatch.undo()


def test_cuda_compiles_keep_inductors_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    monkeypatch.setenv(compiled_step.CPU_TUNING_ENV, "max")
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # only the device is read on this branch
    assert compiled_step.cpu_inductor_options(on_cuda) == {}  # type: ignore[arg-type]


def test_compile_cache_lives_under_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "dg-lsp" / "torchinductor"


@contextmanager
def dynamo_restarts() -> Iterator[list[str]]:
    """The reasons dynamo gave for restarting a trace (``Restarting analysis due to ...``) inside the block."""
    reasons: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Restarting analysis"):
                reasons.append(record.getMessage())

    frame_log = logging.getLogger("torch._dynamo.convert_frame")
    handler, level = Catch(), frame_log.level
    frame_log.addHandler(handler)
    frame_log.setLevel(logging.INFO)
    try:
        yield reasons
    finally:
        frame_log.removeHandler(handler)
        frame_log.setLevel(level)


@pytest.mark.skipif(
    os.environ.get("DG_LSP_TEST_COMPILE") != "1",
    reason="compiling the step takes minutes on a 2-core CPU: set DG_LSP_TEST_COMPILE=1 (tests/gpu runs it on CUDA)",
)
def test_compiled_step_gives_the_eager_canvas(loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiled = FastDenoiser(loaded.model, FastPathSettings(compile="on"))
    assert compiled.compiled
    assert compiled.steps.inductor_options == compiled_step.cpu_inductor_options(loaded.model) != {}  # numerics included
    skipped_before = COMPILED_CALLS.skipped
    # Two canvas lengths and two context buckets through one dynamic-shape graph (the second
    # request's later steps without dynamo's guard checks), each traced once: no restart of
    # dynamo's analysis to specialize the model's floats (norm epsilons, attention scaling).
    with dynamo_restarts() as restarts:
        for seed, context, length in ((0, 30, 32), (1, 90, 64)):
            settings = SamplerSettings(max_steps=3)
            eager, quick, _, _ = both(loaded.model, compiled, prompt(seed, context), CanvasSpec(length=length), settings, seed)
            assert quick.canvas == eager.canvas
            assert quick.steps == eager.steps
    assert restarts == []
    # Another entropy bound and confidence threshold are inputs of the same graph, not a recompile.
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    settings = SamplerSettings(max_steps=3, entropy_bound=0.7, confidence_threshold=0.5)
    eager, quick, _, _ = both(loaded.model, compiled, prompt(5, 30), CanvasSpec(length=32), settings, 5)
    assert (quick.canvas, quick.steps) == (eager.canvas, eager.steps)
    assert counters["stats"]["unique_graphs"] == graphs
    # An absorbing-noise model: decided tokens pinned, the completion floor and the settled stop in the graph.
    settings = SamplerSettings(max_steps=4, entropy_bound=1e-9)
    eager, quick, _, _ = both(loaded.model, compiled, prompt(2, 40), CanvasSpec(length=32, noise_id=3), settings, 2)
    assert (quick.canvas, quick.steps) == (eager.canvas, eager.steps)
    # Sampled requests: the first runs the uncompiled halves and compiles them in the background; once
    # compiled, a request's later steps skip guard checks after a sampled second step had them.
    for seed in (3, 4, 5):
        settings, cache = SamplerSettings(max_steps=3, greedy=False), PromptCache(loaded.model)
        cache.encode(prompt(seed, 40))
        sampled = compiled.denoise(cache, CanvasSpec(length=32), settings, seed)
        assert len(sampled.canvas) == 32 and sampled.steps == 3
        thread = compiled.steps.sampled_compile
        assert thread is not None
        thread.join(1200)
        assert compiled.steps.sampled_compiled, compiled.steps.sampled_error
    assert compiled.steps.guards_checked_for == {True, False} and COMPILED_CALLS.skipped > skipped_before
    assert (tmp_path / "inductor").is_dir()


@pytest.mark.skipif(
    os.environ.get("DG_LSP_TEST_COMPILE") != "1",
    reason="compiling the encoder takes minutes on a 2-core CPU: set DG_LSP_TEST_COMPILE=1",
)
def test_compiled_prompt_encoder_writes_the_eager_cache(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(compiled_step, "ENCODER_STANCE", "fail_on_recompile")  # prove the two warm graphs suffice
    steps = StepFunctions(loaded.model, True)
    assert steps.prompt_encoder() is None  # not before its warm-up
    steps.warm_encoder()
    encoder = steps.prompt_encoder()
    assert encoder is not None
    fresh, compiled = PromptCache(loaded.model), PromptCache(loaded.model)
    # a fresh prompt, a typed tail, a longer prompt reusing a prefix, a different start: no new graph needed
    for ids in (prompt(0, 40), prompt(0, 40)[:-1] + [9], prompt(0, 70), prompt(3, 55)):
        fresh.encode(ids)
        compiled.encode(ids, encoder=encoder)
        for mine, theirs in zip(cache_layers(compiled.full_cache), cache_layers(fresh.full_cache), strict=True):
            for a, b in zip(layer_tensors(mine), layer_tensors(theirs), strict=True):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    # a size no warm-up saw (a one-token prompt) runs eagerly under the serving stance: no new graph
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled_step, "ENCODER_STANCE", "eager_on_recompile")
    graphs = counters["stats"]["unique_graphs"]
    single = PromptCache(loaded.model)
    single.encode([11], encoder=encoder)
    fresh.encode([11])
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.allclose(layer_tensors(cache_layers(single.full_cache)[0])[0], layer_tensors(cache_layers(fresh.full_cache)[0])[0], atol=1e-4)


def test_server_settings_for_the_fast_path() -> None:
    from dg_lsp.config import ServerOptions, parse_options

    options, problems = parse_options(ServerOptions, {"fastPath": False, "compile": "on"})
    assert (options.fast_path, options.compile, problems) == (False, "on", [])
    options, problems = parse_options(ServerOptions, {"compile": "sometimes"})
    assert options.compile == "auto" and len(problems) == 1 and "compile" in problems[0]


def test_compile_cache_replaces_torchs_temporary_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from dg_lsp.engine.compiled_step import enable_compile_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes once it used its default
    assert enable_compile_cache() == tmp_path / "dg-lsp" / "torchinductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice is kept
    assert enable_compile_cache() == tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # empty is unset, not the working directory
    assert enable_compile_cache() == tmp_path / "dg-lsp" / "torchinductor"


@pytest.mark.parametrize("noise_id", [None, 3])
def test_the_background_warm_up_runs_the_models_own_noise(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, noise_id: int | None
) -> None:
    """An absorbing-noise model's step is another graph: warming the uniform one would leave it to a request."""
    seen: list[CanvasSpec] = []
    original = FastDenoiser.denoise

    def spy(self: FastDenoiser, cache: PromptCache, spec: CanvasSpec, *args: object, **kwargs: object) -> DenoiseOutcome:
        seen.append(spec)
        return original(self, cache, spec, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FastDenoiser, "denoise", spy)
    fast = FastDenoiser(loaded.model, FastPathSettings(compile="off"), noise_id=noise_id)
    fast._warm_shape_factory()(StepFunctions(loaded.model, False), 32)
    assert [(spec.length, spec.noise_id) for spec in seen] == [(32, noise_id)]


def cold_sampled_halves(model: Any, calls: list[str]) -> StepFunctions:
    """Stands in for a compiled step whose sampled halves are not compiled yet: ``calls`` records the "compiled" ``forward_stats``."""
    steps = StepFunctions(model, False)
    steps.compiled, steps.sampled_compiled = True, False
    plain_forward = steps.forward_stats

    def compiled_forward(*args: Any) -> Any:
        calls.append("compiled")
        return plain_forward(*args)

    steps.forward_stats = compiled_forward
    return steps


def test_the_first_sampled_request_compiles_the_halves_in_the_background(loaded: LoadedModel) -> None:
    """A sampled step's compiled halves are other graphs: compiled once asked for, and no request waits for them."""
    model = loaded.model
    calls: list[str] = []
    steps = cold_sampled_halves(model, calls)
    fast = FastDenoiser(model, FastPathSettings(compile="off"), steps=steps)
    cache = PromptCache(model)
    cache.encode(prompt(6, 30))
    spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=3, greedy=False)
    assert fast.compile_facts()["sampled"] == "pending"
    fast.denoise(cache, spec, SamplerSettings(max_steps=3), seed=5)  # greedy: starts nothing
    assert steps.sampled_compile is None
    started = steps.sampled_compile
    before = fast.denoise(cache, spec, settings, seed=5)  # runs the uncompiled halves, starts their compile
    thread = steps.sampled_compile
    assert thread is not None and thread is not started and thread.name == "dg-compile-sampled"
    thread.join(60)
    assert calls == ["compiled"] * 2 and fast.compile_facts()["sampled"] == "ready"  # the warm-up's two steps
    after = fast.denoise(cache, spec, settings, seed=5)
    assert len(calls) == 5 and after.canvas == before.canvas  # the same numbers, now through the compiled halves
    assert steps.start_sampled_compile(lambda: None) is None  # once


def test_a_failed_sampled_compile_leaves_the_uncompiled_halves_serving(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = loaded.model
    calls: list[str] = []
    steps = cold_sampled_halves(model, calls)
    fast = FastDenoiser(model, FastPathSettings(compile="off"), steps=steps)

    def broken(self: FastDenoiser, steps: StepFunctions, length: int) -> None:
        raise RuntimeError("inductor could not build the sampled step")

    monkeypatch.setattr(FastDenoiser, "_warm_sampled", broken)
    cache = PromptCache(model)
    cache.encode(prompt(7, 30))
    spec, settings = CanvasSpec(length=32), SamplerSettings(max_steps=3, greedy=False)
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.compiled_step"):
        first = fast.denoise(cache, spec, settings, seed=2)
        assert steps.sampled_compile is not None
        steps.sampled_compile.join(60)
        second = fast.denoise(cache, spec, settings, seed=2)
    assert first.canvas == second.canvas and calls == []
    assert fast.compile_facts()["sampled"] == "failed" and "could not build" in str(steps.sampled_error)
    assert len([r for r in caplog.records if "compiling the sampled step failed" in r.getMessage()]) == 1

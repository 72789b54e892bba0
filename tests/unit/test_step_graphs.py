"""Captured greedy steps (``compile: "graphs"``) give the uncompiled fast path's answers.

On a CPU the capture is emulated (:class:`EmulatedGraphRunner`: a replay re-runs the step on the
static inputs and overwrites the static outputs, a CUDA graph's contract), which checks that every
input is copied in before a replay and every output copied out after it; tests/gpu runs the same
comparison with real CUDA graphs.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from dg_lsp.engine.denoiser import CanvasSpec, DenoiseOutcome, Draft
from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine.step_graphs import EmulatedGraphRunner
from dg_lsp.model.loader import LoadedModel, load_model


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, "cpu", "float32")


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(8, 512) for _ in range(length)]


def pair(loaded: LoadedModel) -> tuple[FastDenoiser, FastDenoiser, list[EmulatedGraphRunner]]:
    runners: list[EmulatedGraphRunner] = []

    def runner() -> EmulatedGraphRunner:
        runners.append(EmulatedGraphRunner())
        return runners[-1]

    captured = FastDenoiser(loaded.model, FastPathSettings(compile="off", draft_interval=2), graph_runners=runner)
    plain = FastDenoiser(loaded.model, FastPathSettings(compile="off", draft_interval=2))
    plain.padded = True  # the captured step's layout: the prompt padded to its bucket, padding masked
    assert captured.padded and captured.graphs is not None
    return captured, plain, runners


def run_both(
    captured: FastDenoiser, plain: FastDenoiser, loaded: LoadedModel, ids: list[int], spec: CanvasSpec,
    settings: SamplerSettings, seed: int,
) -> tuple[DenoiseOutcome, DenoiseOutcome, list[Draft], list[Draft]]:
    cache = PromptCache(loaded.model)
    cache.encode(ids)
    mine: list[Draft] = []
    theirs: list[Draft] = []
    return (
        captured.denoise(cache, spec, settings, seed, on_draft=mine.append),
        plain.denoise(cache, spec, settings, seed, on_draft=theirs.append),
        mine,
        theirs,
    )


def test_captured_greedy_steps_give_the_uncompiled_answers(loaded: LoadedModel) -> None:
    captured, plain, runners = pair(loaded)
    settings = SamplerSettings(max_steps=6)
    # two canvas lengths, two context buckets, and a repeat that replays an existing graph
    for seed, (context, length) in enumerate(((30, 32), (90, 64), (300, 32), (40, 32))):
        mine, theirs, my_drafts, their_drafts = run_both(
            captured, plain, loaded, prompt(seed, context), CanvasSpec(length=length), settings, seed
        )
        assert (mine.canvas, mine.steps, mine.stopped_early) == (theirs.canvas, theirs.steps, theirs.stopped_early)
        assert [(d.step, d.canvas, d.final) for d in my_drafts] == [(d.step, d.canvas, d.final) for d in their_drafts]
    assert captured.graphs is not None
    # (bucket 256, 32) and (256, 64); the buffers grow for 300 tokens, dropping both: (512, 32), then (256, 32) anew
    assert captured.graphs.captures == 4 and len(captured.graphs.graphs) == 2
    assert sum(r.replays for r in runners) == 4 * 6  # a capture only records: every step is a replay
    assert captured.compile_facts()["graphs"] == {"captured": 2}


def test_an_early_stop_and_absorbing_noise_replay_alike(loaded: LoadedModel) -> None:
    captured, plain, _ = pair(loaded)
    # every token accepted (the canvas settles), confidence above any mean entropy: the stability rule decides
    stopped = 0
    for seed in range(4):
        stopping = SamplerSettings(max_steps=12, entropy_bound=1e6, confidence_threshold=100.0, stability_threshold=1)
        mine, theirs, _, _ = run_both(captured, plain, loaded, prompt(seed, 40), CanvasSpec(length=32), stopping, seed)
        assert (mine.canvas, mine.steps, mine.stopped_early) == (theirs.canvas, theirs.steps, theirs.stopped_early)
        stopped += mine.stopped_early
    assert stopped > 0  # the rule fired, on the device, inside the replayed step
    absorbing = SamplerSettings(max_steps=5, entropy_bound=1e-9)
    mine, theirs, _, _ = run_both(captured, plain, loaded, prompt(8, 50), CanvasSpec(length=32, noise_id=3), absorbing, 8)
    assert (mine.canvas, mine.steps, mine.stopped_early) == (theirs.canvas, theirs.steps, theirs.stopped_early)
    assert captured.graphs is not None and captured.graphs.captures == 2  # the settings and the noise are part of the key


def test_sampled_steps_are_not_captured(loaded: LoadedModel) -> None:
    captured, plain, runners = pair(loaded)
    sampled = SamplerSettings(max_steps=4, greedy=False)
    mine, theirs, _, _ = run_both(captured, plain, loaded, prompt(9, 40), CanvasSpec(length=32), sampled, 9)
    assert (mine.canvas, mine.steps) == (theirs.canvas, theirs.steps)
    assert runners == []


def test_a_capture_that_fails_falls_back_for_good(loaded: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(EmulatedGraphRunner):
        def capture(self, fn: Any) -> Any:
            raise RuntimeError("operation not permitted when stream is capturing")

    captured = FastDenoiser(loaded.model, FastPathSettings(compile="off"), graph_runners=Refusing)
    plain = FastDenoiser(loaded.model, FastPathSettings(compile="off"))
    plain.padded = True
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.fast_path"):
        for seed in range(2):
            mine, theirs, _, _ = run_both(captured, plain, loaded, prompt(seed, 40), CanvasSpec(length=32), SamplerSettings(max_steps=4), seed)
            assert (mine.canvas, mine.steps) == (theirs.canvas, theirs.steps)
    assert captured.graphs is None and captured.compile_facts()["state"] == "failed"
    assert "not permitted when stream is capturing" in str(captured.compile_facts()["error"])
    assert len([r for r in caplog.records if "CUDA graphs failed" in r.getMessage()]) == 1


def test_graphs_need_cuda(loaded: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dg_lsp.engine.fast_path"):
        fast = FastDenoiser(loaded.model, FastPathSettings(compile="graphs"))
    assert fast.graphs is None and not fast.padded and not fast.compiled and fast.plan == "never"
    assert any("needs CUDA" in r.getMessage() for r in caplog.records)


def test_the_setting_accepts_graphs() -> None:
    from dg_lsp.config import ServerOptions, parse_options

    options, problems = parse_options(ServerOptions, {"compile": "graphs"})
    assert (options.compile, problems) == ("graphs", [])


def test_emulated_replays_overwrite_the_outputs_in_place() -> None:
    static = torch.zeros(3)

    def step() -> tuple[torch.Tensor, ...]:
        return (static * 2, static + 1, static, static, static)

    runner = EmulatedGraphRunner()
    outputs = runner.capture(step)  # type: ignore[arg-type]
    first = outputs[0]
    assert torch.isnan(first).all()  # nothing usable before a replay
    static.copy_(torch.tensor([1.0, 2.0, 3.0]))
    runner.replay()
    assert first is outputs[0] and torch.equal(first, torch.tensor([2.0, 4.0, 6.0]))

"""Continuous batching: every request gets the answer it would get alone, and can be cancelled."""

from __future__ import annotations

import threading
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import pytest

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine.scheduler import BatchScheduler, QueueFull, StepReport
from dg_lsp.model.loader import load_model

PROMPTS = [
    ("def add(a, b):\n    return ", "\n", HoleKind.REST_OF_LINE, "python"),
    ("class Stack:\n    def push(self, item):\n        ", "\n", HoleKind.LINE, "python"),
    ("function greet(name) {\n  ", "\n}\n", HoleKind.BLOCK, "javascript"),
    ("fn main() { let v = ", "; }\n", HoleKind.REST_OF_LINE, "rust"),
    ("int main(void) {\n", "  return 0;\n}\n", HoleKind.LINE, "c"),
]


def _requests(count: int) -> list[InfillRequest]:
    out = []
    for i in range(count):
        prefix, suffix, kind, language = PROMPTS[i % len(PROMPTS)]
        out.append(
            InfillRequest(
                prefix=prefix * (1 + i // len(PROMPTS)),
                suffix=suffix,
                language=language,
                kind=kind,
                settings=SamplerSettings(max_steps=6 + i % 4, greedy=i % 3 != 0),
                max_canvas=64,
                seed=i,
            )
        )
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(load_model(tiny_model_dir, "cpu", "float32"))


@pytest.fixture(
    params=[(True, True, False), (False, True, False), (True, True, True), (True, False, False), (False, False, False)],
    ids=["padded", "per-length", "padded-fixed-shapes", "padded-restack", "per-length-restack"],
)
def scheduler(engine: Engine, request: pytest.FixtureRequest) -> Iterator[BatchScheduler]:
    reports: list[StepReport] = []
    pad, static, fixed = request.param
    s = BatchScheduler(
        engine, max_batch=8, max_queue=64, on_step=reports.append, pad_canvases=pad, static_cache=static, fixed_shapes=fixed
    )
    s.reports = reports  # type: ignore[attr-defined]
    yield s
    s.close()


def test_batched_answers_equal_single_answers(engine: Engine, scheduler: BatchScheduler) -> None:
    requests = _requests(12)
    alone = [engine.infill(r) for r in requests]
    jobs = [scheduler.submit(r) for r in requests]
    together = [job.future.result(timeout=120) for job in jobs]
    assert [t.result.text for t in together] == [a.text for a in alone]
    assert [t.result.steps for t in together] == [a.steps for a in alone]
    reports = scheduler.reports  # type: ignore[attr-defined]
    assert sum(r.canvases for r in reports) == sum(a.steps for a in alone)
    widest = max(r.canvases for r in reports)
    assert max(t.batch_size for t in together) == widest
    if scheduler.pad_canvases:
        assert widest == 8  # 12 requests, 8 slots: one forward for all of them
    else:
        assert 1 < widest < 8  # 32- and 64-token canvases run as two forwards per step
    counters = scheduler.counters
    if scheduler.static_cache:  # each prompt copied once, into its slot; no restacking as requests come and go
        assert counters.joins == 12 and counters.join_bytes > 0
        assert counters.layouts > 1 and counters.layout_bytes == 0
        assert all(r.layout_bytes == 0 for r in reports)
        if scheduler.fixed_shapes:
            assert {r.rows for r in reports} == {8} and counters.moves == 0
        else:  # requests leaving from under others: the last one moves down, no forward computes an empty row
            assert all(r.rows == r.canvases for r in reports)
    else:
        assert counters.joins == 0 and counters.layout_bytes > 0


def test_drafts_arrive_per_step_and_end_final(scheduler: BatchScheduler) -> None:
    drafts: list[tuple[str, int, int, bool]] = []
    request = _requests(1)[0]
    result = scheduler.infill(request, on_draft=lambda *d: drafts.append(d))
    assert [d[1] for d in drafts] == list(range(1, result.steps + 1))
    assert drafts[-1][3] and not any(d[3] for d in drafts[:-1])
    assert drafts[-1][0] == result.text


def test_cancel_stops_one_request_not_the_others(engine: Engine, scheduler: BatchScheduler) -> None:
    long = InfillRequest(prefix="x = ", suffix="\n", language="python", kind=HoleKind.BLOCK,
                         settings=SamplerSettings(max_steps=200, confidence_threshold=0.0), max_canvas=64)
    started = threading.Event()
    job = scheduler.submit(long, on_draft=lambda *d: started.set())
    others = [scheduler.submit(r) for r in _requests(3)]
    assert started.wait(60)
    job.cancel()
    with pytest.raises(Cancelled):
        job.future.result(timeout=60)
    expected = [engine.infill(r).text for r in _requests(3)]
    assert [o.future.result(timeout=60).result.text for o in others] == expected


def test_blocking_infill_honours_cancelled(scheduler: BatchScheduler) -> None:
    long = InfillRequest(prefix="y = ", suffix="\n", language="python", kind=HoleKind.BLOCK,
                         settings=SamplerSettings(max_steps=500, confidence_threshold=0.0), max_canvas=64)
    steps: list[int] = []
    with pytest.raises(Cancelled):
        scheduler.infill(long, on_draft=lambda text, step, n, final: steps.append(step), cancelled=lambda: len(steps) >= 3)
    assert 3 <= len(steps) < 500


def test_full_queue_is_refused(engine: Engine) -> None:
    scheduler = BatchScheduler(engine, max_batch=1, max_queue=1)
    try:
        long = InfillRequest(prefix="z = ", suffix="\n", language="python", kind=HoleKind.BLOCK,
                             settings=SamplerSettings(max_steps=500, confidence_threshold=0.0), max_canvas=64)
        running = threading.Event()
        first = scheduler.submit(long, on_draft=lambda *d: running.set())
        assert running.wait(60)
        second = scheduler.submit(long)
        with pytest.raises(QueueFull):
            scheduler.submit(long)
        first.cancel()
        second.cancel()
        for job in (first, second):
            with pytest.raises(Cancelled):
                job.future.result(timeout=60)
    finally:
        scheduler.close()


def test_abandoned_waiting_requests_free_the_queue(engine: Engine) -> None:
    """A client that gives up while its request waits frees its queue slot at once (no 429 from ghosts)."""
    scheduler = BatchScheduler(engine, max_batch=1, max_queue=2)
    try:
        long = InfillRequest(prefix="z = ", suffix="\n", language="python", kind=HoleKind.BLOCK,
                             settings=SamplerSettings(max_steps=500, confidence_threshold=0.0), max_canvas=64)
        running = threading.Event()
        first = scheduler.submit(long, on_draft=lambda *d: running.set())
        assert running.wait(60)
        waiting = [scheduler.submit(long), scheduler.submit(long)]
        with pytest.raises(QueueFull):
            scheduler.submit(long)
        for job in waiting:
            job.cancel()
        for job in waiting:  # finished by the worker's next step, while the first request still runs
            with pytest.raises(Cancelled):
                job.future.result(timeout=60)
        assert not first.future.done()
        assert scheduler.queue_depth == 0
        later = [scheduler.submit(long), scheduler.submit(long)]
        for job in [first, *later]:
            job.cancel()
        for job in [first, *later]:
            with pytest.raises(Cancelled):
                job.future.result(timeout=60)
    finally:
        scheduler.close()


def test_a_selection_too_long_is_refused_at_submit(scheduler: BatchScheduler) -> None:
    request = InfillRequest(prefix="", suffix="", language="python", kind=HoleKind.SELECTION,
                            seed_text="x = 1\n" * 400, max_canvas=256)
    with pytest.raises(ValueError, match="select less text"):
        scheduler.submit(request)


def test_typing_on_copies_only_the_changed_tail_into_its_slot(engine: Engine) -> None:
    scheduler = BatchScheduler(engine, max_batch=4, pad_canvases=False, static_cache=True, fixed_shapes=False)
    try:
        prefix = "def area(width, height):\n    total = width * height\n    return "
        request = InfillRequest(prefix=prefix, suffix="\n", language="python", kind=HoleKind.REST_OF_LINE,
                                settings=SamplerSettings(max_steps=4), max_canvas=64)
        first = scheduler.infill(request)
        copied = scheduler.counters.join_bytes
        typed = InfillRequest(prefix=prefix + "t", suffix="\n", language="python", kind=HoleKind.REST_OF_LINE,
                              settings=SamplerSettings(max_steps=4), max_canvas=64)
        second = scheduler.infill(typed)
        assert second.encode.reused_tokens > 0 and first.encode.reused_tokens == 0
        tail = scheduler.counters.join_bytes - copied
        assert 0 < tail < copied / 4  # the re-encoded tail only, not the whole prompt
        assert second.text == engine.infill(typed).text
    finally:
        scheduler.close()


def test_one_request_after_another_each_gets_its_own_answer(engine: Engine) -> None:
    # The same slot serves one request after another, prompts of different lengths: nothing of the last one lingers.
    scheduler = BatchScheduler(engine, max_batch=2, pad_canvases=False, static_cache=True)
    try:
        requests = [replace(r, max_canvas=32) for r in _requests(8)]
        assert [scheduler.infill(r).text for r in requests] == [engine.infill(r).text for r in requests]
    finally:
        scheduler.close()


def test_an_absorbing_noise_checkpoint_batches_to_its_single_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    checkpoint = tmp_path / "absorbing"
    shutil.copytree(tiny_model_dir, checkpoint)
    (checkpoint / "dg_lsp.json").write_text('{"noise_token": "<unk>"}', encoding="utf-8")
    absorbing = Engine(load_model(checkpoint, "cpu", "float32"))
    assert absorbing.loaded.noise_id is not None
    uniform = Engine(load_model(tiny_model_dir, "cpu", "float32"))
    # A huge entropy bound decides every token at the first step: the comparison does not hinge on how
    # a batched forward's last-bit rounding ranks the near-equal entropies of a random-weight model.
    requests = [replace(r, settings=replace(r.settings, entropy_bound=1e6)) for r in _requests(6)]
    alone = [absorbing.infill(r) for r in requests]
    assert all(a.steps == 1 for a in alone)  # nothing left masked after the first step: settled
    assert [a.text for a in alone] != [uniform.infill(r).text for r in requests]  # the noise token is in play
    s = BatchScheduler(absorbing, max_batch=8, max_queue=16, pad_canvases=True, static_cache=True, fixed_shapes=False)
    try:
        together = [job.future.result(timeout=120) for job in [s.submit(r) for r in requests]]
    finally:
        s.close()
    assert [t.result.text for t in together] == [a.text for a in alone]

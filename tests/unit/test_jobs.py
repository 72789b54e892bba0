"""The job runner: one worker thread, newest job per key wins, task cancellation reaches the job."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.server.jobs import JobRunner, JobStats

#: Guard against a hung test only (a correct run never comes near it).
GUARD_S = 30.0


@pytest.fixture
async def runner() -> AsyncIterator[JobRunner]:
    jobs = JobRunner()
    yield jobs
    jobs.shutdown()


async def _submitted(runner: JobRunner, count: int) -> None:
    """Let the event loop run until ``count`` jobs have been handed to the worker."""
    for _ in range(10_000):
        if runner.stats.submitted >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {runner.stats.submitted} of {count} jobs were submitted")


async def _wait(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, GUARD_S), "the worker never got there"


def _wait_for_cancel(cancelled: Callable[[], bool]) -> bool:
    """Poll like the denoiser does between steps; true once cancelled."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        if cancelled():
            return True
        time.sleep(0.002)
    return False


class Blocker:
    """A job that occupies the worker until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, cancelled: Callable[[], bool]) -> str:
        self.started.set()
        self.release.wait(GUARD_S)
        return "blocker"


async def test_result_and_stats(runner: JobRunner) -> None:
    seen: list[bool] = []

    def job(cancelled: Callable[[], bool]) -> int:
        seen.append(cancelled())
        return 42

    assert await runner.run("k", job) == 42
    assert seen == [False]
    assert runner.stats == JobStats(submitted=1, started=1, completed=1, cancelled=0, failed=0)


async def test_failures_propagate_and_are_counted(runner: JobRunner) -> None:
    def job(cancelled: Callable[[], bool]) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await runner.run("k", job)
    assert runner.stats == JobStats(submitted=1, started=1, completed=0, cancelled=0, failed=1)
    assert await runner.run("k", lambda cancelled: "still works") == "still works"


async def test_newer_job_skips_a_queued_older_one(runner: JobRunner) -> None:
    blocker = Blocker()
    calls: list[str] = []
    blocked = asyncio.create_task(runner.run("other", blocker))
    try:
        await _wait(blocker.started)
        older = asyncio.create_task(runner.run("k", lambda cancelled: calls.append("older") or "older"))
        await _submitted(runner, 2)
        newer = asyncio.create_task(runner.run("k", lambda cancelled: calls.append("newer") or "newer"))
        await _submitted(runner, 3)
    finally:
        blocker.release.set()
    with pytest.raises(Cancelled):
        await older
    assert await newer == "newer"
    assert await blocked == "blocker"
    assert calls == ["newer"]
    assert runner.stats == JobStats(submitted=3, started=2, completed=2, cancelled=1, failed=0)


async def test_newer_job_cancels_a_running_older_one(runner: JobRunner) -> None:
    started = threading.Event()
    observed: list[bool] = []

    def older_job(cancelled: Callable[[], bool]) -> str:
        observed.append(cancelled())
        started.set()
        observed.append(_wait_for_cancel(cancelled))
        raise Cancelled()

    older = asyncio.create_task(runner.run("k", older_job))
    await _wait(started)
    newer = asyncio.create_task(runner.run("k", lambda cancelled: "newer"))
    with pytest.raises(Cancelled):
        await older
    assert await newer == "newer"
    assert observed == [False, True]
    assert runner.stats == JobStats(submitted=2, started=2, completed=1, cancelled=1, failed=0)


async def test_different_keys_do_not_cancel_each_other(runner: JobRunner) -> None:
    blocker = Blocker()
    flags: dict[str, bool] = {}

    def first(cancelled: Callable[[], bool]) -> str:
        blocker(cancelled)
        flags["first"] = cancelled()
        return "first"

    def second(cancelled: Callable[[], bool]) -> str:
        flags["second"] = cancelled()
        return "second"

    a = asyncio.create_task(runner.run("doc-a", first))
    try:
        await _wait(blocker.started)
        b = asyncio.create_task(runner.run("doc-b", second))
        await _submitted(runner, 2)
    finally:
        blocker.release.set()
    assert await a == "first"
    assert await b == "second"
    assert flags == {"first": False, "second": False}
    assert runner.stats.cancelled == 0 and runner.stats.completed == 2


async def test_cancelling_the_task_sets_the_event(runner: JobRunner) -> None:
    started = threading.Event()
    finished = threading.Event()
    observed: list[bool] = []

    def job(cancelled: Callable[[], bool]) -> str:
        started.set()
        observed.append(_wait_for_cancel(cancelled))
        finished.set()
        return "done"

    task = asyncio.create_task(runner.run("k", job))
    await _wait(started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait(finished)
    assert observed == [True]
    assert runner.stats.cancelled == 1
    # The key is free again.
    assert await runner.run("k", lambda cancelled: cancelled()) is False


async def test_cancelling_a_queued_task_never_starts_its_job(runner: JobRunner) -> None:
    blocker = Blocker()
    calls: list[str] = []
    blocked = asyncio.create_task(runner.run("other", blocker))
    try:
        await _wait(blocker.started)
        queued = asyncio.create_task(runner.run("k", lambda cancelled: calls.append("queued")))
        await _submitted(runner, 2)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
    finally:
        blocker.release.set()
    assert await blocked == "blocker"
    assert await runner.run("k", lambda cancelled: "after") == "after"
    assert calls == []
    assert runner.stats == JobStats(submitted=3, started=2, completed=2, cancelled=1, failed=0)


async def test_explicit_cancel(runner: JobRunner) -> None:
    started = threading.Event()

    def job(cancelled: Callable[[], bool]) -> bool:
        started.set()
        return _wait_for_cancel(cancelled)

    task = asyncio.create_task(runner.run("k", job))
    await _wait(started)
    runner.cancel("unknown")  # no effect, no error
    runner.cancel("k")
    assert await task is True


async def test_run_exclusive(runner: JobRunner) -> None:
    thread_names: list[str] = []

    def load() -> str:
        thread_names.append(threading.current_thread().name)
        return "loaded"

    assert await runner.run_exclusive(load) == "loaded"
    assert thread_names[0].startswith("dg-engine")
    assert runner.stats.submitted == 0


async def test_shutdown_cancels_running_jobs() -> None:
    jobs = JobRunner()
    started = threading.Event()

    def job(cancelled: Callable[[], bool]) -> bool:
        started.set()
        return _wait_for_cancel(cancelled)

    task = asyncio.create_task(jobs.run("k", job))
    await _wait(started)
    jobs.shutdown()
    assert await task is True

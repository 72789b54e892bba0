"""The prompt prefetcher: the cursor an edit leaves, one pending prefetch, dropped by requests and newer edits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from lsprotocol import types

from dg_lsp.server.jobs import JobRunner, JobStats
from dg_lsp.server.drafts import DraftRelay
from dg_lsp.server.prefetch import TYPED_CHARS, TYPED_CHANGES, PrefetchPlan, Prefetcher, PrefetchStats, edit_end, typing_like

#: Guard against a hung test only (a correct run never comes near it).
GUARD_S = 30.0


def change(line: int, character: int, end_line: int, end_character: int, text: str) -> types.TextDocumentContentChangePartial:
    return types.TextDocumentContentChangePartial(
        range=types.Range(start=types.Position(line, character), end=types.Position(end_line, end_character)), text=text
    )


def offsets(text: str) -> Callable[[types.Position], int]:
    """Position -> offset in ``text`` (ASCII, so UTF-16 units are characters)."""
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    return lambda p: starts[p.line] + p.character


def test_the_cursor_is_where_the_last_change_ends() -> None:
    after = "def f():\n    return 1\n"
    at = offsets(after)
    assert edit_end([change(1, 11, 1, 11, "1")], at) == len("def f():\n    return 1")
    # Enter, then auto-indent: the last change wins.
    assert edit_end([change(0, 8, 0, 8, "\n"), change(1, 0, 1, 0, "    ")], at) == len("def f():\n    ")
    # Backspace: the cursor is where the deleted range started.
    assert edit_end([change(1, 12, 1, 13, "")], at) == len("def f():\n    return 1")
    # A paste of several lines ends after the pasted text.
    assert edit_end([change(0, 0, 0, 0, "# a\n# b\n")], offsets("# a\n# b\n" + after)) == len("# a\n# b\n")


def test_a_whole_document_change_or_none_has_no_cursor() -> None:
    assert edit_end([types.TextDocumentContentChangeWholeDocument(text="x = 1\n")], offsets("x = 1\n")) is None
    assert edit_end([], offsets("")) is None


def test_typing_like_edits_are_keys_not_pastes_deleted_lines_or_tools() -> None:
    assert typing_like([change(1, 11, 1, 11, "1")])  # a key
    assert typing_like([change(1, 12, 1, 13, "")])  # backspace
    assert typing_like([change(0, 8, 0, 8, "\n"), change(1, 0, 1, 0, "    ")])  # Enter and its indentation
    assert typing_like([change(0, 8, 0, 8, "\n    ")])  # the same in one change
    assert typing_like([change(2, 4, 2, 4, "()")])  # an auto-closed pair
    assert typing_like([change(2, 4, 2, 4, "x" * TYPED_CHARS)])  # keys batched by the editor
    assert not typing_like([change(2, 4, 2, 4, "x" * (TYPED_CHARS + 1))])  # a paste
    assert not typing_like([change(0, 0, 0, 0, "# a\n# b\n")])  # lines pasted
    assert not typing_like([change(3, 0, 4, 0, "")])  # a line deleted (dd)
    assert not typing_like([change(1, 4, 2, 2, "x")])  # a selection across lines replaced
    assert not typing_like([change(i, 0, i, 0, " ") for i in range(TYPED_CHANGES + 1)])  # a tool's many edits
    assert not typing_like([types.TextDocumentContentChangeWholeDocument(text="x = 1\n")])  # a formatter's whole text
    assert not typing_like([])


@pytest.fixture
async def runner() -> AsyncIterator[JobRunner]:
    jobs = JobRunner()
    yield jobs
    jobs.shutdown()


class Plans:
    """Prefetch plans that record what ran, on which thread, and what was handed back to the loop."""

    def __init__(self, result: bool = True, error: Exception | None = None) -> None:
        self.ran: list[str] = []
        self.given_back: list[str] = []
        self.threads: set[str] = set()
        self.done = asyncio.Event()
        self._result, self._error = result, error

    def plan(self, name: str) -> Callable[[], PrefetchPlan]:
        def make() -> PrefetchPlan:
            def job(cancelled: Callable[[], bool]) -> bool:
                self.ran.append(name)
                self.threads.add(threading.current_thread().name)
                if self._error is not None:
                    raise self._error
                return self._result

            def give_back() -> None:
                self.given_back.append(name)

            return job, give_back, None

        return make


async def settle(prefetcher: Prefetcher, runner: JobRunner) -> None:
    """Wait until nothing is pending: the timer fired or was cancelled and the worker is idle."""
    for _ in range(int(GUARD_S / 0.01)):
        await asyncio.sleep(0.01)
        if prefetcher._timer is None and not prefetcher._tasks:  # noqa: SLF001 - the test's view of "idle"
            await asyncio.wrap_future(runner._executor.submit(lambda: None))  # noqa: SLF001
            return
    raise AssertionError("the prefetcher never settled")


async def test_a_scheduled_prefetch_runs_on_the_worker_after_the_delay(runner: JobRunner) -> None:
    prefetcher, plans = Prefetcher(runner, delay_s=0.01), Plans()
    prefetcher.schedule(plans.plan("a"))
    assert plans.ran == []  # not before the delay
    await settle(prefetcher, runner)
    assert plans.ran == ["a"] and plans.given_back == ["a"]
    assert all(name.startswith("dg-engine") for name in plans.threads)
    assert prefetcher.stats == PrefetchStats(scheduled=1, encoded=1)
    assert runner.stats == JobStats()  # prefetches are not request jobs


async def test_a_newer_edit_replaces_a_pending_prefetch(runner: JobRunner) -> None:
    prefetcher, plans = Prefetcher(runner, delay_s=0.05), Plans()
    for name in "abc":
        prefetcher.schedule(plans.plan(name))
    await settle(prefetcher, runner)
    assert plans.ran == ["c"]
    assert prefetcher.stats == PrefetchStats(scheduled=3, encoded=1, dropped=2)


async def test_a_request_before_the_delay_drops_the_prefetch(runner: JobRunner) -> None:
    prefetcher, plans = Prefetcher(runner, delay_s=0.05), Plans()
    prefetcher.schedule(plans.plan("a"))
    prefetcher.cancel()  # what a request does first
    await asyncio.sleep(0.1)
    await settle(prefetcher, runner)
    assert plans.ran == [] and plans.given_back == []
    assert prefetcher.stats == PrefetchStats(scheduled=1, dropped=1)


async def test_a_queued_prefetch_is_skipped_when_a_request_comes(runner: JobRunner) -> None:
    prefetcher, plans = Prefetcher(runner, delay_s=0.0), Plans()
    release = threading.Event()
    busy = asyncio.ensure_future(runner.run("complete:x", lambda cancelled: release.wait(GUARD_S)))
    prefetcher.schedule(plans.plan("a"))
    for _ in range(1000):  # the prefetch is queued behind the busy job
        await asyncio.sleep(0.001)
        if prefetcher._tasks:  # noqa: SLF001
            break
    prefetcher.cancel()
    release.set()
    await busy
    await settle(prefetcher, runner)
    assert plans.ran == []
    assert prefetcher.stats == PrefetchStats(scheduled=1, dropped=1)


async def test_a_plan_with_nothing_to_do_is_dropped(runner: JobRunner) -> None:
    prefetcher = Prefetcher(runner, delay_s=0.0)
    prefetcher.schedule(lambda: None)
    await settle(prefetcher, runner)
    assert prefetcher.stats == PrefetchStats(scheduled=1, dropped=1)


async def test_a_failing_or_unsupported_prefetch_is_counted_and_never_raises(
    runner: JobRunner, caplog: pytest.LogCaptureFixture
) -> None:
    failing = Plans(error=RuntimeError("device lost"))
    prefetcher = Prefetcher(runner, delay_s=0.0)
    prefetcher.schedule(failing.plan("a"))
    await settle(prefetcher, runner)
    assert failing.ran == ["a"] and failing.given_back == []
    assert "prompt prefetch failed: RuntimeError: device lost" in caplog.text
    unsupported = Plans(result=False)
    prefetcher.schedule(unsupported.plan("b"))
    await settle(prefetcher, runner)
    assert unsupported.ran == ["b"] and unsupported.given_back == []
    assert prefetcher.stats == PrefetchStats(scheduled=2, unsupported=1, failed=1)
    # The worker still runs request jobs afterwards.
    assert await runner.run("complete:x", lambda cancelled: 42) == 42


async def test_a_request_for_the_same_place_joins_the_running_prefetch(runner: JobRunner) -> None:
    prefetcher, plans = Prefetcher(runner, delay_s=0.0), Plans()
    started, release = threading.Event(), threading.Event()

    relay = DraftRelay()

    def slow() -> PrefetchPlan:
        job, give_back, _ = plans.plan("a")()

        def wait_then_run(cancelled: Callable[[], bool]) -> bool:
            relay("x = 1", 3, 8, False)  # a speculation's draft, made before anyone asked
            started.set()
            release.wait(GUARD_S)
            return job(cancelled)

        return wait_then_run, give_back, relay

    target = ("file:///a.py", 3, 10)
    prefetcher.schedule(slow, target)
    drafts: list[tuple[str, int, int, bool]] = []

    def sink(text: str, step: int, max_steps: int, final: bool) -> None:
        drafts.append((text, step, max_steps, final))

    assert await prefetcher.join(target, sink) is False  # not on the worker yet: nothing to join
    assert await asyncio.to_thread(started.wait, GUARD_S)
    assert await prefetcher.join(("file:///a.py", 4, 10), sink) is False  # another version
    assert await prefetcher.join(("file:///a.py", 3, 11), sink) is False  # another place
    assert drafts == []  # no join, no drafts
    joining = asyncio.ensure_future(prefetcher.join(target, sink))
    await asyncio.sleep(0.05)
    assert not joining.done()  # waits for the prefetch ...
    assert drafts == [("x = 1", 3, 8, False)]  # ... having got the draft made so far
    release.set()
    assert await joining is True  # ... and returns once it has finished, its work handed back
    assert plans.ran == ["a"] and plans.given_back == ["a"]
    assert prefetcher.stats == PrefetchStats(scheduled=1, encoded=1, joined=1)
    assert await prefetcher.join(target, sink) is False  # finished: nothing left to join

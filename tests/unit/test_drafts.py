"""Throttled ``dg/draft`` notifications."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from dg_lsp.server.drafts import DRAFT_METHOD, DraftNotifier, DraftRelay

BASE = {"uri": "file:///work/app.py", "id": 7, "kind": "completion"}


class Recorder:
    """Collects sent notifications and the thread they were sent on."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[int] = set()

    def __call__(self, method: str, params: dict[str, Any]) -> None:
        self.sent.append((method, params))
        self.threads.add(threading.get_ident())

    @property
    def texts(self) -> list[str]:
        return [params["text"] for _, params in self.sent]


async def _flush() -> None:
    """Run the callbacks scheduled with call_soon_threadsafe."""
    for _ in range(3):
        await asyncio.sleep(0)


def _notifier(interval_ms: int) -> tuple[DraftNotifier, Recorder]:
    recorder = Recorder()
    return DraftNotifier(asyncio.get_running_loop(), recorder, dict(BASE), interval_ms), recorder


async def test_interval_zero_sends_every_draft() -> None:
    notifier, recorder = _notifier(0)
    for step in range(1, 6):
        notifier(f"draft {step}", step, 5, step == 5)
    await _flush()
    assert recorder.texts == [f"draft {step}" for step in range(1, 6)]
    assert notifier.sent == 5


async def test_large_interval_sends_the_first_and_the_final_only() -> None:
    notifier, recorder = _notifier(10_000_000)
    for step in range(1, 9):
        notifier(f"draft {step}", step, 8, step == 8)
    await _flush()
    assert recorder.texts == ["draft 1", "draft 8"]
    assert [params["final"] for _, params in recorder.sent] == [False, True]
    assert notifier.sent == 2


async def test_identical_texts_are_skipped_but_the_final_always_goes_out() -> None:
    notifier, recorder = _notifier(0)
    notifier("a", 1, 5, False)
    notifier("a", 2, 5, False)
    notifier("ab", 3, 5, False)
    notifier("ab", 4, 5, False)
    notifier("ab", 5, 5, True)
    await _flush()
    assert [(params["text"], params["step"]) for _, params in recorder.sent] == [("a", 1), ("ab", 3), ("ab", 5)]
    assert notifier.sent == 3


async def test_payload_fields() -> None:
    notifier, recorder = _notifier(0)
    notifier("x = 1", 3, 16, False)
    await _flush()
    assert recorder.sent == [
        (DRAFT_METHOD, {**BASE, "text": "x = 1", "step": 3, "maxSteps": 16, "final": False}),
    ]
    assert DRAFT_METHOD == "dg/draft"


async def test_base_fields_are_not_overwritten_between_drafts() -> None:
    notifier, recorder = _notifier(0)
    notifier("one", 1, 2, False)
    notifier("two", 2, 2, True)
    await _flush()
    first, second = (params for _, params in recorder.sent)
    assert first["text"] == "one" and second["text"] == "two"
    assert first is not second


async def test_drafts_from_the_engine_thread_are_sent_on_the_loop() -> None:
    notifier, recorder = _notifier(0)

    def engine_thread() -> None:
        for step in range(1, 4):
            notifier(f"t{step}", step, 3, step == 3)

    await asyncio.to_thread(engine_thread)
    await _flush()
    assert recorder.texts == ["t1", "t2", "t3"]
    assert recorder.threads == {threading.get_ident()}


def test_empty_intermediate_drafts_are_not_sent() -> None:
    import asyncio

    from dg_lsp.server.drafts import DraftNotifier

    sent: list[dict[str, object]] = []
    loop = asyncio.new_event_loop()
    try:
        notifier = DraftNotifier(loop, lambda method, params: sent.append(params), {"uri": "u"}, 0)
        notifier("", 1, 4, False)
        notifier("x", 2, 4, False)
        notifier("", 3, 4, False)
        notifier("", 4, 4, True)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert [(p["text"], p["step"], p["final"]) for p in sent] == [("x", 2, False), ("", 4, True)]


def test_a_relay_keeps_the_latest_draft_until_a_sink_attaches_then_forwards_every_one() -> None:
    relay = DraftRelay()
    relay("a", 1, 8, False)
    relay("ab", 2, 8, False)
    got: list[tuple[str, int, int, bool]] = []
    relay.attach(lambda *draft: got.append(draft))
    assert got == [("ab", 2, 8, False)]  # only the latest of what came before
    relay("abc", 3, 8, False)
    relay("abc", 8, 8, True)
    assert got == [("ab", 2, 8, False), ("abc", 3, 8, False), ("abc", 8, 8, True)]
    empty: list[tuple[str, int, int, bool]] = []
    DraftRelay().attach(lambda *draft: empty.append(draft))
    assert empty == []  # nothing to replay

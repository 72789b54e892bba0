"""Throttled ``dg/draft`` notifications, sent from the engine thread through the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

DRAFT_METHOD = "dg/draft"


class DraftNotifier:
    """Sends at most one draft per ``interval_ms``; skips repeats and empty drafts (the final one always goes out)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[str, dict[str, Any]], None],
        base: dict[str, Any],
        interval_ms: int,
    ) -> None:
        self._loop = loop
        self._send = send
        self._base = base
        self._interval = interval_ms / 1000.0
        self._last = float("-inf")
        self._last_text: str | None = None
        self.sent = 0

    def __call__(self, text: str, step: int, max_steps: int, final: bool) -> None:
        now = time.monotonic()
        if not final and (not text or now - self._last < self._interval or text == self._last_text):
            return  # empty intermediate drafts would only make the ghost text flicker
        self._last = now
        self._last_text = text
        params = {**self._base, "text": text, "step": step, "maxSteps": max_steps, "final": final}
        self.sent += 1
        self._loop.call_soon_threadsafe(self._send, DRAFT_METHOD, params)


#: Where drafts go: (cleaned text, step, max steps, final).
DraftSink = Callable[[str, int, int, bool], None]


class DraftRelay:
    """Drafts of work that began before anyone asked (a speculation): the latest is kept until a request
    attaches its notifier, which then gets it at once and every draft after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sink: DraftSink | None = None
        self._latest: tuple[str, int, int, bool] | None = None

    def __call__(self, text: str, step: int, max_steps: int, final: bool) -> None:
        with self._lock:
            self._latest = (text, step, max_steps, final)
            sink = self._sink
        if sink is not None:
            sink(text, step, max_steps, final)

    def attach(self, sink: DraftSink) -> None:
        """Send every draft from now on to ``sink``, starting with the latest one."""
        with self._lock:
            self._sink = sink
            latest = self._latest
        if latest is not None:
            sink(*latest)

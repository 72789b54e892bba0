"""Throttled ``dg/draft`` notifications, sent from the engine thread through the event loop."""

from __future__ import annotations

import asyncio
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

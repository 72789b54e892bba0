"""Model work off the event loop: one worker thread, newest job per key wins."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from dg_lsp.engine.denoiser import Cancelled

T = TypeVar("T")


@dataclass
class JobStats:
    """Counters exposed through ``dg.info`` (and checked by the tests)."""

    submitted: int = 0
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0


class JobRunner:
    """Runs model jobs one at a time on a worker thread.

    A job receives a ``cancelled()`` callable to poll between denoising steps. Submitting a
    job under a key cancels the previous job with that key (queued jobs are skipped before
    they start), and cancelling the awaiting task cancels its job.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dg-engine")
        self._latest: dict[str, threading.Event] = {}
        self.stats = JobStats()

    def cancel(self, key: str) -> None:
        """Cancel the current job with ``key``, if any."""
        event = self._latest.get(key)
        if event is not None:
            event.set()

    def _run(self, fn: Callable[[Callable[[], bool]], T], event: threading.Event, stats: JobStats) -> T:
        if event.is_set():
            raise Cancelled()
        stats.started += 1
        return fn(event.is_set)

    async def run(self, key: str, fn: Callable[[Callable[[], bool]], T], counted: bool = True) -> T:
        """Run ``fn(cancelled)`` on the worker; raises :class:`Cancelled` if superseded or cancelled.

        ``counted=False`` keeps the job out of :attr:`stats` (work nobody asked for, e.g. a prefetch).
        """
        self.cancel(key)
        event = threading.Event()
        self._latest[key] = event
        stats = self.stats if counted else JobStats()
        stats.submitted += 1
        try:
            result = await asyncio.wrap_future(self._executor.submit(self._run, fn, event, stats))
            stats.completed += 1
            return result
        except (Cancelled, asyncio.CancelledError):
            event.set()
            stats.cancelled += 1
            raise
        except Exception:
            stats.failed += 1
            raise
        finally:
            if self._latest.get(key) is event:
                del self._latest[key]

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker without a key (model loads); nothing cancels it."""
        return await asyncio.wrap_future(self._executor.submit(fn))

    def shutdown(self) -> None:
        """Cancel everything and stop the worker."""
        for event in self._latest.values():
            event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

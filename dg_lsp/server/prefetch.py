"""Prompt prefetch: after an edit, encode the prompt at the cursor while the editor waits to ask.

Editors ask for inline completions a little after the last keystroke (VS Code soon after; the
Neovim plugin's ``debounce_ms``, 100 ms, its change notifications batched every 20 ms). An edit
is reported first, and the cursor is where the edit ended. Encoding the prompt for that cursor
in the gap means the request finds its whole prompt in the prompt cache and goes straight to
denoising. Only the newest edit's prefetch is kept (the engine holds one prompt); a request for
the place and version a running prefetch is for joins it (waits for it), any other request drops
a prefetch that has not started: the request encodes its own prompt anyway. With
``completion.speculate`` the job denoises the whole completion too (the server's plan remembers
the answer, so the joining request is answered from it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lsprotocol import types

from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.server.drafts import DraftRelay, DraftSink
from dg_lsp.server.jobs import JobRunner

log = logging.getLogger(__name__)

#: How long after an edit a prefetch waits before starting (seconds): a request sent right
#: after its edit (an editor that does not debounce) finds nothing in its way.
START_DELAY_S = 0.015

#: The job key prefetches run under (one engine, one prompt cache: one prefetch at a time).
JOB_KEY = "prefetch"

#: A prefetch job: ``job(cancelled)`` returns whether the backend encoded anything.
PrefetchJob = Callable[[Callable[[], bool]], bool]
#: What :meth:`Prefetcher.schedule`'s factory returns: the job, what to run on the loop after it encoded, and
#: the drafts it makes (a speculation's; None for a prompt encode), which a joining request is sent.
PrefetchPlan = tuple[PrefetchJob, Callable[[], None], DraftRelay | None]
#: What a prefetch is for: (uri, document version, cursor offset).
Target = tuple[str, int, int]


@dataclass
class PrefetchStats:
    """Counters for ``dg.info``'s ``prefetch`` (and the tests)."""

    scheduled: int = 0
    #: Encoded on the engine thread.
    encoded: int = 0
    #: Dropped before encoding: a newer edit, a request, or the document changed or closed.
    dropped: int = 0
    #: The backend does not prefetch (an engine server).
    unsupported: int = 0
    failed: int = 0
    #: Requests that waited for the prefetch of their own place instead of dropping it.
    joined: int = 0

    def to_json(self) -> dict[str, int]:
        """The counters as JSON."""
        return asdict(self)


#: The most characters one change of a typing-like edit inserts (a few keys batched by the editor, an
#: auto-closed pair, a new line with its indentation).
TYPED_CHARS = 16
#: The most changes a typing-like edit carries.
TYPED_CHANGES = 4


def typing_like(changes: Sequence[Any]) -> bool:
    """Whether an edit looks like typing (what speculation is for) rather than a paste, a line deleted, or a tool's edit.

    Each change inserts at most :data:`TYPED_CHARS` characters with at most one line break and
    replaces text within one line; at most :data:`TYPED_CHANGES` changes; no whole-document change.
    """
    if not changes or len(changes) > TYPED_CHANGES:
        return False
    for change in changes:
        if not isinstance(change, types.TextDocumentContentChangePartial):
            return False
        if change.range.start.line != change.range.end.line:
            return False
        if len(change.text) > TYPED_CHARS or change.text.count("\n") > 1:
            return False
    return True


def edit_end(changes: Sequence[Any], offset_at: Callable[[types.Position], int]) -> int | None:
    """Where the cursor is after ``changes`` (the end of the last change's text); None for a whole-document change.

    ``offset_at`` converts a position of the document *after* the changes: the text before the
    last change's start is the same before and after it.
    """
    if not changes:
        return None
    last = changes[-1]
    if not isinstance(last, types.TextDocumentContentChangePartial):
        return None
    return offset_at(last.range.start) + len(last.text)


class Prefetcher:
    """Runs at most one prefetch (prompt encode or speculation) at a time, on the model worker, after a short delay."""

    def __init__(self, jobs: JobRunner, delay_s: float = START_DELAY_S) -> None:
        self._jobs = jobs
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: The prefetch on the worker (or queued for it): what it is for, its task and its drafts.
        self._running: tuple[Target, asyncio.Task[None], DraftRelay | None] | None = None
        self.stats = PrefetchStats()

    def schedule(self, plan: Callable[[], PrefetchPlan | None], target: Target | None = None) -> None:
        """Run ``plan()``'s job after the delay, replacing any prefetch not yet started.

        ``plan`` is called on the event loop when the delay ends and returns None when there is
        nothing to do any more (no model, the document changed); its second part runs on the
        loop after a successful encode. ``target`` lets a request for the same place
        :meth:`join` the prefetch instead of dropping it.
        """
        self.cancel()
        self.stats.scheduled += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._delay_s, self._start, plan, target)

    @property
    def busy(self) -> bool:
        """Whether a prefetch with a target is on the worker (or queued for it)."""
        return self._running is not None

    async def join(self, target: Target, drafts: DraftSink) -> bool:
        """Wait for the prefetch for ``target`` if it is on the worker already, its drafts going to ``drafts``
        meanwhile; False if there is none."""
        running = self._running
        if running is None or running[0] != target:
            return False
        self.stats.joined += 1
        _, task, relay = running
        if relay is not None:
            relay.attach(drafts)
        await asyncio.shield(task)
        return True

    def cancel(self) -> None:
        """Drop the pending prefetch, if any: one not started is skipped, a speculation stops at its next
        denoising step, a prompt already encoding finishes (an encode cannot be interrupted)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.stats.dropped += 1
        self._jobs.cancel(JOB_KEY)

    def _start(self, plan: Callable[[], PrefetchPlan | None], target: Target | None) -> None:
        self._timer = None
        planned = plan()
        if planned is None:
            self.stats.dropped += 1
            return
        job, done, relay = planned
        task = asyncio.ensure_future(self._run(job, done))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        if target is not None:
            self._running = (target, task, relay)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._running is not None and self._running[1] is task:
            self._running = None

    async def _run(self, job: PrefetchJob, done: Callable[[], None]) -> None:
        try:
            encoded = await self._jobs.run(JOB_KEY, job, counted=False)
        except (Cancelled, asyncio.CancelledError):
            self.stats.dropped += 1
            return
        except Exception as exc:  # a prefetch is an optimisation: its failure must never reach the user
            self.stats.failed += 1
            log.warning("prompt prefetch failed: %s: %s", type(exc).__name__, exc)
            return
        if not encoded:
            self.stats.unsupported += 1
            return
        self.stats.encoded += 1
        done()

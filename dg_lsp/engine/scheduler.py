"""Continuous batching: concurrent infill requests share every denoising step.

A single worker thread owns the model. Between steps it admits queued requests (encoding
each prompt into a pooled cache), drops cancelled ones, then runs one decoder forward for
all active canvases (:func:`~dg_lsp.engine.batching.batch_logits`) and lets each advance
with its own sampler state, seed and stopping rule: a request's answer does not depend on
what it was batched with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from dg_lsp.engine.batching import BatchedPrompts, batch_logits
from dg_lsp.engine.cache_pool import PromptCachePool
from dg_lsp.engine.denoiser import Cancelled, CanvasRow, Draft, embedding_dtype
from dg_lsp.engine.engine import DraftCallback, Engine, InfillRequest, InfillResult, PreparedInfill
from dg_lsp.engine.prompt_cache import EncodeStats, PromptCache
from dg_lsp.model.typing import vocab_size

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every batch slot and queue place is taken; try again later."""


@dataclass(frozen=True)
class ScheduledResult:
    """An answer and how it was scheduled."""

    result: InfillResult
    queue_ms: float
    #: Largest number of canvases (this one included) that shared a decoder forward with it.
    batch_size: int


@dataclass(frozen=True)
class StepReport:
    """One batched forward, for metrics."""

    canvases: int
    forward_ms: float


@dataclass(eq=False)
class Job:
    """A submitted request: its future, cancel flag and (once admitted) its canvas."""

    prepared: PreparedInfill
    #: Canvas drafts, already turned into text for the caller's callback.
    report: Callable[[Draft], None] | None
    future: Future[ScheduledResult] = field(default_factory=Future)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    encode_ms: float = 0.0
    stats: EncodeStats | None = None
    cache: PromptCache | None = None
    row: CanvasRow | None = None
    batch_size: int = 0

    def cancel(self) -> None:
        """Stop this request at the next step boundary (or before it starts)."""
        self.cancel_event.set()


class BatchScheduler:
    """Runs infill requests for one :class:`Engine`, up to ``max_batch`` canvases per forward."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 8,
        max_queue: int = 64,
        on_step: Callable[[StepReport], None] | None = None,
        pad_canvases: bool | None = None,
    ) -> None:
        self.engine = engine
        #: One forward for all canvases, shorter ones padded (cheap when reading the weights dominates,
        #: as on a GPU), or one forward per canvas length (no padded compute: better on a CPU).
        self.pad_canvases = engine.loaded.device.type != "cpu" if pad_canvases is None else pad_canvases
        self.max_batch = max(1, max_batch)
        self.max_queue = max(0, max_queue)
        self._on_step = on_step
        self._model = engine.loaded.model
        self._vocab = vocab_size(self._model)
        self._embed_dtype = embedding_dtype(self._model)
        self._pool = PromptCachePool(self._model, capacity=2 * self.max_batch)
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._prompts: dict[int, BatchedPrompts | None] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dg-batch", daemon=True)
        self._thread.start()

    # -- client side (any thread) ----------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch slot."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Canvases being denoised."""
        return len(self._active)

    def submit(self, request: InfillRequest, on_draft: DraftCallback | None = None) -> Job:
        """Queue ``request``; raises :class:`QueueFull`, or ValueError for a request that cannot fit."""
        prepared = self.engine.prepare(request)
        job = Job(prepared=prepared, report=self.engine.draft_reporter(on_draft))
        with self._condition:
            if self._closed:
                raise RuntimeError("the engine is shutting down")
            abandoned = self._take_cancelled_pending()
            free = self.max_batch - len(self._active)
            if len(self._pending) >= free + self.max_queue:
                raise QueueFull(
                    f"{len(self._active)} canvases are being denoised and {len(self._pending)} requests wait"
                )
            self._pending.append(job)
            self._condition.notify()
        for gone in abandoned:
            self._finish(gone, error=Cancelled())
        return job

    def infill(
        self,
        request: InfillRequest,
        on_draft: DraftCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> InfillResult:
        """Blocking form of :meth:`submit`; raises :class:`Cancelled` when ``cancelled()`` turns true."""
        job = self.submit(request, on_draft)
        while True:
            try:
                return job.future.result(timeout=0.02).result
            except TimeoutError:
                if cancelled is not None and cancelled():
                    job.cancel()

    def close(self) -> None:
        """Stop the worker; pending and active requests are cancelled."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout=30)

    # -- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and not self._pending and not self._active:
                    self._condition.wait()
                if self._closed:
                    break
            try:
                self._admit()
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception as exc:  # a failed forward fails its batch, never the worker
                log.exception("batched denoising step failed")
                for job in list(self._active):
                    self._finish(job, error=exc)
        for job in [*self._pending, *self._active]:
            self._finish(job, error=Cancelled())
        self._pending.clear()

    def _admit(self) -> None:
        while len(self._active) < self.max_batch:
            with self._condition:
                if not self._pending:
                    return
                job = self._pending.popleft()
            if job.cancel_event.is_set():
                self._finish(job, error=Cancelled())
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            job.admitted = time.perf_counter()
            prompt = job.prepared.prompt
            cache = self._pool.acquire(prompt)
            try:
                job.stats = cache.encode(prompt)
            except Exception as exc:
                cache.clear()
                self._finish(job, error=exc)
                continue
            job.cache = cache
            job.encode_ms = (time.perf_counter() - job.admitted) * 1000.0
            prepared = job.prepared
            job.row = CanvasRow.start(
                self._model, cache.cache, len(prompt), prepared.spec, prepared.settings, prepared.request.seed
            )
            self._active.append(job)
            self._prompts.clear()

    def _take_cancelled_pending(self) -> list[Job]:
        """Remove waiting requests whose clients gave up (call with the condition held)."""
        gone = [job for job in self._pending if job.cancel_event.is_set()]
        if gone:
            self._pending = deque(job for job in self._pending if not job.cancel_event.is_set())
        return gone

    def _drop_cancelled(self) -> None:
        """Finish cancelled requests at once, active or still waiting: a queue of abandoned requests never fills."""
        with self._condition:
            waiting = self._take_cancelled_pending()
        for job in [*waiting, *(job for job in self._active if job.cancel_event.is_set())]:
            self._finish(job, error=Cancelled())

    def _groups(self, jobs: list[Job]) -> dict[int, list[Job]]:
        """Jobs denoised by one forward each: all together, or one group per canvas length."""
        if self.pad_canvases:
            return {0: jobs}
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.prepared.spec.length, []).append(job)
        return groups

    @torch.inference_mode()
    def _step(self) -> None:
        jobs = list(self._active)
        for key, group in self._groups(jobs).items():
            rows = [job.row for job in group if job.row is not None]
            started = time.perf_counter()
            logits, self._prompts[key] = batch_logits(self._model, rows, self._prompts.get(key))
            forward_ms = (time.perf_counter() - started) * 1000.0
            for job, row, row_logits in zip(group, rows, logits, strict=True):
                job.batch_size = max(job.batch_size, len(rows))
                draft = row.advance(row_logits, self._vocab, self._embed_dtype, started)
                if job.report is not None:
                    try:
                        job.report(draft)
                    except Exception:  # a broken listener cancels its own request only
                        log.exception("draft listener failed; cancelling its request")
                        job.cancel()
                if row.done:
                    self._finish(job)
            if self._on_step is not None:
                self._on_step(StepReport(canvases=len(rows), forward_ms=forward_ms))

    def _finish(self, job: Job, error: BaseException | None = None) -> None:
        if job in self._active:
            self._active.remove(job)
            self._prompts.clear()
        if job.cache is not None:
            if error is None or isinstance(error, Cancelled):
                self._pool.release(job.cache, job.prepared.prompt)
            job.cache = None
        if job.future.done():
            return
        if not job.future.running() and not job.future.set_running_or_notify_cancel():
            return
        if error is not None:
            job.future.set_exception(error)
            return
        assert job.row is not None and job.stats is not None
        denoise_ms = (time.perf_counter() - job.admitted) * 1000.0 - job.encode_ms
        result = self.engine.result(job.prepared, job.row.outcome(), job.stats, job.encode_ms, denoise_ms)
        queue_ms = (job.admitted - job.submitted) * 1000.0
        job.future.set_result(ScheduledResult(result=result, queue_ms=queue_ms, batch_size=job.batch_size))

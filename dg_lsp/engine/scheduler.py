"""Continuous batching: concurrent infill requests share every denoising step.

A single worker thread owns the model. Between steps it admits queued requests (encoding
each prompt into a pooled prompt cache, then copying its states into a free slot of a
preallocated :class:`~dg_lsp.engine.batched_cache.BatchedStaticKV`), drops cancelled ones,
then runs one decoder forward for all active canvases (:func:`~dg_lsp.engine.batching.slot_logits`)
and lets each advance with its own sampler state, seed and stopping rule: a request's answer
does not depend on what it was batched with. A request joining or leaving copies nothing of
the others' states (on a CPU, one leaving from under the highest busy slot lets the request
there move down into its slot: one prompt copied, so no forward computes an empty row).
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

from dg_lsp.engine.batched_cache import BatchedStaticKV
from dg_lsp.engine.batching import BatchedPrompts, SlotLayout, batch_logits, batch_prompts, slot_layout, slot_logits
from dg_lsp.engine.cache_pool import PromptCachePool
from dg_lsp.engine.denoiser import Cancelled, CanvasRow, Draft, embedding_dtype
from dg_lsp.engine.engine import DraftCallback, Engine, InfillRequest, InfillResult, PreparedInfill
from dg_lsp.engine.prompt_cache import EncodeStats, PromptCache, cache_layers, layer_tensors
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
    #: Time of this forward spent laying out its batch after the set of canvases changed (included in ``forward_ms``).
    layout_ms: float = 0.0
    #: Prompt KV bytes copied for that layout (the restacking path copies every row; slots copy none).
    layout_bytes: int = 0
    #: Batch rows the forward computed: the canvases plus free slots below the last busy one (filler).
    rows: int = 0
    #: CPU time of the worker thread in ``forward_ms`` (on a CPU with one torch thread: the forward's own cost,
    #: whatever else the machine runs).
    forward_cpu_ms: float = 0.0


@dataclass
class CacheCounters:
    """Where prompt states were copied, since the scheduler started (read by benchmarks)."""

    #: Requests whose prompt states went into a slot, the bytes and time that took, and buffer growths.
    joins: int = 0
    join_bytes: int = 0
    join_ms: float = 0.0
    grown: int = 0
    #: Requests moved down into a slot freed under them (exact shapes: no filler row), and the bytes that took.
    moves: int = 0
    move_bytes: int = 0
    #: Batch layouts rebuilt because the set of canvases in a forward changed, their time and KV bytes copied.
    layouts: int = 0
    layout_ms: float = 0.0
    layout_bytes: int = 0


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
    #: The slot holding its prompt states (-1: none) and the slot cache it belongs to.
    slot: int = -1
    group: int = 0

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
        static_cache: bool = True,
        fixed_shapes: bool | None = None,
        context_tokens: int | None = None,
    ) -> None:
        self.engine = engine
        gpu = engine.loaded.device.type != "cpu"
        #: One forward for all canvases, shorter ones padded (cheap when reading the weights dominates,
        #: as on a GPU), or one forward per canvas length (no padded compute: better on a CPU).
        self.pad_canvases = gpu if pad_canvases is None else pad_canvases
        #: Prompt states in preallocated slots (False: each request's own cache, restacked when the batch changes).
        self.static_cache = static_cache
        #: Every slot a batch row and the context padded to its bucket (few shapes, for compiled steps);
        #: else the rows and context a forward computes end at the last one in use (no padded compute).
        self.fixed_shapes = gpu if fixed_shapes is None else fixed_shapes
        #: Context capacity the slots are allocated with (a prompt longer than it grows them once).
        self.context_tokens = context_tokens or engine.context_tokens or 1024
        self.counters = CacheCounters()
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
        #: One slot cache per forward group (every canvas together, or one per canvas length), made on first use.
        self._slots: dict[int, BatchedStaticKV] = {}
        self._layouts: dict[int, SlotLayout] = {}
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
            previous = cache.ids
            try:
                job.stats = cache.encode(prompt)
            except Exception as exc:
                cache.clear()
                self._finish(job, error=exc)
                continue
            job.encode_ms = (time.perf_counter() - job.admitted) * 1000.0
            prepared = job.prepared
            if self.static_cache:
                if not self._take_slot(job, cache, previous):
                    continue
                row_cache = None
            else:
                job.cache, row_cache = cache, cache.cache
            job.row = CanvasRow.start(
                self._model, row_cache, len(prompt), prepared.spec, prepared.settings, prepared.request.seed
            )
            self._active.append(job)
            self._prompts.clear()

    def _group(self, job: Job) -> int:
        """The forward a job's canvas runs in: 0 for all together, else its canvas length."""
        return 0 if self.pad_canvases else job.prepared.spec.length

    def _take_slot(self, job: Job, cache: PromptCache, previous: list[int]) -> bool:
        """Copy the job's freshly encoded prompt into a free slot; the prompt cache goes back to the pool."""
        group = self._group(job)
        kv = self._slots.get(group)
        if kv is None:
            kv = self._slots[group] = BatchedStaticKV(self._model, self.max_batch, self.context_tokens)
        slot = kv.choose(cache.ids, anywhere=self.fixed_shapes)
        started = time.perf_counter()
        try:
            copy = kv.fill(slot, cache, previous)
        except Exception as exc:
            kv.forget(slot)
            cache.clear()
            self._finish(job, error=exc)
            return False
        counters = self.counters
        counters.joins += 1
        counters.join_bytes += copy.bytes
        counters.join_ms += (time.perf_counter() - started) * 1000.0
        counters.grown += int(copy.grew)
        job.slot, job.group = slot, group
        self._pool.release(cache, cache.ids)  # the slot holds what the decoder reads
        return True

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
            started, cpu_started = time.perf_counter(), time.thread_time()
            layout_ms, layout_bytes = self._layout(key, group, rows)
            if self.static_cache:
                members = [(job.slot, row) for job, row in zip(group, rows, strict=True)]
                logits, self._layouts[key] = slot_logits(
                    self._model, self._slots[key], members, self._layouts.get(key), self.fixed_shapes
                )
                computed = self._layouts[key].rows
            else:
                logits, self._prompts[key] = batch_logits(self._model, rows, self._prompts.get(key))
                computed = len(rows)
            forward_ms = (time.perf_counter() - started) * 1000.0
            forward_cpu_ms = (time.thread_time() - cpu_started) * 1000.0
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
                self._on_step(
                    StepReport(
                        canvases=len(rows), forward_ms=forward_ms, layout_ms=layout_ms, layout_bytes=layout_bytes,
                        rows=computed, forward_cpu_ms=forward_cpu_ms,
                    )
                )

    def _free_slot(self, job: Job) -> None:
        """Free the job's slot. With exact shapes (forwards compute every slot up to the last busy one), the
        request in the last busy slot, if above it, moves down into it: one prompt copied instead of a filler
        row computed every step. With fixed shapes nothing else moves."""
        kv, freed = self._slots[job.group], job.slot
        kv.release(freed)
        job.slot = -1
        if self.fixed_shapes:
            return
        busy = kv.in_use
        if not busy or busy[-1] < freed:
            return
        top = busy[-1]
        mover = next((other for other in self._active if other.group == job.group and other.slot == top), None)
        if mover is None:
            return
        self.counters.move_bytes += kv.move(top, freed)
        self.counters.moves += 1
        mover.slot = freed

    def _layout(self, key: int, group: list[Job], rows: list[CanvasRow]) -> tuple[float, int]:
        """Lay the group's batch out anew if its canvases changed; returns the time taken and KV bytes copied."""
        started = time.perf_counter()
        copied = 0
        if self.static_cache:
            members = [(job.slot, row) for job, row in zip(group, rows, strict=True)]
            layout = self._layouts.get(key)
            if layout is not None and layout.serves(members):
                return 0.0, 0
            self._layouts[key] = slot_layout(self._model, self._slots[key], members, self.fixed_shapes)
        else:
            prompts = self._prompts.get(key)
            if len(rows) == 1 or (prompts is not None and prompts.rows == tuple(id(row) for row in rows)):
                return 0.0, 0
            prompts = self._prompts[key] = batch_prompts(self._model, rows)
            for layer in cache_layers(prompts.cache):
                keys, values = layer_tensors(layer)
                copied += keys.numel() * keys.element_size() + values.numel() * values.element_size()
        layout_ms = (time.perf_counter() - started) * 1000.0
        counters = self.counters
        counters.layouts += 1
        counters.layout_ms += layout_ms
        counters.layout_bytes += copied
        return layout_ms, copied

    def _finish(self, job: Job, error: BaseException | None = None) -> None:
        if job in self._active:
            self._active.remove(job)
            self._prompts.clear()
        if job.slot >= 0:
            self._free_slot(job)
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

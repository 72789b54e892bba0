"""The engine server's HTTP API (FastAPI): OpenAI-compatible completions with FIM and draft streaming."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from dg_lsp import __version__
from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.engine.engine import Engine, warmup_requests
from dg_lsp.engine.scheduler import BatchScheduler, Job, QueueFull, ScheduledResult
from dg_lsp.engine.wire import CompletionRequest, cut_at_stops, error_body, result_stats
from dg_lsp.engine_server.auth import authorized
from dg_lsp.engine_server.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, BodyTooLarge
from dg_lsp.engine_server.metrics import EngineMetrics
from dg_lsp.model.loader import ModelLoadError, load_model
from dg_lsp.model.resident import make_resident
from dg_lsp.server.model_manager import ModelSpec

log = logging.getLogger(__name__)

TOKENIZER_PATH = "/v1/dg/tokenizer.json"


class LatestDraft:
    """The newest draft of a streamed request: a slow reader skips drafts instead of queueing them."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self._latest: tuple[str, int, int] | None = None

    def put(self, draft: tuple[str, int, int]) -> None:
        """Replace the pending draft (called on the event loop)."""
        self._latest = draft
        self.changed.set()

    def take(self) -> tuple[str, int, int] | None:
        """The pending draft, if any, clearing it."""
        draft, self._latest = self._latest, None
        self.changed.clear()
        return draft


class Unauthorized(Exception):
    """The request lacks the configured bearer token."""


class EngineState:
    """The resident model behind the server: loading, ready or failed."""

    def __init__(
        self,
        spec: ModelSpec,
        max_batch: int,
        max_queue: int,
        max_steps: int = 256,
        pad_canvases: bool | None = None,
        static_cache: bool = True,
    ) -> None:
        self.spec = spec
        self.pad_canvases = pad_canvases
        self.static_cache = static_cache
        self.max_steps = max_steps
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = EngineMetrics()
        self.status = "loading"
        self.error: str | None = None
        self.scheduler: BatchScheduler | None = None
        self.ready = threading.Event()

    def load(self, on_progress: Callable[[str], None] | None = None) -> None:
        """Load, warm up and start batching (blocking; run it on a thread)."""
        say = on_progress or (lambda message: None)
        try:
            say(f"loading {self.spec.path}")
            loaded = load_model(
                self.spec.path, self.spec.device, self.spec.dtype, self.spec.quantize, canvases=self.max_batch
            )
            make_resident(loaded.model, loaded.path)  # a shard rewritten later cannot crash the server
            engine = Engine(loaded, reuse_prompt_cache=self.spec.reuse_prompt_cache)
            scheduler = BatchScheduler(
                engine, self.max_batch, self.max_queue, on_step=self.metrics.on_step, pad_canvases=self.pad_canvases,
                static_cache=self.static_cache,
            )
            say(f"warming up on {loaded.device}")
            for request in warmup_requests():
                scheduler.infill(request)
            self.scheduler, self.status = scheduler, "ok"
            say("ready")
        except ModelLoadError as exc:
            self.status, self.error = "failed", str(exc)
            log.error("model load failed: %s", exc)
        except Exception as exc:  # the server stays up and says why
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
        finally:
            self.ready.set()

    def close(self) -> None:
        """Stop the batching thread."""
        if self.scheduler is not None:
            self.scheduler.close()


def _error(status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


def _completion(
    completion_id: str, model: str, text: str, finish: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
    if extra:
        body.update(extra)
    return body


def _final(completion_id: str, model: str, body: CompletionRequest, done: ScheduledResult) -> dict[str, Any]:
    result = done.result
    text, stopped = cut_at_stops(result.text, body.stops())
    usage = {
        "prompt_tokens": result.encode.prompt_tokens,
        "completion_tokens": result.middle_tokens,
        "total_tokens": result.encode.prompt_tokens + result.middle_tokens,
    }
    finish = "stop" if stopped or result.ended else "length"
    return _completion(
        completion_id, model, text, finish, {"usage": usage, "dg": result_stats(result, done.queue_ms, done.batch_size)}
    )


#: Paths answered without a token: liveness probes cannot carry secrets.
PUBLIC_PATHS = frozenset({"/health"})


def create_app(
    state: EngineState,
    token: str | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    public_metrics: bool = False,
    shutdown_grace_s: float = 0.0,
) -> FastAPI:
    """The FastAPI application serving ``state``.

    With a ``token``, every route but ``/health`` needs it (``/metrics`` too unless ``public_metrics``);
    request bodies over ``max_body_bytes`` get ``413``; on shutdown, streams get ``shutdown_grace_s``
    to finish before they are cancelled.
    """
    metrics = state.metrics
    public = PUBLIC_PATHS | ({"/metrics"} if public_metrics else set())

    async def require_token(request: Request) -> None:
        if request.url.path in public:
            return
        if token is not None and not authorized(request.headers.get("authorization"), token):
            if request.url.path == "/v1/completions":
                metrics.requests.labels(status="unauthorized").inc()
            raise Unauthorized()

    app = FastAPI(
        title="dg-lsp engine",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_token)],
    )

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes,
                       on_refused=lambda: metrics.requests.labels(status="too_large").inc())

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        metrics.requests.labels(status="too_large").inc()
        return _error(413, str(exc.detail), "invalid_request_error", "request_too_large", {"Connection": "close"})

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return _error(401, "missing or wrong bearer token", "authentication_error", "invalid_api_key",
                      {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.requests.labels(status="invalid").inc()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()) if p != 'body')}: {error.get('msg')}" for error in exc.errors()
        )
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": state.status, "model": state.spec.path.name, "error": state.error, "version": __version__}
        return JSONResponse(body, status_code=200 if state.status == "ok" else 503)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        scheduler = state.scheduler
        metrics.queue_depth.set(scheduler.queue_depth if scheduler else 0)
        metrics.active.set(scheduler.active if scheduler else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        scheduler = state.scheduler
        if scheduler is None:
            return _error(503, f"the model is {state.status}: {state.error or 'try again shortly'}", "service_unavailable")
        facts = {**scheduler.engine.describe(), "maxBatch": scheduler.max_batch, "maxQueue": scheduler.max_queue,
                 "padCanvases": scheduler.pad_canvases,
                 "batchCache": "static" if scheduler.static_cache else "restack", "fixedShapes": scheduler.fixed_shapes,
                 "maxSteps": state.max_steps, "tokenizer": TOKENIZER_PATH}
        entry = {"id": scheduler.engine.loaded.name, "object": "model", "created": 0, "owned_by": "dg-lsp", "dg": facts}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get(TOKENIZER_PATH)
    async def tokenizer() -> Response:
        scheduler = state.scheduler
        if scheduler is None:
            return _error(503, f"the model is {state.status}", "service_unavailable")
        return PlainTextResponse(scheduler.engine.loaded.tokenizer.to_str(), media_type="application/json")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        scheduler = state.scheduler
        if scheduler is None:
            metrics.requests.labels(status="unavailable").inc()
            return _error(503, f"the model is {state.status}: {state.error or 'try again shortly'}",
                          "service_unavailable", headers={"Retry-After": "2"})
        infill = body.infill_request(scheduler.engine.sampler_defaults)  # unset sampler fields: the model's own
        if infill.settings.max_steps > state.max_steps:
            metrics.requests.labels(status="invalid").inc()
            return _error(400, f"dg.sampler.max_steps {infill.settings.max_steps} exceeds this server's limit "
                          f"of {state.max_steps}", "invalid_request_error")
        arrived = time.perf_counter()
        loop = asyncio.get_running_loop()
        drafts = LatestDraft()

        def on_draft(text: str, step: int, max_steps: int, final: bool) -> None:
            if not final:
                loop.call_soon_threadsafe(drafts.put, (text, step, max_steps))

        wants_drafts = body.stream and body.dg.drafts
        try:
            # Tokenising a long prompt takes a while: not on the event loop.
            job = await asyncio.to_thread(scheduler.submit, infill, on_draft if wants_drafts else None)
        except QueueFull as exc:
            metrics.requests.labels(status="rejected").inc()
            return _error(429, f"the engine is busy: {exc}", "rate_limit_error", "queue_full", {"Retry-After": "1"})
        except ValueError as exc:
            metrics.requests.labels(status="invalid").inc()
            return _error(400, str(exc), "invalid_request_error")
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        model = scheduler.engine.loaded.name
        outcome = asyncio.wrap_future(job.future)

        def record(done: ScheduledResult) -> None:
            metrics.requests.labels(status="ok").inc()
            metrics.latency.observe(time.perf_counter() - arrived)
            metrics.tokens_per_forward.observe(done.result.tokens_per_forward)

        def failed(exc: BaseException) -> tuple[int, dict[str, Any]]:
            if isinstance(exc, Cancelled):
                metrics.requests.labels(status="cancelled").inc()
                return 499, error_body("the request was cancelled", "cancelled")
            metrics.requests.labels(status="error").inc()
            log.error("completion failed: %s: %s", type(exc).__name__, exc)
            return 500, error_body(f"the engine failed: {type(exc).__name__}: {exc}", "server_error")

        if not body.stream:
            return await _answer(request, job, outcome, lambda done: _final(completion_id, model, body, done), record, failed)
        return EventSourceResponse(
            _stream(job, outcome, drafts, lambda done: _final(completion_id, model, body, done), record, failed,
                    lambda text, step, n: _completion(completion_id, model, "", None,
                                                      {"dg": {"draft": text, "step": step, "max_steps": n}})),
            ping=15,
            shutdown_grace_period=shutdown_grace_s,
        )

    return app


async def _answer(
    request: Request,
    job: Job,
    outcome: asyncio.Future[ScheduledResult],
    final: Callable[[ScheduledResult], dict[str, Any]],
    record: Callable[[ScheduledResult], None],
    failed: Callable[[BaseException], tuple[int, dict[str, Any]]],
) -> Response:
    """Wait for a non-streamed answer; a client that disconnects cancels its request."""
    try:
        while True:
            done, _ = await asyncio.wait({outcome}, timeout=0.05)
            if done:
                break
            if await request.is_disconnected():
                job.cancel()
                await asyncio.wait({outcome})
                break
    except asyncio.CancelledError:
        job.cancel()
        raise
    exc = outcome.exception()
    if exc is not None:
        status, error = failed(exc)
        return JSONResponse(error, status_code=status)
    answer = outcome.result()
    record(answer)
    return JSONResponse(final(answer))


async def _stream(
    job: Job,
    outcome: asyncio.Future[ScheduledResult],
    drafts: LatestDraft,
    final: Callable[[ScheduledResult], dict[str, Any]],
    record: Callable[[ScheduledResult], None],
    failed: Callable[[BaseException], tuple[int, dict[str, Any]]],
    draft_event: Callable[[str, int, int], dict[str, Any]],
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events: drafts while denoising, then the answer, then ``[DONE]``.

    A client that goes away cancels the generator, which cancels the request.
    """
    try:
        while not outcome.done():
            waiter = asyncio.ensure_future(drafts.changed.wait())
            waiting: set[asyncio.Future[Any]] = {waiter, outcome}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            latest = drafts.take()
            if latest is not None and not outcome.done():
                yield {"data": json.dumps(draft_event(*latest))}
        exc = outcome.exception()
        if exc is not None:
            _, error = failed(exc)
            yield {"data": json.dumps(error)}
        else:
            answer = outcome.result()
            record(answer)
            yield {"data": json.dumps(final(answer))}
        yield {"data": "[DONE]"}
    finally:
        if not outcome.done():  # the client went away mid-stream
            job.cancel()

            def count(future: asyncio.Future[ScheduledResult]) -> None:
                if not future.cancelled() and future.exception() is not None:
                    failed(future.exception())  # type: ignore[arg-type]

            outcome.add_done_callback(count)

"""The remote backend: fill holes through an engine server over HTTP (see ``docs/engine-server.md``).

Requests run as tasks on an event loop that the backend owns (one pooled
``httpx.AsyncClient``), while the calling worker thread delivers drafts and polls
``cancelled()``; cancelling closes the connection, which cancels the denoising on the server.
Dialect ``dg`` streams drafts (server-sent events); ``openai`` sends standard fields only
(vLLM or any OpenAI-compatible server) and gets one answer; ``chat`` asks an instruction-tuned
model through ``/v1/chat/completions`` with the chat format's instruction (its answer is cleaned
like a local chat answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import httpx
from httpx_sse import aconnect_sse
from tokenizers import Tokenizer

from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.engine.engine import DraftCallback, InfillRequest, InfillResult
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine.remote_protocol import (
    RemoteEngineError,
    RemoteSettings,
    RetryableError,
    backoff_delays,
    connection_reason,
    endpoint,
    estimate_tokens,
    model_facts,
    read_token,
    request_body,
    result_from_answer,
    sampler_from_facts,
    server_message,
    status_error,
    unreadable,
)

__all__ = ["RemoteBackend", "RemoteEngineError", "RemoteSettings"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the calling thread looks at ``cancelled()`` while waiting.
POLL_S = 0.02
TOKENIZER_PATH = "/v1/dg/tokenizer.json"
#: ``dg.info`` keys taken from the server's model facts.
FACT_KEYS = (
    "modelPath", "device", "dtype", "parameters", "canvasLength", "trainedContextTokens", "canvasNoise", "maxBatch", "maxQueue",
    "promptFormat", "eosIds", "sampler",
)


class _Draft(NamedTuple):
    text: str
    step: int
    max_steps: int


class _Exchange:
    """One request's drafts on their way to the calling thread."""

    def __init__(self, inbox: queue.SimpleQueue[_Draft | None] | None) -> None:
        self._inbox = inbox
        self.delivered = False
        self.max_steps = 0

    def draft(self, text: str, step: int, max_steps: int) -> None:
        if self._inbox is None:
            return
        self.delivered = True  # from now on a retry would replay drafts: never retry
        self.max_steps = max(self.max_steps, max_steps)
        self._inbox.put(_Draft(text, step, max_steps))


class RemoteBackend:
    """An :class:`~dg_lsp.engine.backend.InfillBackend` answered by a remote engine server."""

    def __init__(
        self,
        settings: RemoteSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Read the token (a missing file is a :class:`RemoteEngineError`) and start the client loop.

        ``transport`` and ``sleep`` (the wait between retries) are for tests.
        """
        self.settings = settings
        self._sleep = sleep
        self.url = settings.base_url
        self._token = read_token(settings.token_file)
        self._facts: dict[str, Any] = {}
        self._model_id: str | None = None
        self._tokenizer: Tokenizer | None = None
        self.connected = False
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dg-remote", daemon=True)
        self._thread.start()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # -- InfillBackend ---------------------------------------------------------------------
    @property
    def context_tokens(self) -> int | None:
        """The model's trained context budget, as the server reports it (None: unknown)."""
        value = self._facts.get("trainedContextTokens")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def prompt_format(self) -> str:
        """``chat`` for the chat dialect or a dg server whose model is prompted in chat; else ``fim``."""
        if self.settings.dialect == "chat":
            return "chat"
        return "chat" if self._facts.get("promptFormat") == "chat" else "fim"

    @property
    def sampler_defaults(self) -> SamplerSettings:
        """The server model's sampler as it reports it (dialect dg), else dg-lsp's defaults."""
        return sampler_from_facts(self._facts.get("sampler"))

    def count_tokens(self, text: str) -> int:
        """Exact with the server's tokenizer (dialect dg), else an estimate."""
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return estimate_tokens(text)

    def describe(self) -> dict[str, Any]:
        """Model facts last fetched from the server (no network: ``dg.info`` must answer at once)."""
        facts = self._facts
        return {"model": facts.get("model") or self._model_id, **{key: facts.get(key) for key in FACT_KEYS}}

    @property
    def prefetches(self) -> bool:
        """No: see :meth:`prefetch`."""
        return False

    def prefetch(self, request: InfillRequest) -> bool:
        """Nothing to do ahead of time: the engine server encodes each request's prompt itself."""
        return False

    def infill(
        self,
        request: InfillRequest,
        on_draft: DraftCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> InfillResult:
        """Fill one hole remotely; raises :class:`Cancelled` within ``POLL_S`` of ``cancelled()`` turning true."""
        if not self.connected:
            self._connect(cancelled)
        inbox: queue.SimpleQueue[_Draft | None] = queue.SimpleQueue()
        exchange = _Exchange(inbox if on_draft is not None else None)
        body = request_body(request, self.settings, self.settings.model or self._model_id)
        if "dg" in body:
            body["dg"]["drafts"] = on_draft is not None
        result = self._call(self._complete(body, exchange), inbox, on_draft, cancelled)
        if on_draft is not None:
            on_draft(result.text, result.steps, max(exchange.max_steps or request.settings.max_steps, result.steps), True)
        return result

    # -- connection --------------------------------------------------------------------------
    def connect(self) -> dict[str, Any]:
        """Fetch the model facts (and, for dialect dg, the tokenizer); raises :class:`RemoteEngineError`."""
        self._connect(None)
        return self.describe()

    def _connect(self, cancelled: Callable[[], bool] | None) -> None:
        inbox: queue.SimpleQueue[_Draft | None] = queue.SimpleQueue()
        listing, tokenizer = self._call(self._fetch_facts(), inbox, None, cancelled)
        model_id, facts = model_facts(listing)
        if tokenizer is not None:
            try:
                self._tokenizer = Tokenizer.from_str(tokenizer)
            except Exception as exc:  # the tokenizers library raises plain Exceptions
                raise unreadable(self.url, f"its tokenizer: {exc}") from exc
        self._model_id, self._facts, self.connected = model_id, facts, True

    async def _fetch_facts(self) -> tuple[dict[str, Any], str | None]:
        async def listing() -> dict[str, Any]:
            try:
                answer = await self._get("/v1/models")
            except RemoteEngineError as exc:
                if exc.status == 404 and self.settings.dialect in ("openai", "chat"):
                    return {}  # a server without a model list can still complete
                raise
            return _json_object(self.url, answer)

        models = await self._deadline(self._retrying(listing))
        if self.settings.dialect != "dg":
            return models, None
        path = model_facts(models)[1].get("tokenizer")
        tokenizer = await self._deadline(
            self._retrying(lambda: self._get(path if isinstance(path, str) else TOKENIZER_PATH))
        )
        return models, tokenizer.text

    # -- one request -------------------------------------------------------------------------
    async def _complete(self, body: dict[str, Any], exchange: _Exchange) -> InfillResult:
        if body.get("stream"):
            return await self._deadline(self._retrying(lambda: self._stream_once(body, exchange), exchange))
        return await self._deadline(self._retrying(lambda: self._post_once(body)))

    async def _post_once(self, body: dict[str, Any]) -> InfillResult:
        try:
            response = await self._client.post(endpoint(self.settings), json=body)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        self._check(response, response.text)
        return self._read_answer(response)

    def _read_answer(self, response: httpx.Response) -> InfillResult:
        try:
            return result_from_answer(_json_object(self.url, response))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise unreadable(self.url, exc) from exc

    async def _stream_once(self, body: dict[str, Any], exchange: _Exchange) -> InfillResult:
        final: InfillResult | None = None
        try:
            async with aconnect_sse(self._client, "POST", "/v1/completions", json=body) as source:
                response = source.response
                if response.status_code >= 400:
                    self._check(response, (await response.aread()).decode("utf-8", "replace"))
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    await response.aread()  # a server (or proxy) that ignored "stream": one plain answer
                    return self._read_answer(response)
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    final = self._on_event(event.data, exchange) or final
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if final is None:
            raise RemoteEngineError(f"the engine server at {self.url} ended the stream without an answer")
        return final

    def _on_event(self, data: str, exchange: _Exchange) -> InfillResult | None:
        """A draft goes to the caller; the final answer is returned; an error event is raised."""
        try:
            event = json.loads(data)
            if not isinstance(event, dict):
                raise TypeError(f"an event is {type(event).__name__}")
            if "error" in event:
                raise RemoteEngineError(f"the engine server at {self.url} failed: {server_message(data)}")
            dg = event.get("dg")
            if isinstance(dg, dict) and "draft" in dg:
                exchange.draft(str(dg["draft"]), int(dg.get("step", 0)), int(dg.get("max_steps", 0)))
                return None
            return result_from_answer(event)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise unreadable(self.url, exc) from exc

    async def _get(self, path: str) -> httpx.Response:
        try:
            response = await self._client.get(path)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        self._check(response, response.text)
        return response

    def _check(self, response: httpx.Response, text: str) -> None:
        if response.status_code >= 400:
            raise status_error(
                self.url, response.status_code, text, self._token is not None, response.headers.get("retry-after")
            )

    def _transport_error(self, exc: httpx.TransportError) -> RemoteEngineError:
        url = self.url
        if isinstance(exc, httpx.ConnectTimeout):
            reason = f"no connection within {self.settings.connect_timeout_s:g} s"
            return RetryableError(f"cannot reach the engine server at {url}: {reason}", unreachable=True)
        if isinstance(exc, httpx.ConnectError):
            return RetryableError(f"cannot reach the engine server at {url}: {connection_reason(exc)}", unreachable=True)
        if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
            return RetryableError(
                f"lost the connection to the engine server at {url}: {connection_reason(exc)}", unreachable=True
            )
        if isinstance(exc, httpx.TimeoutException):
            return RemoteEngineError(f"the engine server at {url} did not answer within {self.settings.timeout_s:g} s")
        return RemoteEngineError(f"cannot reach the engine server at {url}: {connection_reason(exc)}", unreachable=True)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], exchange: _Exchange | None = None) -> T:
        """``attempt()`` again after 0.2 s, 0.4 s, … on a :class:`RetryableError`, unless a draft went out."""
        delays = backoff_delays(self.settings.retries)
        for tried in itertools.count(1):
            try:
                return await attempt()
            except RetryableError as exc:
                if tried > len(delays) or (exchange is not None and exchange.delivered):
                    attempts = f"{tried} attempt{'s' if tried > 1 else ''}"
                    raise RemoteEngineError(f"{exc} (after {attempts})", exc.status, exc.unreachable) from exc
                wait = exc.retry_after if exc.retry_after is not None else delays[tried - 1]
                log.info("%s; retrying in %.1f s", exc, wait)
                await self._sleep(wait)
        raise AssertionError("unreachable")

    async def _deadline(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await work
        except TimeoutError as exc:
            raise RemoteEngineError(
                f"the engine server at {self.url} did not answer within {self.settings.timeout_s:g} s"
            ) from exc

    # -- threads -----------------------------------------------------------------------------
    def _call(
        self,
        work: Coroutine[Any, Any, T],
        inbox: queue.SimpleQueue[_Draft | None],
        on_draft: DraftCallback | None,
        cancelled: Callable[[], bool] | None,
    ) -> T:
        """Run ``work`` on the client loop; deliver its drafts here and cancel it when ``cancelled()``."""
        if self._closed:
            work.close()
            raise RemoteEngineError(f"the connection to the engine server at {self.url} was closed")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        future.add_done_callback(lambda _: inbox.put(None))
        try:
            while True:
                if cancelled is not None and cancelled():
                    raise Cancelled()
                try:
                    item = inbox.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if item is None:
                    return future.result()
                if on_draft is not None:
                    on_draft(item.text, item.step, item.max_steps, False)
        finally:
            future.cancel()  # no-op when done; otherwise closes the connection

    def close(self) -> None:
        """Cancel what is running, close the connections and stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        except Exception:  # closing must never fail the caller
            log.warning("closing the remote backend did not finish cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _json_object(url: str, response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise unreadable(url, "not JSON") from exc
    if not isinstance(data, dict):
        raise unreadable(url, f"a JSON {type(data).__name__}, not an object")
    return data

"""Request-body size limit for the engine server: ``413`` before the body is read into memory."""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dg_lsp.engine.wire import error_body

#: Default ``--max-body-bytes``: prompts are cut to the context budget by the client; 8 MiB is generous.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class BodyTooLarge(HTTPException):
    """The body grew past the limit while it was being read (chunked, or a lying Content-Length).

    An ``HTTPException`` so that FastAPI's body parsing passes it on instead of answering 400.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds this server's limit of {max_bytes} bytes (--max-body-bytes)")


class BodyLimit:
    """ASGI middleware: requests whose body exceeds ``max_bytes`` get ``413`` (OpenAI-style error body).

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
    body is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    def _response(self, size: str) -> JSONResponse:
        if self.on_refused is not None:
            self.on_refused()
        message = f"the request body ({size}) exceeds this server's limit of {self.max_bytes} bytes (--max-body-bytes)"
        return JSONResponse(error_body(message, "invalid_request_error", "request_too_large"), status_code=413,
                            headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._response(f"{int(declared)} bytes")(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:  # nothing sensible left to say on a response already under way
                raise
            await self._response(f"over {self.max_bytes} bytes")(scope, receive, send)

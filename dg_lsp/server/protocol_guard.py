"""Every JSON-RPC request gets an answer: strict decoding and errors for malformed messages.

pygls decodes each message inside ``json.loads(object_hook=...)``; a request whose params do
not match the LSP types raises there, is logged, and is never answered. :class:`GuardedProtocol`
decodes the whole message itself instead, so that it can answer:

- params that do not match the method's LSP type: ``-32602`` (invalid params) naming the field;
- a message that is not a JSON-RPC 2.0 request (wrong ``jsonrpc``, ``method`` not a string,
  neither a request nor a response) but carries an id: ``-32600`` (invalid request);
- a notification method sent with an id, and a request after ``shutdown``: ``-32600``;
- unknown methods: ``-32601`` (pygls already answers these).

Notifications and frames without a usable id cannot be answered: they are logged and skipped.
:func:`strict_converter` makes decoding strict: ``"3"`` is not an integer and ``123`` is not a string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import attrs
import cattrs
from cattrs.v import format_exception, transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.protocol import LanguageServerProtocol, default_converter
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage

log = logging.getLogger(__name__)

JSONRPC_VERSION = "2.0"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _strict_int(value: Any, kind: type[Any]) -> Any:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {_json_type(value)} {value!r:.40}")
    return value if kind is int else kind(value)  # IntEnum subclasses land here too


def _strict_str(value: Any, kind: type[Any]) -> Any:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)} {value!r:.40}")
    return value if kind is str else kind(value)


def _strict_bool(value: Any, kind: type[Any]) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected a boolean, got {_json_type(value)} {value!r:.40}")
    return value


def _strict_float(value: Any, kind: type[Any]) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {_json_type(value)} {value!r:.40}")
    return float(value)


def strict_converter() -> cattrs.Converter:
    """pygls's converter, but JSON types are not coerced (a string is not an integer)."""
    converter: cattrs.Converter = default_converter()  # type: ignore[no-untyped-call]
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(float, _strict_float)
    return converter


def _camel(path: str) -> str:
    """``$.params.text_document.uri`` → ``params.textDocument.uri`` (the names the client sent)."""
    path = path.removeprefix("$.").removeprefix("$")
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)


def _describe(exc: BaseException, kind: type[Any] | None) -> str:
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return format_exception(exc, kind)


def explain(exc: BaseException) -> str:
    """One line naming each field that failed to decode and why."""
    try:
        problems = transform_error(exc, format_exception=_describe)
    except Exception:  # never let the explanation fail the answer
        problems = [str(exc)]
    parts = []
    for problem in problems:
        message, _, where = problem.rpartition(" @ ")
        parts.append(f"{_camel(where)}: {message}" if message else problem)
    return "; ".join(parts) or "malformed message"


def _usable_id(value: Any) -> bool:
    """JSON-RPC ids are strings or numbers (never booleans, objects or null)."""
    return type(value) in (int, str, float)


class GuardedProtocol(LanguageServerProtocol):
    """pygls's protocol, decoding each message at the top level so that every request is answered.

    It also stops a leak: pygls files the future of every notification handled by a generator
    (``didChange``, ``didOpen``…) and of every step of such a handler in its table of requests
    in flight under a fresh uuid, and only answered requests are ever taken out, so a typing
    session grew by about 2 KB per keystroke.
    """

    def _execute_handler(
        self,
        msg_id: Any,
        handler: Any,
        callback: Callable[[Future[Any]], None],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        def done(future: Future[Any]) -> None:
            try:
                callback(future)
            finally:
                if self._request_futures.get(msg_id) is future:
                    del self._request_futures[msg_id]

        super()._execute_handler(msg_id, handler, done, args, kwargs)

    def structure_message(self, data: dict[str, Any]) -> Any:
        """Called by pygls for every JSON object in a frame: keep plain data, decode in :meth:`handle_message`."""
        return data

    def handle_message(self, message: Any) -> None:
        """Decode ``message`` (plain JSON), answer what is malformed, hand the rest to pygls."""
        if not isinstance(message, dict):
            log.warning("skipping a frame that is not a JSON-RPC object: %.200r", message)
            return
        has_id = "id" in message
        msg_id = message.get("id")
        if has_id and "method" in message:
            self._handle_raw_request(message, msg_id)
        elif "method" in message:
            self._handle_raw_notification(message)
        elif has_id and ("result" in message or "error" in message):
            self._handle_raw_response(message, msg_id)
        else:
            self._reject(msg_id, has_id, "a JSON-RPC message needs a method (request, notification) or a result or error (response)")

    # -- requests --------------------------------------------------------------------------
    def _handle_raw_request(self, message: dict[str, Any], msg_id: Any) -> None:
        method = message["method"]
        if message.get("jsonrpc") != JSONRPC_VERSION:
            self._reject(msg_id, True, f'"jsonrpc" must be "{JSONRPC_VERSION}", got {message.get("jsonrpc")!r:.40}')
            return
        if not isinstance(method, str):
            self._reject(msg_id, True, f'"method" must be a string, got {_json_type(method)}')
            return
        if not _usable_id(msg_id):
            log.warning("skipping a %s request whose id is %s (ids are strings or numbers)", method, _json_type(msg_id))
            return
        if type(msg_id) is float:  # a valid JSON-RPC id that pygls cannot decode: answer it as is
            self._reject(msg_id, True, "use an integer or a string as the request id")
            return
        if self._shutdown and method != types.EXIT:
            self._reject(msg_id, True, f"{method}: the server is shutting down (shutdown was requested)")
            return
        request_type = self.get_message_type(method)
        if request_type is not None and "id" not in attrs.fields_dict(request_type):
            self._reject(msg_id, True, f"{method} is a notification: send it without an id")
            return
        try:
            if request_type is None:  # unknown method: pygls answers -32601; params may be omitted
                structured = self._converter.structure({"params": None, **message}, JsonRPCRequestMessage)
            else:
                structured = self._converter.structure(message, request_type)
        except Exception as exc:
            error = JsonRpcInvalidParams(f"invalid params for {method}: {explain(exc)}")
            log.warning("request %r: %s", msg_id, error.message)
            self._send_response(msg_id, None, error.to_response_error())
            return
        super().handle_message(structured)

    def _reject(self, msg_id: Any, has_id: bool, reason: str) -> None:
        """Answer an invalid request (-32600) when it has an id to answer; else log it."""
        if not has_id or not _usable_id(msg_id):
            log.warning("skipping an invalid message: %s", reason)
            return
        log.warning("invalid request %r: %s", msg_id, reason)
        self._send_response(msg_id, None, JsonRpcInvalidRequest(f"invalid request: {reason}").to_response_error())

    # -- notifications and responses -----------------------------------------------------
    def _handle_raw_notification(self, message: dict[str, Any]) -> None:
        method = message["method"]
        if message.get("jsonrpc") != JSONRPC_VERSION or not isinstance(method, str):
            log.warning("skipping a malformed notification: %.200r", message)
            return
        kind = self.get_message_type(method)
        try:
            if kind is None:
                structured = self._converter.structure({"params": None, **message}, JsonRPCNotification)
            else:
                structured = self._converter.structure(message, kind)
        except Exception as exc:
            log.warning("skipping notification %s with invalid params: %s", method, explain(exc))
            return
        super().handle_message(structured)

    def _handle_raw_response(self, message: dict[str, Any], msg_id: Any) -> None:
        if not _usable_id(msg_id) or type(msg_id) is float:
            log.warning("skipping a response with an unusable id: %.200r", message)
            return
        try:
            if "error" in message:
                structured: Any = self._converter.structure(message, types.ResponseErrorMessage)
            else:
                kind = self._result_types.pop(msg_id, None) or JsonRPCResponseMessage
                structured = self._converter.structure(message, kind)
        except Exception as exc:
            # The request we sent must not wait forever for an answer we cannot read.
            reason = f"malformed response from the client: {explain(exc)}"
            log.warning("response %r: %s", msg_id, reason)
            future = self._request_futures.pop(msg_id, None)
            if future is not None and not future.done():
                future.set_exception(JsonRpcException(message=reason))
            return
        super().handle_message(structured)

"""The remote backend's client side of the wire: settings, request bodies, answers and errors.

Everything here is plain data handling (no sockets), so it is unit-tested directly;
:mod:`dg_lsp.engine.remote` does the HTTP.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dg_lsp.canvas import canvas_length_for
from dg_lsp.engine.engine import InfillRequest, InfillResult
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine_server import auth
from dg_lsp.engine.wire import completion_body, result_from_response
from dg_lsp.prompting.chat import HoleText, instruction

Dialect = Literal["dg", "openai", "chat"]

#: First retry delay; each further retry waits twice as long.
BACKOFF_BASE_S = 0.2
#: Longest wait between two attempts (also caps a server's ``Retry-After``).
BACKOFF_CAP_S = 5.0
#: Statuses worth another attempt: busy, or not ready yet (also behind a proxy).
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RemoteSettings:
    """Where the engine server is and how to talk to it."""

    url: str
    token_file: str | None = None
    dialect: Dialect = "dg"
    #: Model name sent in requests (None: the first one the server lists).
    model: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    retries: int = 2
    #: openai dialect: put ``template.format(prefix, suffix)`` in ``prompt`` and send no ``suffix``.
    fim_template: str | None = None

    @property
    def base_url(self) -> str:
        """The URL without a trailing ``/`` or ``/v1`` (OpenAI clients are often given ``…/v1``)."""
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


class RemoteEngineError(Exception):
    """The engine server could not fill the hole; the message says why and what to do."""

    def __init__(self, message: str, status: int | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        #: No answer at all (connection refused, timed out, broken): the server may come up later.
        self.unreachable = unreachable


class RetryableError(RemoteEngineError):
    """A failure worth another attempt (connection errors, 429, 503), after ``retry_after`` if given."""

    def __init__(
        self, message: str, status: int | None = None, unreachable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status, unreachable)
        self.retry_after = retry_after


def read_token(path: str | None) -> str | None:
    """The bearer token in ``path`` (whitespace stripped); None without a path."""
    if path is None:
        return None
    try:
        return auth.read_token(Path(path), "engine.tokenFile")
    except auth.TokenError as exc:
        raise RemoteEngineError(str(exc)) from exc


def backoff_delays(retries: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> list[float]:
    """Waits before each retry: ``base``, ``2 base``, ``4 base``… each at most ``cap``."""
    return [min(base * 2**i, cap) for i in range(max(retries, 0))]


def retry_after_seconds(header: str | None, cap: float = BACKOFF_CAP_S) -> float | None:
    """A ``Retry-After`` header in seconds, capped; None when absent or not a number (HTTP dates are ignored)."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


def estimate_tokens(text: str) -> int:
    """Token count without a tokenizer: about three characters per token for code."""
    return math.ceil(len(text) / 3)


_PLACEHOLDER = re.compile(r"\{(prefix|suffix)\}")


def fill_template(template: str, prefix: str, suffix: str) -> str:
    """``template`` with ``{prefix}`` and ``{suffix}`` replaced in one pass (braces in code stay as they are)."""
    values = {"prefix": prefix, "suffix": suffix}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def openai_max_tokens(request: InfillRequest) -> int:
    """``max_tokens`` for a server that does not know the hole kind: the canvas the local engine would use."""
    needed = 0
    if request.seed_text is not None:
        seed = estimate_tokens(request.seed_text)
        needed = seed + max(8, seed // 4)
    return canvas_length_for(request.kind, request.max_canvas, needed)


#: The chat dialect's endpoint (OpenAI chat completions, as vLLM serves it).
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


def endpoint(settings: RemoteSettings) -> str:
    """The path a dialect posts to."""
    return CHAT_PATH if settings.dialect == "chat" else COMPLETIONS_PATH


def chat_body(request: InfillRequest, model: str | None) -> dict[str, Any]:
    """A ``/v1/chat/completions`` body: the chat format's instruction as one user turn, thinking off.

    The server applies the model's own chat template; ``chat_template_kwargs`` (vLLM) switches
    thinking off there, like the local chat format does.
    """
    hole = HoleText(
        prefix=request.prefix,
        suffix=request.suffix,
        language=request.language,
        kind=request.kind,
        file_name=request.file_name,
        selection=request.seed_text,
    )
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": instruction(hole)}],
        "max_tokens": openai_max_tokens(request),
        "temperature": 0.0 if request.settings.greedy else request.settings.t_max,
        "seed": request.seed,
        "stream": False,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    if model:
        body["model"] = model
    return body


def request_body(request: InfillRequest, settings: RemoteSettings, model: str | None) -> dict[str, Any]:
    """The request body: dg (streamed, with the ``dg`` extension), openai (plain FIM fields) or chat."""
    if settings.dialect == "chat":
        return chat_body(request, model)
    if settings.dialect == "dg":
        return completion_body(request, model, stream=True, dialect="dg")
    body = completion_body(request, model, stream=False, dialect="openai")
    body["max_tokens"] = openai_max_tokens(request)
    if settings.fim_template is not None:
        body["prompt"] = fill_template(settings.fim_template, request.prefix, request.suffix)
        del body["suffix"]
    return body


def server_message(text: str) -> str:
    """The human part of an error body: OpenAI's ``error.message``, else the text itself (shortened)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    text = " ".join(text.split())
    return text[:200] + ("…" if len(text) > 200 else "")


def status_error(
    url: str, status: int, body: str, has_token: bool, retry_after: str | None = None
) -> RemoteEngineError:
    """The error for an HTTP error status: retryable for 429/5xx-not-ready, a clear message for the rest."""
    message = server_message(body)
    if status == 401:
        if has_token:
            return RemoteEngineError(f"the engine server at {url} refused the token (401): check engine.tokenFile", 401)
        return RemoteEngineError(f"the engine server at {url} wants a token (401): set engine.tokenFile", 401)
    if status == 429:
        return RetryableError(
            f"the engine server at {url} is busy (429)", 429, retry_after=retry_after_seconds(retry_after)
        )
    if status in RETRY_STATUSES:
        detail = f": {message}" if message else ""
        return RetryableError(
            f"the engine server at {url} is not ready ({status}){detail}", status,
            retry_after=retry_after_seconds(retry_after),
        )
    if status == 404:
        return RemoteEngineError(f"the engine server at {url} has no such endpoint (404): check engine.url", 404)
    if 400 <= status < 500:
        return RemoteEngineError(f"the engine server at {url} rejected the request ({status}): {message}", status)
    return RemoteEngineError(f"the engine server at {url} failed ({status}): {message}", status)


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: ``[Errno 111] Connection refused`` → ``connection refused``."""
    cause: BaseException | None = exc
    for _ in range(16):  # httpx wraps the socket error (sometimes as "All connection attempts failed")
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip())
    if not text:
        return type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text[0].lower() + text[1:]


def unreadable(url: str, what: object) -> RemoteEngineError:
    """An answer dg-lsp cannot interpret (wrong server, or an incompatible version)."""
    return RemoteEngineError(f"the engine server at {url} sent an answer dg-lsp cannot read: {what}")


def completion_text(answer: dict[str, Any]) -> str:
    """``choices[0].text`` of a completions answer, or ``choices[0].message.content`` of a chat answer.

    KeyError/TypeError/IndexError if it has neither.
    """
    choice = answer["choices"][0]
    if "message" in choice and "text" not in choice:
        text = choice["message"]["content"]
        if text is None:  # a chat answer that only reasoned, or was cut before any content
            return ""
        if not isinstance(text, str):
            raise TypeError(f"choices[0].message.content is {type(text).__name__}")
        return text
    text = choice["text"]
    if not isinstance(text, str):
        raise TypeError(f"choices[0].text is {type(text).__name__}")
    return text


def result_from_answer(answer: dict[str, Any]) -> InfillResult:
    """An :class:`InfillResult` from a final answer; plain OpenAI answers get their numbers from ``usage``."""
    text = completion_text(answer)
    dg = answer.get("dg")
    if isinstance(dg, dict):
        return result_from_response(text, dg)
    raw_usage = answer.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    finish = answer["choices"][0].get("finish_reason")
    stats = {
        "ended": finish != "length",
        "prompt_tokens": usage.get("prompt_tokens") or 0,
        "middle_tokens": usage.get("completion_tokens") or 0,
    }
    return result_from_response(text, stats)


_SAMPLER_KEYS = {
    "maxSteps": ("max_steps", int),
    "entropyBound": ("entropy_bound", float),
    "tMin": ("t_min", float),
    "tMax": ("t_max", float),
    "stabilityThreshold": ("stability_threshold", int),
    "confidenceThreshold": ("confidence_threshold", float),
}


def sampler_from_facts(raw: Any) -> SamplerSettings:
    """The server model's sampler from its facts (``sampler`` in ``/v1/models``); missing or odd values: defaults."""
    values: dict[str, Any] = {}
    if isinstance(raw, dict):
        for key, (name, kind) in _SAMPLER_KEYS.items():
            value = raw.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                values[name] = kind(value)
    return SamplerSettings(**values)


def model_facts(listing: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The first model's id and its ``dg`` facts (empty for servers without the extension)."""
    data = listing.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None, {}
    entry = data[0]
    model_id, raw_facts = entry.get("id"), entry.get("dg")
    facts: dict[str, Any] = raw_facts if isinstance(raw_facts, dict) else {}
    return (model_id if isinstance(model_id, str) else None), facts

"""The engine server's wire format: OpenAI-compatible ``/v1/completions`` with fill-in-the-middle.

``prompt`` is the text before the hole and ``suffix`` the text after it, as in the OpenAI
completions API (and vLLM). Everything dg-lsp needs beyond that (hole kind, language,
sampler, rewrite seed) travels in an optional ``dg`` object, which other servers ignore.
Both the engine server (parsing) and the remote backend (building) use this module.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.engine import InfillRequest, InfillResult
from dg_lsp.engine.prompt_cache import EncodeStats
from dg_lsp.engine.sampler import SamplerSettings

#: Canvas used when a request gives no ``max_tokens``.
DEFAULT_MAX_TOKENS = 64


class SamplerFields(BaseModel):
    """:class:`~dg_lsp.engine.sampler.SamplerSettings` on the wire; a field left out is the model's own."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=None, ge=1)
    entropy_bound: float | None = Field(default=None, gt=0)
    t_min: float | None = Field(default=None, gt=0)
    t_max: float | None = Field(default=None, gt=0)
    stability_threshold: int | None = Field(default=None, ge=0, le=64)
    confidence_threshold: float | None = Field(default=None, ge=0)

    def settings(self, defaults: SamplerSettings, greedy: bool) -> SamplerSettings:
        """``defaults`` (the model's sampler) with the fields this request sets."""
        given = {name: value for name, value in self.model_dump().items() if value is not None}
        return replace(defaults, **given, greedy=greedy)


class DgFields(BaseModel):
    """The ``dg`` extension of a completions request."""

    model_config = ConfigDict(extra="forbid")

    kind: HoleKind = HoleKind.BLOCK
    language: str | None = None
    max_context_tokens: int = Field(default=2048, ge=8, le=1 << 20)
    sampler: SamplerFields = SamplerFields()
    #: Rewrites: the current text of the hole, used to seed the canvas.
    seed_text: str | None = None
    seed_noise: float = Field(default=0.5, ge=0.0, le=1.0)
    #: The document's file name (a chat-format model's instruction names it).
    file_name: str | None = Field(default=None, max_length=1024)
    #: Stream a draft event after every denoising step (only with ``stream``).
    drafts: bool = True


class CompletionRequest(BaseModel):
    """``POST /v1/completions``: the OpenAI fields dg-lsp honours, plus ``dg``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    stream: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    echo: Literal[False] = False
    dg: DgFields = DgFields()

    def infill_request(self, defaults: SamplerSettings = SamplerSettings()) -> InfillRequest:
        """The engine request this completion asks for; sampler fields it leaves out come from ``defaults``."""
        greedy = self.temperature == 0.0
        settings = self.dg.sampler.settings(defaults, greedy)
        if not greedy:
            settings = replace(settings, t_min=self.temperature / 2, t_max=self.temperature)
        return InfillRequest(
            prefix=self.prompt,
            suffix=self.suffix or "",
            language=self.dg.language,
            kind=self.dg.kind,
            settings=settings,
            max_canvas=self.max_tokens or DEFAULT_MAX_TOKENS,
            max_context_tokens=self.dg.max_context_tokens,
            seed_text=self.dg.seed_text,
            seed_noise=self.dg.seed_noise,
            seed=self.seed or 0,
            file_name=self.dg.file_name,
        )

    def stops(self) -> list[str]:
        """The stop strings, as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


def completion_body(request: InfillRequest, model: str | None, stream: bool, dialect: str = "dg") -> dict[str, Any]:
    """The JSON body asking a server to fill ``request``.

    ``dialect="dg"`` sends the full request (hole kind, sampler, rewrite seed) in ``dg``;
    ``"openai"`` sends only standard fields, for servers such as vLLM.
    """
    body: dict[str, Any] = {
        "prompt": request.prefix,
        "suffix": request.suffix,
        "max_tokens": request.max_canvas,
        "temperature": 0.0 if request.settings.greedy else request.settings.t_max,
        "seed": request.seed,
        "stream": stream,
    }
    if model:
        body["model"] = model
    if dialect == "dg":
        s = request.settings
        body["dg"] = {
            "kind": request.kind.value,
            "language": request.language,
            "max_context_tokens": request.max_context_tokens,
            "sampler": {
                "max_steps": s.max_steps,
                "entropy_bound": s.entropy_bound,
                "t_min": s.t_min,
                "t_max": s.t_max,
                "stability_threshold": s.stability_threshold,
                "confidence_threshold": s.confidence_threshold,
            },
            "seed_text": request.seed_text,
            "seed_noise": request.seed_noise,
            "drafts": stream,
        }
        if request.file_name is not None:
            body["dg"]["file_name"] = request.file_name
    return body


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def result_stats(result: InfillResult, queue_ms: float, batch_size: int) -> dict[str, Any]:
    """The ``dg`` object of a response: how the answer was produced."""
    return {
        "ended": result.ended,
        "steps": result.steps,
        "canvas_length": result.canvas_length,
        "middle_tokens": result.middle_tokens,
        "prompt_tokens": result.encode.prompt_tokens,
        "reused_tokens": result.encode.reused_tokens,
        "encode_ms": result.encode_ms,
        "denoise_ms": result.denoise_ms,
        "queue_ms": queue_ms,
        "batch_size": batch_size,
    }


def result_from_response(text: str, dg: dict[str, Any] | None) -> InfillResult:
    """An :class:`InfillResult` from a response's text and (optional) ``dg`` stats."""
    stats = dg or {}
    prompt_tokens = int(stats.get("prompt_tokens", 0))
    return InfillResult(
        text=text,
        ended=bool(stats.get("ended", True)),
        steps=int(stats.get("steps", 0)),
        middle_tokens=int(stats.get("middle_tokens", 0)),
        canvas_length=int(stats.get("canvas_length", 0)),
        encode=EncodeStats(prompt_tokens, int(stats.get("reused_tokens", 0)), prompt_tokens - int(stats.get("reused_tokens", 0))),
        encode_ms=float(stats.get("encode_ms", 0.0)),
        denoise_ms=float(stats.get("denoise_ms", 0.0)),
    )


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}

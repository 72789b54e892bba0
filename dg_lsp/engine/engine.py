"""The resident engine: one loaded model, its prompt cache, and infill jobs run one at a time."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from dg_lsp.canvas import HoleKind, canvas_length_for, canvas_target, encoder_ids, middle_from_canvas
from dg_lsp.engine.denoiser import CanvasSpec, DenoiseOutcome, Draft, denoise
from dg_lsp.engine.prompt_cache import EncodeStats, PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import LoadedModel

#: Callback for drafts: (middle text so far, step, max steps, final).
DraftCallback = Callable[[str, int, int, bool], None]


@dataclass(frozen=True)
class InfillRequest:
    """One hole to fill: its context, what kind of hole it is, and how to sample."""

    prefix: str
    suffix: str
    language: str | None
    kind: HoleKind
    settings: SamplerSettings = SamplerSettings()
    max_canvas: int = 256
    #: Upper bound on prefix + suffix tokens actually encoded.
    max_context_tokens: int = 2048
    #: Rewrites: the text currently in the hole, used to seed the canvas.
    seed_text: str | None = None
    seed_noise: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class InfillResult:
    """The denoised middle and the numbers behind it."""

    text: str
    ended: bool
    steps: int
    middle_tokens: int
    canvas_length: int
    encode: EncodeStats
    encode_ms: float
    denoise_ms: float

    @property
    def tokens_per_forward(self) -> float:
        """Middle tokens produced per decoder forward pass."""
        return self.middle_tokens / max(self.steps, 1)


@dataclass(frozen=True)
class PreparedInfill:
    """A request tokenised and laid out: encoder ids, canvas and step budget."""

    request: InfillRequest
    prompt: list[int]
    spec: CanvasSpec
    settings: SamplerSettings


def warmup_requests() -> list[InfillRequest]:
    """Two short requests that exercise the common canvas sizes once after loading."""
    return [
        InfillRequest(prefix="def f(x):\n    ", suffix="\n", language="python", kind=kind,
                      settings=SamplerSettings(max_steps=2))
        for kind in (HoleKind.REST_OF_LINE, HoleKind.LINE)
    ]


#: More characters than any token spans: text this far from the hole is never in the budget.
MAX_CHARS_PER_TOKEN = 32

#: Fewest denoising steps a short canvas gets.
MIN_STEPS = 8


def steps_for_canvas(settings: SamplerSettings, length: int, full_length: int) -> SamplerSettings:
    """Scale the step budget with the canvas: a 32-token line needs fewer steps than a full canvas.

    ``settings.max_steps`` applies to the model's full canvas; shorter canvases get a
    proportional share, never fewer than :data:`MIN_STEPS` (nor more than asked).
    """
    scaled = max(MIN_STEPS, math.ceil(settings.max_steps * length / max(full_length, 1)))
    return replace(settings, max_steps=min(settings.max_steps, scaled))


class Engine:
    """Runs infill jobs on one resident model; jobs are serialised by a lock."""

    def __init__(self, loaded: LoadedModel, reuse_prompt_cache: bool = True) -> None:
        self.loaded = loaded
        self._cache = PromptCache(loaded.model, reuse=reuse_prompt_cache)
        self._lock = threading.Lock()
        if loaded.device.type == "cpu":
            torch.set_flush_denormal(True)

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (used to cut context to a budget)."""
        return len(self.loaded.tokenizer.encode(text, add_special_tokens=False).ids)

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.loaded.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of a list of token ids."""
        text: str = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)  # markers never belong in code
        return text

    def prompt_ids(self, request: InfillRequest) -> list[int]:
        """The encoder ids for a request, trimmed to its context budget (keeping text near the hole).

        Text far beyond any budget is cut before tokenising, so a huge prompt costs no more
        than a large one.
        """
        budget = max(request.max_context_tokens, 8)
        reach = budget * MAX_CHARS_PER_TOKEN
        prefix_ids = self._ids(request.prefix[-reach:])
        suffix_ids = self._ids(request.suffix[:reach])
        if len(prefix_ids) + len(suffix_ids) > budget:
            keep_suffix = min(len(suffix_ids), max(budget // 4, budget - len(prefix_ids)))
            suffix_ids = suffix_ids[:keep_suffix]
            prefix_ids = prefix_ids[max(0, len(prefix_ids) - (budget - keep_suffix)) :]
        return encoder_ids(self.loaded.layout, prefix_ids, suffix_ids, request.language)

    @property
    def context_tokens(self) -> int | None:
        """The prefix + suffix token budget the model was trained with (None: unknown)."""
        return self.loaded.context_tokens

    def describe(self) -> dict[str, Any]:
        """Model facts for ``dg.info`` and the engine server's ``/v1/models``."""
        loaded = self.loaded
        return {
            "model": loaded.name,
            "modelPath": str(loaded.path),
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "parameters": loaded.parameters,
            "canvasLength": loaded.canvas_length,
            "trainedContextTokens": loaded.context_tokens,
        }

    def prepare(self, request: InfillRequest) -> PreparedInfill:
        """Tokenise a request and choose its canvas; raises ValueError for a selection too long for the canvas."""
        layout = self.loaded.layout
        seed_ids = self._ids(request.seed_text) if request.seed_text is not None else None
        needed = len(seed_ids) + max(8, len(seed_ids) // 4) if seed_ids is not None else 0
        length = canvas_length_for(request.kind, min(request.max_canvas, self.loaded.canvas_length), needed)
        if seed_ids is not None and len(seed_ids) >= length:
            raise ValueError(
                f"the selection is {len(seed_ids)} tokens; this model's canvas holds at most {length - 1}: "
                "select less text"
            )
        spec = CanvasSpec(
            length=length,
            seed_ids=canvas_target(layout, seed_ids, length) if seed_ids is not None else None,
            seed_noise=request.seed_noise,
        )
        settings = steps_for_canvas(request.settings, length, self.loaded.canvas_length)
        return PreparedInfill(request=request, prompt=self.prompt_ids(request), spec=spec, settings=settings)

    def draft_reporter(self, on_draft: DraftCallback | None) -> Callable[[Draft], None] | None:
        """Turn canvas drafts into middle-text drafts for ``on_draft``."""
        if on_draft is None:
            return None
        layout = self.loaded.layout

        def report(draft: Draft) -> None:
            middle, _ = middle_from_canvas(layout, draft.canvas)
            on_draft(self.decode(middle), draft.step, draft.max_steps, draft.final)

        return report

    def result(
        self, prepared: PreparedInfill, outcome: DenoiseOutcome, stats: EncodeStats, encode_ms: float, denoise_ms: float
    ) -> InfillResult:
        """The :class:`InfillResult` for a finished canvas."""
        middle, ended = middle_from_canvas(self.loaded.layout, outcome.canvas)
        return InfillResult(
            text=self.decode(middle),
            ended=ended,
            steps=outcome.steps,
            middle_tokens=len(middle),
            canvas_length=prepared.spec.length,
            encode=stats,
            encode_ms=encode_ms,
            denoise_ms=denoise_ms,
        )

    def infill(
        self,
        request: InfillRequest,
        on_draft: DraftCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> InfillResult:
        """Fill one hole; raises :class:`dg_lsp.engine.denoiser.Cancelled` if ``cancelled()`` turns true."""
        prepared = self.prepare(request)
        with self._lock:
            started = time.perf_counter()
            try:
                stats = self._cache.encode(prepared.prompt)
            except BaseException:
                self._cache.clear()
                raise
            encoded = time.perf_counter()
            outcome = denoise(
                self.loaded.model,
                self._cache.cache,
                len(prepared.prompt),
                prepared.spec,
                prepared.settings,
                request.seed,
                on_draft=self.draft_reporter(on_draft),
                cancelled=cancelled,
            )
            finished = time.perf_counter()
        return self.result(prepared, outcome, stats, (encoded - started) * 1000.0, (finished - encoded) * 1000.0)

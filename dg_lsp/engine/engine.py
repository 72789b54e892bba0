"""The resident engine: one loaded model, its prompt cache, and infill jobs run one at a time."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from dg_lsp.canvas import (
    CANVAS_LENGTHS,
    CanvasMarkers,
    HoleKind,
    canvas_length_for,
    canvas_target,
    encoder_ids,
    middle_from_canvas,
)
from dg_lsp.engine.background_compile import BackgroundCompile
from dg_lsp.engine.compiled_step import StepFunctions
from dg_lsp.engine.denoiser import CanvasSpec, DenoiseOutcome, Draft, denoise
from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
from dg_lsp.engine.prompt_cache import EncodeStats, EncodeTotals, PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import LoadedModel, ModelLoadError
from dg_lsp.prompting.answer import strip_thinking
from dg_lsp.prompting.chat import ChatTemplate, HoleText, instruction
from dg_lsp.prompting.checkpoint import PromptFormat
from dg_lsp.prompting.generation import CheckpointSampling

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
    #: The document's file name (the chat format names it in the instruction).
    file_name: str | None = None


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


def sampler_json(settings: SamplerSettings) -> dict[str, Any]:
    """camelCase form of sampler settings (for ``dg.info`` and ``/v1/models``)."""
    return {
        "maxSteps": settings.max_steps,
        "entropyBound": settings.entropy_bound,
        "tMin": settings.t_min,
        "tMax": settings.t_max,
        "stabilityThreshold": settings.stability_threshold,
        "confidenceThreshold": settings.confidence_threshold,
        "greedy": settings.greedy,
    }


def warmup_requests() -> list[InfillRequest]:
    """Two short requests that exercise the common canvas sizes once after loading."""
    return [
        InfillRequest(prefix="def f(x):\n    ", suffix="\n", language="python", kind=kind,
                      settings=SamplerSettings(max_steps=2))
        for kind in (HoleKind.REST_OF_LINE, HoleKind.LINE, HoleKind.BLOCK)
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


def checkpoint_sampler(sampling: CheckpointSampling, base: SamplerSettings = SamplerSettings()) -> SamplerSettings:
    """``base`` with what the checkpoint's ``generation_config.json`` sets (steps, entropy bound, temperatures…)."""
    return replace(base, **sampling.sampler_fields())


class Engine:
    """Runs infill jobs on one resident model; jobs are serialised by a lock.

    ``prompt_format`` is ``auto`` (FIM when the tokenizer has the layout's markers, else the
    checkpoint's chat template), ``fim`` or ``chat``; an impossible one is a :class:`ModelLoadError`.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        reuse_prompt_cache: bool = True,
        prompt_format: str = "auto",
        fast_path: FastPathSettings = FastPathSettings(),
    ) -> None:
        self.loaded = loaded
        facts = loaded.prompting
        try:
            self.prompt_format: PromptFormat = facts.choose(prompt_format, str(loaded.path))
            self._chat = ChatTemplate(loaded.path) if self.prompt_format == "chat" else None
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.markers: CanvasMarkers = (
            facts.chat_markers() if self._chat is not None or loaded.layout is None else loaded.layout
        )
        #: The sampler this model runs with unless the user's settings say otherwise.
        self.sampler_defaults = checkpoint_sampler(facts.sampling)
        specials = sorted(
            (t.content for t in loaded.tokenizer.get_added_tokens_decoder().values() if t.special), key=len, reverse=True
        )
        #: Special-token texts a chat answer is cleared of after its thinking block is gone (one pass).
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._cache = PromptCache(loaded.model, reuse=reuse_prompt_cache)
        #: Every prompt encode so far (requests and prefetches).
        self.encodes = EncodeTotals()
        #: Static prompt KV, fixed shapes, sync-free (optionally compiled) step; None: the eager path.
        self.fast = FastDenoiser(loaded.model, fast_path, noise_id=loaded.noise_id) if fast_path.enabled else None
        self._fast_settings = fast_path
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
        """Text of a list of token ids (a chat answer loses its thinking block first)."""
        if self._chat is None:
            text: str = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)  # markers never belong in code
            return text
        raw: str = self.loaded.tokenizer.decode(ids, skip_special_tokens=False)
        answer = strip_thinking(raw)  # its markers may be special tokens: strip before they vanish
        return self._specials.sub("", answer) if self._specials is not None else answer

    def prompt_ids(self, request: InfillRequest) -> list[int]:
        """The encoder ids for a request, trimmed to its context budget (keeping text near the hole).

        Text far beyond any budget is cut before tokenising, so a huge prompt costs no more
        than a large one.
        """
        budget = max(request.max_context_tokens, 8)
        reach = budget * MAX_CHARS_PER_TOKEN
        prefix_text, suffix_text = request.prefix[-reach:], request.suffix[:reach]
        prefix = self.loaded.tokenizer.encode(prefix_text, add_special_tokens=False)
        suffix = self.loaded.tokenizer.encode(suffix_text, add_special_tokens=False)
        prefix_ids, suffix_ids = list(prefix.ids), list(suffix.ids)
        drop_prefix, keep_suffix = 0, len(suffix_ids)
        if len(prefix_ids) + len(suffix_ids) > budget:
            keep_suffix = min(len(suffix_ids), max(budget // 4, budget - len(prefix_ids)))
            drop_prefix = max(0, len(prefix_ids) - (budget - keep_suffix))
        if self._chat is None:
            layout = self.loaded.layout
            assert layout is not None  # the FIM format is only chosen when the markers exist
            return encoder_ids(layout, prefix_ids[drop_prefix:], suffix_ids[:keep_suffix], request.language)
        # Chat: cut the texts where the kept tokens begin / end, then render the whole turn.
        if drop_prefix:
            prefix_text = prefix_text[prefix.offsets[drop_prefix][0] :] if drop_prefix < len(prefix_ids) else ""
        if keep_suffix < len(suffix_ids):
            suffix_text = suffix_text[: suffix.offsets[keep_suffix - 1][1]] if keep_suffix else ""
        return self._ids(self.chat_prompt(request, prefix_text, suffix_text))

    def chat_prompt(self, request: InfillRequest, prefix: str, suffix: str) -> str:
        """The chat format's prompt text for a hole: the checkpoint's template around :func:`instruction`."""
        assert self._chat is not None
        hole = HoleText(
            prefix=prefix,
            suffix=suffix,
            language=request.language,
            kind=request.kind,
            file_name=request.file_name,
            selection=request.seed_text,
        )
        return self._chat.render(instruction(hole))

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
            "quantize": loaded.quantize,
            "parameters": loaded.parameters,
            "canvasLength": loaded.canvas_length,
            "trainedContextTokens": loaded.context_tokens,
            "canvasNoise": loaded.tokenizer.id_to_token(loaded.noise_id) if loaded.noise_id is not None else "uniform",
            "promptFormat": self.prompt_format,
            "promptFormats": list(loaded.prompting.formats),
            "eosIds": sorted(self.markers.stop_ids - {loaded.prompting.pad_id})
            if self._chat is not None
            else sorted(self.markers.stop_ids),
            "sampler": sampler_json(self.sampler_defaults),
            "compile": self.compile_facts(),
            "promptCache": self.encodes.to_json(),
        }

    def compile_facts(self) -> dict[str, object]:
        """The compiled step's setting and state (``off`` | ``pending`` | ``compiling`` | ``ready`` | ``failed``)."""
        if self.fast is None:
            return {"setting": self._fast_settings.compile, "when": "never", "state": "off"}
        return self.fast.compile_facts()

    def background_compile(self) -> BackgroundCompile[StepFunctions] | None:
        """The compile of the denoising step to start in the background, one shape per canvas length.

        None unless the fast path's plan is ``background`` (``compile: "auto"`` on a CPU). The
        caller starts it (:meth:`BackgroundCompile.start`); the step is swapped in between requests.
        """
        if self.fast is None:
            return None
        shapes = sorted({min(length, self.loaded.canvas_length) for length in CANVAS_LENGTHS})
        return self.fast.background_compile(shapes)

    def prepare(self, request: InfillRequest) -> PreparedInfill:
        """Tokenise a request and choose its canvas; raises ValueError for a selection too long for the canvas."""
        layout = self.markers
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
            noise_id=self.loaded.noise_id,
        )
        settings = steps_for_canvas(request.settings, length, self.loaded.canvas_length)
        return PreparedInfill(request=request, prompt=self.prompt_ids(request), spec=spec, settings=settings)

    def draft_reporter(self, on_draft: DraftCallback | None) -> Callable[[Draft], None] | None:
        """Turn canvas drafts into middle-text drafts for ``on_draft``."""
        if on_draft is None:
            return None
        layout = self.markers

        def report(draft: Draft) -> None:
            middle, _ = middle_from_canvas(layout, draft.canvas)
            on_draft(self.decode(middle), draft.step, draft.max_steps, draft.final)

        return report

    def result(
        self, prepared: PreparedInfill, outcome: DenoiseOutcome, stats: EncodeStats, encode_ms: float, denoise_ms: float
    ) -> InfillResult:
        """The :class:`InfillResult` for a finished canvas."""
        middle, ended = middle_from_canvas(self.markers, outcome.canvas)
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

    @property
    def prefetches(self) -> bool:
        """Yes: :meth:`prefetch` fills the prompt cache."""
        return True

    def prefetch(self, request: InfillRequest) -> bool:
        """Encode ``request``'s prompt into the prompt cache now, so that the request itself reuses it.

        Called while the editor waits before asking (its debounce): the request then finds its
        whole prompt encoded and goes straight to denoising.
        """
        prompt = self.prompt_ids(request)
        with self._lock:
            self._encode(prompt)
        return True

    def _encode(self, prompt: list[int]) -> EncodeStats:
        """Make the prompt cache hold ``prompt`` (lock held); an interrupted encode leaves it empty."""
        try:
            encoder = self.fast.prompt_encoder() if self.fast is not None else None
            stats = self._cache.encode(prompt, encoder=encoder)
        except BaseException:
            self._cache.clear()
            raise
        self.encodes.add(stats)
        return stats

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
            stats = self._encode(prepared.prompt)
            encoded = time.perf_counter()
            if self.fast is not None:
                outcome = self.fast.denoise(
                    self._cache,
                    prepared.spec,
                    prepared.settings,
                    request.seed,
                    on_draft=self.draft_reporter(on_draft),
                    cancelled=cancelled,
                )
            else:
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

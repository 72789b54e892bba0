"""Completion and rewrite on a document, independent of LSP (used by the server and the CLI)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import tree_sitter

from dg_lsp.canvas import HoleKind
from dg_lsp.config import CompletionOptions, RewriteOptions
from dg_lsp.engine.backend import InfillBackend
from dg_lsp.engine.engine import InfillRequest, InfillResult
from dg_lsp.languages import get_parser, has_grammar
from dg_lsp.prompting.answer import clean_chat_answer
from dg_lsp.syntax import InfillContext, build_context, clean_completion

#: Draft callback: (cleaned draft text, step, max steps, final).
DraftSink = Callable[[str, int, int, bool], None]


@dataclass(frozen=True)
class Completion:
    """Text to insert at ``offset`` (replacing ``offset..end_offset``) and how it was made."""

    text: str
    offset: int
    end_offset: int
    raw: str
    context: InfillContext
    result: InfillResult


@dataclass(frozen=True)
class Rewrite:
    """The new text for ``start..end`` and the minimal edit that produces it."""

    start: int
    end: int
    new_text: str
    #: The smallest replacement: document[edit_start:edit_end] = edit_text.
    edit_start: int
    edit_end: int
    edit_text: str
    result: InfillResult


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """Model text without control characters: ``\r\n`` becomes ``\n``; tab and newline stay."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def context_budget(backend: InfillBackend, options: CompletionOptions) -> int:
    """The prefix + suffix token budget: the configured one, capped at what the model was trained on."""
    trained = backend.context_tokens
    return min(options.context_tokens, trained) if trained else options.context_tokens


def answer_text(backend: InfillBackend, text: str, prefix: str, suffix: str) -> str:
    """The model's text as code: a chat answer loses fences, thinking and echoed context; control characters go."""
    if backend.prompt_format == "chat":
        text = clean_chat_answer(text, prefix, suffix)
    return printable(text)


def hole_kind(context: InfillContext) -> HoleKind:
    """The canvas hole kind for a context-layer completion kind."""
    return HoleKind[context.kind.name]


def completion_request(
    backend: InfillBackend,
    text: str,
    tree: tree_sitter.Tree | None,
    language: str | None,
    offset: int,
    options: CompletionOptions,
    file_name: str | None = None,
) -> tuple[InfillContext, InfillRequest]:
    """The context cut around ``offset`` and the engine request an inline completion there makes."""
    budget = context_budget(backend, options)
    context = build_context(text, tree, language, offset, budget, backend.count_tokens)
    request = InfillRequest(
        prefix=context.prefix,
        suffix=context.suffix,
        language=language,
        kind=hole_kind(context),
        settings=options.sampler(backend.sampler_defaults),
        max_canvas=options.max_canvas,
        max_context_tokens=budget,
        seed=options.seed,
        file_name=file_name,
    )
    return context, request


def complete(
    backend: InfillBackend,
    text: str,
    tree: tree_sitter.Tree | None,
    language: str | None,
    offset: int,
    options: CompletionOptions,
    on_draft: DraftSink | None = None,
    cancelled: Callable[[], bool] | None = None,
    file_name: str | None = None,
) -> Completion | None:
    """Infill at ``offset``; None when the model produced nothing worth showing."""
    context, request = completion_request(backend, text, tree, language, offset, options, file_name)

    answers: dict[str, str | None] = {}

    def answer(middle: str) -> str | None:
        """The completion ``middle`` makes, with every check (memoized: the final draft's is the answer's)."""
        if middle not in answers:
            code = answer_text(backend, middle, context.prefix, context.suffix)
            answers[middle] = clean_completion(code, context, language, parse_check=options.parse_check)
        return answers[middle]

    def draft(middle: str, step: int, max_steps: int, final: bool) -> None:
        if on_draft is not None:
            if final:  # what the request answers, so an editor showing final drafts shows nothing the checks reject
                cleaned = answer(middle)
            else:  # a draft in progress: shown as it is (the parse check would hide most of a denoising run)
                code = answer_text(backend, middle, context.prefix, context.suffix)
                cleaned = clean_completion(code, context, language, parse_check=False)
            on_draft(cleaned or "", step, max_steps, final)

    result = backend.infill(request, on_draft=draft if on_draft is not None else None, cancelled=cancelled)
    cleaned = answer(result.text)
    if not cleaned:
        return None
    return Completion(
        text=cleaned, offset=offset, end_offset=offset, raw=result.text, context=context, result=result
    )


def _parse(text: str, language: str | None) -> tree_sitter.Tree | None:
    if language is None or not has_grammar(language):
        return None
    return get_parser(language).parse(text.encode("utf-8", "surrogatepass"))


def minimal_edit(old: str, new: str) -> tuple[int, int, str]:
    """The shortest ``(start, end, replacement)`` turning ``old`` into ``new`` (offsets in ``old``)."""
    head = 0
    limit = min(len(old), len(new))
    while head < limit and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < limit - head and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]:
        tail += 1
    return head, len(old) - tail, new[head : len(new) - tail]


def rewrite(
    backend: InfillBackend,
    text: str,
    language: str | None,
    start: int,
    end: int,
    completion_options: CompletionOptions,
    options: RewriteOptions,
    on_draft: DraftSink | None = None,
    cancelled: Callable[[], bool] | None = None,
    file_name: str | None = None,
) -> Rewrite | None:
    """Re-denoise ``text[start:end]`` in context, seeding the canvas with the current selection."""
    if not 0 <= start < end <= len(text):
        raise ValueError(f"invalid selection {start}..{end} in a document of {len(text)} characters")
    selection = text[start:end]
    outside = text[:start] + text[end:]
    budget = context_budget(backend, completion_options)
    context = build_context(outside, _parse(outside, language), language, start, budget, backend.count_tokens)
    request = InfillRequest(
        prefix=context.prefix,
        suffix=context.suffix,
        language=language,
        kind=HoleKind.SELECTION,
        settings=options.sampler(completion_options.entropy_bound, backend.sampler_defaults),
        max_canvas=max(completion_options.max_canvas, 256),
        max_context_tokens=budget,
        seed_text=selection,
        seed_noise=options.noise,
        seed=completion_options.seed,
        file_name=file_name,
    )

    def draft(middle: str, step: int, max_steps: int, final: bool) -> None:
        if on_draft is not None:
            on_draft(answer_text(backend, middle, context.prefix, context.suffix), step, max_steps, final)

    result = backend.infill(request, on_draft=draft if on_draft is not None else None, cancelled=cancelled)
    new_text = answer_text(backend, result.text, context.prefix, context.suffix)
    if "\r\n" in selection:
        new_text = new_text.replace("\n", "\r\n")
    if selection.endswith("\n") and not new_text.endswith("\n"):
        new_text += "\n"
    if not new_text.strip():
        return None
    edit_start, edit_end, edit_text = minimal_edit(selection, new_text)
    return Rewrite(
        start=start,
        end=end,
        new_text=new_text,
        edit_start=start + edit_start,
        edit_end=start + edit_end,
        edit_text=edit_text,
        result=result,
    )

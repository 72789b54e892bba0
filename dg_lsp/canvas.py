"""The canvas layout: how a hole and its context become encoder and decoder token ids.

This module is shared by the engine (inference) and the trainer, so that what the model
sees at inference time is exactly what it was trained on.

Layout (suffix-prefix-middle, "SPM"):

    encoder:  <bos> <lang_x> <fim_suffix> SUFFIX <fim_prefix> PREFIX <fim_middle>
    canvas:   MIDDLE <eom> <eom> ... <eom>                       (canvas_length tokens)

The suffix is encoded *before* the prefix so that typing at the cursor only changes the
tail of the encoder sequence: the KV cache of the suffix and of most of the prefix stays
valid between keystrokes (see :mod:`dg_lsp.engine.prompt_cache`). Prefix, middle and suffix
are tokenized separately, both in training and at inference, so token boundaries at the hole
edges match. Unused canvas positions are filled with the end-of-middle token, so the
model learns to say where the middle ends; decoding cuts at the first ``<eom>``.

Noise is DiffusionGemma's: each canvas token is independently replaced, with probability
``t``, by a token drawn uniformly from the whole vocabulary (there is no mask token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch

from dg_lsp import special_tokens as st

#: The fixed canvas lengths (gpt-fast style fixed shapes): every request is padded up to one of them.
CANVAS_LENGTHS: tuple[int, ...] = (32, 64, 128, 256)


class HoleKind(str, Enum):
    """How much text the hole is expected to hold (mirrors the context layer's kinds)."""

    REST_OF_LINE = "rest_of_line"
    LINE = "line"
    BLOCK = "block"
    SELECTION = "selection"


#: Default canvas length per hole kind (capped by the configured maximum).
DEFAULT_CANVAS_FOR_KIND: dict[HoleKind, int] = {
    HoleKind.REST_OF_LINE: 32,
    HoleKind.LINE: 64,
    HoleKind.BLOCK: 256,
    HoleKind.SELECTION: 256,
}


@dataclass(frozen=True)
class LayoutTokens:
    """Token ids of the layout's markers for one tokenizer."""

    bos: int
    pad: int
    fim_prefix: int
    fim_suffix: int
    fim_middle: int
    end_of_middle: int
    #: Ids that end the middle when they appear in a canvas (``<eom>``, ``<eos>``, pad).
    stop_ids: frozenset[int]
    #: Language tag ids by language name; may be empty for tokenizers without them.
    language_ids: dict[str, int]

    def language_id(self, language: str | None) -> int | None:
        """The language tag id for ``language`` (falls back to the ``text`` tag)."""
        if not self.language_ids:
            return None
        name = language if language in self.language_ids else "text"
        return self.language_ids.get(name)


class CanvasMarkers(Protocol):
    """What a canvas needs from a prompt format: the filler after the middle and the ids that end it."""

    @property
    def end_of_middle(self) -> int:
        """The token that fills the canvas after the middle (and seeds it after a rewrite's selection)."""

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end the middle when they appear in a canvas."""


@dataclass(frozen=True)
class ChatMarkers:
    """The canvas of an instruction-tuned (chat) checkpoint: it is the model's answer turn.

    Layout::

        encoder:  <bos> <start_of_turn>user INSTRUCTION <end_of_turn> <start_of_turn>model …
        canvas:   ANSWER <end_of_turn> <end_of_turn> ...            (canvas_length tokens)

    The canvas stops at the checkpoint's eos ids (and its pad id).
    """

    end_of_middle: int
    pad: int
    stop_ids: frozenset[int]


def chat_markers(eos_ids: Sequence[int], pad: int, end_of_turn: int | None) -> ChatMarkers:
    """Markers for a chat canvas: ``end_of_turn`` (when it is an eos id) or the first eos id fills it."""
    if not eos_ids:
        raise ValueError("a chat canvas needs at least one eos id")
    filler = end_of_turn if end_of_turn is not None and end_of_turn in eos_ids else eos_ids[0]
    return ChatMarkers(end_of_middle=filler, pad=pad, stop_ids=frozenset([*eos_ids, pad]))


#: Alternative spellings of the FIM markers in third-party tokenizers (e.g. Gemma's).
_MARKER_ALIASES: dict[str, tuple[str, ...]] = {
    st.FIM_PREFIX: (st.FIM_PREFIX, "<|fim_prefix|>"),
    st.FIM_SUFFIX: (st.FIM_SUFFIX, "<|fim_suffix|>"),
    st.FIM_MIDDLE: (st.FIM_MIDDLE, "<|fim_middle|>"),
    st.END_OF_MIDDLE: (st.END_OF_MIDDLE, "<|file_separator|>", "<eos>"),
    st.BOS: (st.BOS,),
    st.PAD: (st.PAD,),
    st.EOS: (st.EOS,),
}


def has_layout_tokens(vocab: dict[str, int]) -> bool:
    """Whether a vocabulary has every FIM marker the layout needs."""
    try:
        resolve_layout_tokens(vocab)
    except ValueError:
        return False
    return True


def resolve_layout_tokens(vocab: dict[str, int]) -> LayoutTokens:
    """Find the layout's marker ids in a tokenizer vocabulary.

    Raises ``ValueError`` naming the first marker the vocabulary lacks.
    """

    def find(marker: str) -> int:
        for spelling in _MARKER_ALIASES[marker]:
            if spelling in vocab:
                return vocab[spelling]
        raise ValueError(f"the tokenizer has no {marker!r} token (tried {_MARKER_ALIASES[marker]})")

    eom = find(st.END_OF_MIDDLE)
    pad = find(st.PAD)
    stops = {eom, pad}
    if st.EOS in vocab:
        stops.add(vocab[st.EOS])
    languages = {
        lang: vocab[st.language_token(lang)] for lang in st.LANGUAGES if st.language_token(lang) in vocab
    }
    return LayoutTokens(
        bos=find(st.BOS),
        pad=pad,
        fim_prefix=find(st.FIM_PREFIX),
        fim_suffix=find(st.FIM_SUFFIX),
        fim_middle=find(st.FIM_MIDDLE),
        end_of_middle=eom,
        stop_ids=frozenset(stops),
        language_ids=languages,
    )


def encoder_ids(
    tokens: LayoutTokens, prefix_ids: Sequence[int], suffix_ids: Sequence[int], language: str | None
) -> list[int]:
    """The encoder sequence for a hole: suffix first, then prefix, then the middle marker."""
    head = [tokens.bos]
    lang = tokens.language_id(language)
    if lang is not None:
        head.append(lang)
    return [*head, tokens.fim_suffix, *suffix_ids, tokens.fim_prefix, *prefix_ids, tokens.fim_middle]


def layout_overhead(tokens: LayoutTokens) -> int:
    """Number of marker tokens :func:`encoder_ids` adds around prefix and suffix."""
    return 4 + (1 if tokens.language_ids else 0)


def canvas_length_for(kind: HoleKind, max_length: int, needed: int = 0) -> int:
    """The canvas length for a hole: the kind's default, at least ``needed`` tokens, at most ``max_length``."""
    want = max(DEFAULT_CANVAS_FOR_KIND[kind], needed + 1)
    for length in CANVAS_LENGTHS:
        if length >= want:
            return min(length, max_length)
    return max_length


def canvas_target(tokens: CanvasMarkers, middle_ids: Sequence[int], canvas_length: int) -> list[int]:
    """The clean canvas for a middle: its tokens, then ``<eom>`` to the end.

    A middle longer than ``canvas_length - 1`` is truncated so that at least one ``<eom>``
    remains only when it fits; callers that need the whole middle must choose a longer canvas.
    """
    body = list(middle_ids[:canvas_length])
    return body + [tokens.end_of_middle] * (canvas_length - len(body))


def middle_from_canvas(tokens: CanvasMarkers, canvas_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The middle's ids in a canvas (up to the first stop token) and whether it ended."""
    out: list[int] = []
    for token in canvas_ids:
        if token in tokens.stop_ids:
            return out, True
        out.append(token)
    return out, False


def noise_ids(
    shape: tuple[int, ...] | torch.Size,
    vocab_size: int,
    generator: torch.Generator | None,
    device: torch.device,
    noise_id: int | None = None,
) -> torch.Tensor:
    """The tokens a noised position holds: uniform over the vocabulary, or ``noise_id`` everywhere (absorbing noise).

    DiffusionGemma renoises with random tokens; a checkpoint trained with an absorbing noise
    token (``dg_lsp.json``'s ``noise_token``) gets that token instead, and no random draw is made.
    """
    if noise_id is None:
        return torch.randint(0, vocab_size, tuple(shape), generator=generator, device=device)
    return torch.full(tuple(shape), noise_id, dtype=torch.long, device=device)


def renoise(
    canvas: torch.Tensor,
    noise_level: torch.Tensor | float,
    vocab_size: int,
    generator: torch.Generator | None = None,
    keep: torch.Tensor | None = None,
    noise_id: int | None = None,
) -> torch.Tensor:
    """Replace each token with prob. ``noise_level`` by noise (:func:`noise_ids`: uniform, or ``noise_id``).

    ``canvas`` is ``(batch, length)``; ``noise_level`` a float or a ``(batch,)`` tensor;
    positions where ``keep`` is true are never replaced (pinned tokens).
    """
    level = torch.as_tensor(noise_level, dtype=torch.float32, device=canvas.device)
    if level.ndim == 1:
        level = level[:, None]
    draws = torch.rand(canvas.shape, generator=generator, device=canvas.device)
    replace = draws < level
    if keep is not None:
        replace &= ~keep
    noise = noise_ids(canvas.shape, vocab_size, generator, canvas.device, noise_id)
    return torch.where(replace, noise, canvas)

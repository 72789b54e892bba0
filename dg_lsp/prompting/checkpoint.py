"""What a checkpoint directory says about prompting it: FIM markers, chat template, eos ids, sampler."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dg_lsp import special_tokens as st
from dg_lsp.canvas import ChatMarkers, LayoutTokens, chat_markers, resolve_layout_tokens
from dg_lsp.prompting.generation import CheckpointSampling, config_eos_ids, read_generation_config

PromptFormat = Literal["fim", "chat"]
#: Values of the ``promptFormat`` setting.
PROMPT_FORMAT_CHOICES: tuple[str, ...] = ("auto", "fim", "chat")

CHAT_TEMPLATE_FILE = "chat_template.jinja"
END_OF_TURN = "<end_of_turn>"


def has_chat_template(path: Path) -> bool:
    """Whether the checkpoint ships a chat template (``chat_template.jinja`` or in ``tokenizer_config.json``)."""
    if (path / CHAT_TEMPLATE_FILE).is_file():
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


@dataclass(frozen=True)
class PromptFacts:
    """The prompt formats a checkpoint supports and the tokens and sampler that go with them."""

    #: FIM layout markers (None: the vocabulary has none, e.g. Gemma's).
    layout: LayoutTokens | None
    has_chat_template: bool
    sampling: CheckpointSampling
    #: Ids that end a chat answer: generation_config.json's ``eos_token_id``, else config.json's.
    eos_ids: tuple[int, ...]
    pad_id: int
    end_of_turn: int | None

    @property
    def formats(self) -> tuple[PromptFormat, ...]:
        """The formats this checkpoint can be prompted in, preferred first."""
        found: list[PromptFormat] = []
        if self.layout is not None:
            found.append("fim")
        if self.has_chat_template and self.eos_ids:
            found.append("chat")
        return tuple(found)

    def choose(self, requested: str, where: str) -> PromptFormat:
        """``auto`` → FIM when the layout's markers exist, else chat; a forced format must be possible."""
        if requested == "auto":
            if not self.formats:
                raise ValueError(self.why_not("chat", where))
            return self.formats[0]
        if requested not in ("fim", "chat"):
            raise ValueError(f"unknown prompt format {requested!r} (use auto, fim or chat)")
        chosen: PromptFormat = "fim" if requested == "fim" else "chat"
        if chosen not in self.formats:
            raise ValueError(self.why_not(chosen, where))
        return chosen

    def why_not(self, fmt: PromptFormat, where: str) -> str:
        """One sentence saying why ``fmt`` cannot be used, and what would make it work (``where``: a path)."""
        where = f"{where}: " if where else ""
        if fmt == "fim":
            return (
                f"{where}promptFormat is fim, but the tokenizer has no FIM markers "
                f"({st.FIM_PREFIX}, {st.FIM_SUFFIX}, {st.FIM_MIDDLE}); use promptFormat auto or chat"
            )
        no_fim = "the tokenizer has no FIM markers and " if self.layout is None else ""
        if not self.has_chat_template:
            return (
                f"{where}{no_fim}the checkpoint has no chat template ({CHAT_TEMPLATE_FILE} or chat_template "
                "in tokenizer_config.json), so dg-lsp cannot prompt it; download the checkpoint's chat_template.jinja"
            )
        return (
            f"{where}{no_fim}the checkpoint names no eos ids (eos_token_id in generation_config.json or "
            "config.json), so dg-lsp cannot tell where an answer ends"
        )

    @classmethod
    def for_layout(cls, layout: LayoutTokens) -> PromptFacts:
        """Facts for a model built in memory with the FIM layout (no files: no chat template, default sampler)."""
        return cls(
            layout=layout, has_chat_template=False, sampling=CheckpointSampling(), eos_ids=(), pad_id=layout.pad,
            end_of_turn=None,
        )

    def chat_markers(self) -> ChatMarkers:
        """The chat canvas markers (raises ``ValueError`` without eos ids)."""
        return chat_markers(self.eos_ids, self.pad_id, self.end_of_turn)


def read_prompt_facts(path: Path, vocab: dict[str, int], config: dict[str, Any]) -> PromptFacts:
    """Read the facts from a checkpoint directory; raises ``ValueError`` when no format is possible."""
    try:
        layout: LayoutTokens | None = resolve_layout_tokens(vocab)
    except ValueError:
        layout = None
    sampling = read_generation_config(path)
    eos_ids = sampling.eos_ids or config_eos_ids(config)
    pad = sampling.pad_id if sampling.pad_id is not None else vocab.get(st.PAD, 0)
    facts = PromptFacts(
        layout=layout,
        has_chat_template=has_chat_template(path),
        sampling=sampling,
        eos_ids=tuple(i for i in eos_ids if 0 <= i < max(len(vocab), max(vocab.values(), default=0) + 1)),
        pad_id=pad,
        end_of_turn=vocab.get(END_OF_TURN),
    )
    facts.choose("auto", "")
    return facts

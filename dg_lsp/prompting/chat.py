"""The chat format: one user turn that shows the hole, rendered with the checkpoint's own chat template.

The turn puts what stays the same while the user types first (the instruction, then the code
after the hole, then the code before it) and what changes at the end (the end of the code
before the hole and the request for this hole), so the prompt cache reuses almost all of it
between keystrokes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_lsp.canvas import HoleKind

#: Where the answer goes, in the code shown to the model.
HOLE = "<HOLE>"

#: What to produce, per hole kind: the short last line of the turn (it changes as the user moves around).
TASKS: dict[HoleKind, str] = {
    HoleKind.REST_OF_LINE: "Write the rest of the line at the hole, nothing after it.",
    HoleKind.LINE: "Write one line of code.",
    HoleKind.BLOCK: "Write the lines of code that belong there.",
    HoleKind.SELECTION: "Rewrite the code in the hole, shown here; keep its purpose.",
}

_LANGUAGE_NAMES = {
    "python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "tsx": "TSX", "go": "Go",
    "rust": "Rust", "c": "C", "cpp": "C++", "java": "Java", "lua": "Lua", "bash": "Bash",
}


def language_name(language: str | None) -> str:
    """How the instruction names a language (``None``: plain text)."""
    if not language:
        return "plain text"
    return _LANGUAGE_NAMES.get(language, language)


def _fence(*texts: str) -> str:
    """A backtick fence longer than any backtick run in ``texts`` (at least three)."""
    longest = max((len(run) for text in texts for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


@dataclass(frozen=True)
class HoleText:
    """The text around a hole as the chat instruction shows it."""

    prefix: str
    suffix: str
    language: str | None
    kind: HoleKind
    file_name: str | None = None
    #: Rewrites: the code in the hole now.
    selection: str | None = None


def instruction(hole: HoleText) -> str:
    """The user turn for a hole: stable instruction, code after the hole, code before it, then the request."""
    fence = _fence(hole.prefix, hole.suffix, hole.selection or "")
    tag = hole.language or ""
    where = f" `{hole.file_name}`" if hole.file_name else ""
    head = (
        f"Fill in the hole marked {HOLE} in the {language_name(hole.language)} file{where}. "
        "Answer with only the code that goes in the hole: no explanation, no code fences, "
        "and none of the code before or after the hole. The request for this hole comes last.\n\n"
    )
    after = f"Code after the hole:\n{fence}{tag}\n{HOLE}{hole.suffix}\n{fence}\n\n"
    before = f"Code before the hole:\n{fence}{tag}\n{hole.prefix}{HOLE}\n{fence}\n\n"
    task = TASKS[hole.kind]
    if hole.kind is HoleKind.SELECTION and hole.selection is not None:
        task += f"\n{fence}{tag}\n{hole.selection}\n{fence}"
    return head + after + before + task


class ChatTemplate:
    """The checkpoint's chat template, applied through its transformers tokenizer."""

    def __init__(self, path: Path) -> None:
        """Load the tokenizer (with ``chat_template.jinja``) from a checkpoint directory; ``ValueError`` if unusable."""
        from transformers import AutoTokenizer

        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises many kinds for an unreadable tokenizer
            raise ValueError(f"could not load the tokenizer of {path} with transformers: {exc}") from exc
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValueError(f"{path} has no chat template")

    def render(self, user_turn: str) -> str:
        """The prompt text: one user turn, the generation prompt on, thinking off."""
        text = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": user_turn}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        if not isinstance(text, str):
            raise TypeError(f"the chat template rendered {type(text).__name__}, not text")
        return text

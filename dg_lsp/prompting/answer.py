"""Cut a chat answer down to the code for the hole: no thinking block, fences, hole marker or echoed context.

Instruction-tuned models wrap code in Markdown fences, may think aloud first, and often restate
the code around the hole; what is left goes through the usual post-processing
(:func:`dg_lsp.syntax.clean_completion`).
"""

from __future__ import annotations

import re

from dg_lsp.prompting.chat import HOLE

#: Thinking blocks: Gemma's thought channel, and the ``<think>`` convention of other chat models.
THINKING_MARKERS: tuple[tuple[str, str], ...] = (("<|channel>", "<channel|>"), ("<think>", "</think>"))

#: Characters of context scanned for an echo.
_ECHO_SCAN = 4000
#: Non-space characters an echoed piece of context needs before it is removed.
_MIN_ECHO = 3

_OPEN_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n`]*\n")


def strip_thinking(text: str) -> str:
    """Remove thinking blocks; an unclosed one (a draft still thinking) removes the rest of the text.

    A closing marker without an opener (the thought began in the prompt) drops everything before it.
    """
    for opener, closer in THINKING_MARKERS:
        if opener not in text and closer in text:
            text = text.split(closer, 1)[1]
        while opener in text:
            start = text.index(opener)
            end = text.find(closer, start + len(opener))
            if end < 0:
                text = text[:start]
                break
            text = text[:start] + text[end + len(closer) :]
    return text


def strip_fences(text: str) -> str:
    """The inside of the first Markdown code fence, if the answer has one; a lone closing fence goes too."""
    body = text.lstrip("\n")
    opening = _OPEN_FENCE.match(body)
    if opening is None:
        found = re.search(r"(?m)^[ \t]*(`{3,}|~{3,})[^\n`]*\n", text)
        if found is None:
            return re.sub(r"\n?[ \t]*(`{3,}|~{3,})[ \t]*\n?$", "", text) if re.search(r"(`{3,}|~{3,})[ \t]*\n?$", text) else text
        body, opening = text[found.start() :], _OPEN_FENCE.match(text[found.start() :])
        assert opening is not None
    fence = opening.group(1)
    inner = body[opening.end() :]
    closing = re.search(r"(?m)^[ \t]*" + re.escape(fence) + r"[ \t]*$", inner)
    if closing is not None:
        inner = inner[: closing.start()]
        return inner[:-1] if inner.endswith("\n") else inner
    return inner


def _solid(text: str) -> int:
    return len("".join(text.split()))


def drop_repeated_prefix(text: str, prefix: str) -> str:
    """Remove a restatement of the code before the hole (whole lines up to the hole) from the answer's start."""
    window = prefix[-_ECHO_SCAN:]
    starts = [0] + [i + 1 for i, ch in enumerate(window) if ch == "\n"]
    for start in starts:  # longest tail first
        tail = window[start:]
        if _solid(tail) < 1:
            continue
        if text.startswith(tail):
            return text[len(tail) :]
        bare = tail.lstrip(" \t")
        if _solid(bare) >= _MIN_ECHO and text.lstrip(" \t").startswith(bare):
            return text.lstrip(" \t")[len(bare) :]
    indent = window[starts[-1] :]
    if indent and not indent.strip() and text.startswith(indent):  # the indentation the cursor is already at
        return text[len(indent) :]
    return text


def drop_repeated_suffix(text: str, suffix: str) -> str:
    """Remove a restatement of the code after the hole (from the hole to a line end) from the answer's end."""
    window = suffix[:_ECHO_SCAN]
    ends = [i for i, ch in enumerate(window) if ch == "\n"] + [len(window)]
    for end in sorted(set(ends), reverse=True):  # longest head first
        head = window[:end]
        if _solid(head) < _MIN_ECHO + 1:
            continue
        if text.endswith(head) and len(text) > len(head):
            return text[: -len(head)]
        trimmed = head.rstrip()
        if text.rstrip().endswith(trimmed) and len(text.rstrip()) > len(trimmed):
            return text.rstrip()[: -len(trimmed)]
    return text


def clean_chat_answer(text: str, prefix: str, suffix: str) -> str:
    """The code a chat answer holds for the hole between ``prefix`` and ``suffix``."""
    text = strip_thinking(text)
    text = strip_fences(text)
    text = text.replace(HOLE, "")
    text = drop_repeated_prefix(text, prefix)
    return drop_repeated_suffix(text, suffix)

"""Special tokens shared by the tokenizer trainer, the canvas layout and the engine.

The order is part of the model format: the embedded tokenizer assigns ids in this order,
so ``<pad>`` is 0, ``<eos>`` 1 and ``<bos>`` 2, matching DiffusionGemma's config defaults.
"""

from __future__ import annotations

PAD = "<pad>"
EOS = "<eos>"
BOS = "<bos>"
UNK = "<unk>"
FIM_PREFIX = "<fim_prefix>"
FIM_SUFFIX = "<fim_suffix>"
FIM_MIDDLE = "<fim_middle>"
END_OF_MIDDLE = "<eom>"

#: Languages with their own tag token; anything else is tagged ``text``.
LANGUAGES: tuple[str, ...] = (
    "python",
    "javascript",
    "typescript",
    "tsx",
    "go",
    "rust",
    "c",
    "cpp",
    "java",
    "lua",
    "bash",
    "text",
)


def language_token(language: str) -> str:
    """The tag token for a language name (unknown names map to ``text``)."""
    return f"<lang_{language if language in LANGUAGES else 'text'}>"


SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    EOS,
    BOS,
    UNK,
    FIM_PREFIX,
    FIM_SUFFIX,
    FIM_MIDDLE,
    END_OF_MIDDLE,
) + tuple(language_token(lang) for lang in LANGUAGES)

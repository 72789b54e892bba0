"""The three shapes of completion the server and the trainer distinguish."""

from __future__ import annotations

import enum

__all__ = ["CompletionKind"]


class CompletionKind(enum.Enum):
    """What kind of text belongs at the cursor."""

    #: Cursor mid-line after code: finish the current line/statement.
    REST_OF_LINE = "rest_of_line"
    #: Cursor on a blank line inside a block: one statement.
    LINE = "line"
    #: Cursor right after a block opener or in an empty body: the whole body.
    BLOCK = "block"

"""Offset bookkeeping: LSP positions, ``str`` offsets and UTF-8 byte offsets.

Line breaks follow the LSP specification: ``\\n``, ``\\r\\n`` and ``\\r``.
Text is encoded with ``surrogatepass`` so lone surrogates (possible after JSON
decoding) keep a fixed 3-byte width instead of raising.

pygls 2.1.1's ``PositionCodec`` is not used: it needs the document split into
lines, clamps a too-large character to ``len - 1`` (and mutates the given
``Position``), and has no byte offsets; these helpers follow the LSP clamping
rule and work on one line slice or on bytes directly.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ENCODING",
    "LINE_BREAK",
    "LocalByteMap",
    "decode",
    "encode",
    "line_starts",
    "utf8_len",
    "units_to_column",
    "column_to_units",
]

ENCODING: Final = "utf-8"
LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")


def encode(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates are kept (3 bytes each)."""
    return text.encode(ENCODING, "surrogatepass")


def decode(data: bytes) -> str:
    """Inverse of :func:`encode` (invalid bytes become U+FFFD)."""
    try:
        return data.decode(ENCODING, "surrogatepass")
    except UnicodeDecodeError:
        return data.decode(ENCODING, "replace")


def utf8_len(text: str) -> int:
    """Number of UTF-8 bytes of ``text`` (O(1) for ASCII strings)."""
    return len(text) if text.isascii() else len(encode(text))


def line_starts(text: str, start: int = 0, end: int | None = None) -> list[int]:
    """Offsets just after every line break found in ``text[start:end]``."""
    stop = len(text) if end is None else end
    return [m.end() for m in LINE_BREAK.finditer(text, start, stop)]


def _units_len(text: str, encoding: str) -> int:
    if encoding == "utf-32" or text.isascii():
        return len(text)
    if encoding == "utf-8":
        return len(encode(text))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def column_to_units(line: str, column: int, encoding: str = "utf-16") -> int:
    """Code units (of the LSP position ``encoding``) of ``line[:column]``."""
    return _units_len(line[:column], encoding)


def units_to_column(line: str, units: int, encoding: str = "utf-16") -> int:
    """``str`` column for ``units`` code units into ``line``.

    Clamped to ``len(line)``; a position inside a multi-unit character rounds
    down to the start of that character.
    """
    if units <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(units, len(line))
    if encoding == "utf-8":
        data = encode(line)
        if units >= len(data):
            return len(line)
        while units > 0 and (data[units] & 0xC0) == 0x80:
            units -= 1  # back to the first byte of the split character
        return len(decode(data[:units]))
    data16 = line.encode("utf-16-le", "surrogatepass")
    if 2 * units >= len(data16):
        return len(line)
    head = data16[: 2 * units].decode("utf-16-le", "surrogatepass")
    col = len(head)
    if col and "\ud800" <= head[-1] <= "\udbff" and ord(line[col - 1]) > 0xFFFF:
        col -= 1  # the position split a surrogate pair
    return min(col, len(line))


class LocalByteMap:
    """Converts between byte and ``str`` offsets near an anchor, cheaply.

    Only the window ``text[lo:hi]`` is encoded, so a conversion costs
    O(distance to ``lo``) at C speed instead of O(document); offsets outside
    the window are clamped to it.
    """

    def __init__(self, text: str, lo: int, hi: int) -> None:
        self.lo = max(0, min(lo, len(text)))
        self.hi = max(self.lo, min(len(text), hi))
        self._text = text
        self._identity = text.isascii()
        if self._identity:
            self.byte_lo = self.lo
            self._window = b""
            self.byte_hi = self.hi
        else:
            self.byte_lo = utf8_len(text[: self.lo])
            self._window = encode(text[self.lo : self.hi])
            self.byte_hi = self.byte_lo + len(self._window)

    def to_byte(self, offset: int) -> int:
        """Byte offset of a ``str`` offset (clamped to the window)."""
        offset = min(max(offset, self.lo), self.hi)
        if self._identity:
            return offset
        return self.byte_lo + utf8_len(self._text[self.lo : offset])

    def to_str(self, byte: int) -> int:
        """``str`` offset of a byte offset (clamped; rounds down inside a char)."""
        byte = min(max(byte, self.byte_lo), self.byte_hi)
        if self._identity:
            return byte
        rel = byte - self.byte_lo
        while 0 < rel < len(self._window) and (self._window[rel] & 0xC0) == 0x80:
            rel -= 1
        return self.lo + len(decode(self._window[:rel]))

"""Render a terminal screen captured with ``tmux capture-pane -e -p`` (text with SGR escapes) to
a PNG, so Neovim screenshots can be kept as images. Needs Pillow (skipped by callers without it).

    python tests/e2e/editors/ansi_png.py screen.ansi out.png
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
_OTHER_ESC = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Za-z0-9])")

# xterm's 16 base colours (a dark theme).
_BASE16 = [
    (0x1D, 0x1F, 0x21), (0xCC, 0x66, 0x66), (0xB5, 0xBD, 0x68), (0xF0, 0xC6, 0x74),
    (0x81, 0xA2, 0xBE), (0xB2, 0x94, 0xBB), (0x8A, 0xBE, 0xB7), (0xC5, 0xC8, 0xC6),
    (0x66, 0x66, 0x66), (0xD5, 0x4E, 0x53), (0xB9, 0xCA, 0x4A), (0xE7, 0xC5, 0x47),
    (0x7A, 0xA6, 0xDA), (0xC3, 0x97, 0xD8), (0x70, 0xC0, 0xB1), (0xEA, 0xEA, 0xEA),
]
DEFAULT_FG = (0xD0, 0xD0, 0xD0)
DEFAULT_BG = (0x14, 0x16, 0x1B)


def _xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return _BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    v = 8 + 10 * (n - 232)
    return v, v, v


@dataclass(frozen=True)
class Style:
    fg: tuple[int, int, int] | None = None
    bg: tuple[int, int, int] | None = None
    bold: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    reverse: bool = False


def _apply_sgr(style: Style, params: str) -> Style:
    codes = [int(p) if p.isdigit() else 0 for p in re.split(r"[;:]", params)] if params else [0]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            style = Style()
        elif c == 1:
            style = replace(style, bold=True)
        elif c == 3:
            style = replace(style, italic=True)
        elif c == 4:
            style = replace(style, underline=True)
        elif c == 7:
            style = replace(style, reverse=True)
        elif c == 9:
            style = replace(style, strike=True)
        elif c == 22:
            style = replace(style, bold=False)
        elif c == 23:
            style = replace(style, italic=False)
        elif c == 24:
            style = replace(style, underline=False)
        elif c == 27:
            style = replace(style, reverse=False)
        elif c == 29:
            style = replace(style, strike=False)
        elif 30 <= c <= 37:
            style = replace(style, fg=_BASE16[c - 30])
        elif 90 <= c <= 97:
            style = replace(style, fg=_BASE16[c - 90 + 8])
        elif 40 <= c <= 47:
            style = replace(style, bg=_BASE16[c - 40])
        elif 100 <= c <= 107:
            style = replace(style, bg=_BASE16[c - 100 + 8])
        elif c == 39:
            style = replace(style, fg=None)
        elif c == 49:
            style = replace(style, bg=None)
        elif c in (38, 48) and i + 1 < len(codes):
            if codes[i + 1] == 5 and i + 2 < len(codes):
                rgb = _xterm256(codes[i + 2])
                i += 2
            elif codes[i + 1] == 2 and i + 4 < len(codes):
                rgb = (codes[i + 2], codes[i + 3], codes[i + 4])
                i += 4
            else:
                rgb = None
            if rgb is not None:
                style = replace(style, fg=rgb) if c == 38 else replace(style, bg=rgb)
        i += 1
    return style


def parse(ansi: str) -> list[list[tuple[str, Style]]]:
    """Screen lines as lists of (character, style)."""
    rows: list[list[tuple[str, Style]]] = []
    style = Style()
    for line in ansi.split("\n"):
        row: list[tuple[str, Style]] = []
        pos = 0
        for m in _SGR.finditer(line):
            for ch in _OTHER_ESC.sub("", line[pos : m.start()]):
                row.append((ch, style))
            style = _apply_sgr(style, m.group(1))
            pos = m.end()
        for ch in _OTHER_ESC.sub("", line[pos:]):
            row.append((ch, style))
        rows.append(row)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _font(size: int, bold: bool = False):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    names = (
        ["DejaVuSansMono-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"]
        if bold
        else ["DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"]
    )
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def render(
    ansi: str,
    out: Path,
    cols: int | None = None,
    font_size: int = 15,
    title: str | None = None,
    cursor: tuple[int, ...] | None = None,
) -> Path:
    """Draw the screen (and a bar cursor at (x, y), if given) into a PNG at ``out``."""
    from PIL import Image, ImageDraw

    rows = parse(ansi)
    regular, bold = _font(font_size), _font(font_size, bold=True)
    cw = int(round(regular.getlength("M")))
    ch = int(round(font_size * 1.35))
    ncols = cols or max((len(r) for r in rows), default=80)
    pad = 12
    top = pad + (ch + 8 if title else 0)
    img = Image.new("RGB", (ncols * cw + 2 * pad, len(rows) * ch + top + pad), DEFAULT_BG)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, pad), title, font=bold, fill=(0x9A, 0xA0, 0xA6))
    for y, row in enumerate(rows):
        for x, (c, st) in enumerate(row):
            fg, bg = st.fg or DEFAULT_FG, st.bg
            if st.reverse:
                fg, bg = (bg or DEFAULT_BG), fg
            x0, y0 = pad + x * cw, top + y * ch
            if bg is not None:
                draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=bg)
            if c != " ":
                draw.text((x0, y0 + 2), c, font=bold if st.bold else regular, fill=fg)
            if st.underline:
                draw.line([x0, y0 + ch - 2, x0 + cw - 1, y0 + ch - 2], fill=fg)
            if st.strike:
                draw.line([x0, y0 + ch // 2, x0 + cw - 1, y0 + ch // 2], fill=fg)
    if cursor is not None and len(cursor) == 2:
        x0, y0 = pad + cursor[0] * cw, top + cursor[1] * ch
        draw.rectangle([x0, y0 + 1, x0 + 1, y0 + ch - 2], fill=(0xE8, 0xE8, 0xE8))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    render(src.read_text(encoding="utf-8"), dst)


if __name__ == "__main__":
    main()

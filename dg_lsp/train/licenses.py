"""License normalisation and the permissive-only acceptance policy for the training corpus.

Every corpus file carries an SPDX-ish license string.  This module turns whatever a package
declares (PyPI ``License-Expression`` / ``License`` / classifiers, npm ``package.json``,
Debian machine-readable ``copyright`` files, ``Cargo.toml``) into SPDX identifiers and
decides whether the result is acceptable.  Only permissive licenses are kept; anything
unknown, copyleft (GPL, LGPL, AGPL, MPL, EPL, ...) or proprietary is rejected.
"""

from __future__ import annotations

import email.parser
import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: SPDX identifiers (plus a couple of LicenseRef names) accepted into the corpus.
PERMISSIVE: frozenset[str] = frozenset(
    {
        "MIT",
        "MIT-0",
        "X11",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "BSD-4-Clause-UC",
        "0BSD",
        "Apache-2.0",
        "PSF-2.0",
        "Python-2.0",
        "ISC",
        "Unlicense",
        "CC0-1.0",
        "Zlib",
        "Libpng",
        "BSL-1.0",
        "curl",
        "HPND",
        "NCSA",
        "PostgreSQL",
        "TCL",
        "LicenseRef-Public-Domain",
    }
)

#: License exceptions that do not change the permissiveness of the base license.
_OK_EXCEPTIONS: frozenset[str] = frozenset({"llvm-exception", "pcre2-exception"})

UNKNOWN = "UNKNOWN"


def _key(text: str) -> str:
    """Lower-case, unify separators, drop a trailing 'license' word and punctuation."""
    k = text.strip().lower()
    k = k.replace("_", "-")
    k = re.sub(r"[\s,]+", " ", k)
    k = k.strip(" .;:\"'")
    k = re.sub(r"^the ", "", k)
    k = re.sub(r" licen[cs]e$", "", k)
    return k.strip()


# Aliases, keyed by _key(alias).  Values are SPDX ids (or a non-permissive marker id).
_ALIASES_RAW: dict[str, str] = {
    # MIT family
    "mit": "MIT",
    "mit license": "MIT",
    "expat": "MIT",
    "expat license": "MIT",
    "mit/expat": "MIT",
    "mit-style": "MIT",
    "mit-0": "MIT-0",
    "x11": "X11",
    "mit-x11": "X11",
    # BSD family
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd 3-clause": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause",
    "bsd 3 clause": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause",
    "revised bsd": "BSD-3-Clause",
    "bsd-new": "BSD-3-Clause",
    "bsd-2": "BSD-2-Clause",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd 2-clause": "BSD-2-Clause",
    "2-clause bsd": "BSD-2-Clause",
    "simplified bsd": "BSD-2-Clause",
    "freebsd": "BSD-2-Clause",
    "bsd-simplified": "BSD-2-Clause",
    "0bsd": "0BSD",
    "bsd-zero-clause": "0BSD",
    "bsd-4-clause-uc": "BSD-4-Clause-UC",
    # Apache
    "apache": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache2": "Apache-2.0",
    "apache v2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache license v2": "Apache-2.0",
    "apache license v2.0": "Apache-2.0",
    "apache software": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0",
    "asl 2.0": "Apache-2.0",
    "asl-2.0": "Apache-2.0",
    # Python
    "psf": "PSF-2.0",
    "psf-2": "PSF-2.0",
    "psf-2.0": "PSF-2.0",
    "psfl": "PSF-2.0",
    "python software foundation": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
    "python-2.0": "Python-2.0",
    "python": "PSF-2.0",
    # Others permissive
    "isc": "ISC",
    "iscl": "ISC",
    "isc license (iscl)": "ISC",
    "unlicense": "Unlicense",
    "the unlicense (unlicense)": "Unlicense",
    "unlicense (unlicense)": "Unlicense",
    "cc0": "CC0-1.0",
    "cc0-1.0": "CC0-1.0",
    "cc0 1.0 universal": "CC0-1.0",
    "zlib": "Zlib",
    "zlib/libpng": "Zlib",
    "zlib-acknowledgement": "Zlib",
    "libpng": "Libpng",
    "libpng-2.0": "Libpng",
    "boost": "BSL-1.0",
    "bsl-1.0": "BSL-1.0",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "boost software license 1.0": "BSL-1.0",
    "curl": "curl",
    "hpnd": "HPND",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "ncsa": "NCSA",
    "university of illinois/ncsa open source": "NCSA",
    "postgresql": "PostgreSQL",
    "tcl": "TCL",
    "public-domain": "LicenseRef-Public-Domain",
    "public domain": "LicenseRef-Public-Domain",
    "publicdomain": "LicenseRef-Public-Domain",
    # Rejected families (kept as ids so reports are readable)
    "gpl": "GPL",
    "lgpl": "LGPL",
    "agpl": "AGPL",
    "mpl": "MPL",
    "mpl-2.0": "MPL-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "epl": "EPL",
    "epl-1.0": "EPL-1.0",
    "epl-2.0": "EPL-2.0",
    "cddl": "CDDL",
    "sspl": "SSPL",
    "proprietary": "Proprietary",
    "other/proprietary": "Proprietary",
    "commercial": "Proprietary",
    "unknown": UNKNOWN,
    "unlicensed": "Proprietary",  # npm's word for "all rights reserved"
    "see license": UNKNOWN,
    "see license file": UNKNOWN,
    "custom": UNKNOWN,
    "dual license": UNKNOWN,
    "other": UNKNOWN,
    "osi approved": UNKNOWN,
    "": UNKNOWN,
}
_ALIASES: dict[str, str] = {_key(k): v for k, v in _ALIASES_RAW.items()}

# Trove classifier leaf -> SPDX.
_CLASSIFIERS: dict[str, str] = {
    "mit license": "MIT",
    "mit no attribution license (mit-0)": "MIT-0",
    "bsd license": "BSD-3-Clause",
    "apache software license": "Apache-2.0",
    "python software foundation license": "PSF-2.0",
    "isc license (iscl)": "ISC",
    "the unlicense (unlicense)": "Unlicense",
    "zlib/libpng license": "Zlib",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "university of illinois/ncsa open source license": "NCSA",
    "public domain": "LicenseRef-Public-Domain",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "mozilla public license 1.1 (mpl 1.1)": "MPL",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
}

_CLASSIFIER_KEYS: dict[str, str] = {_key(k): v for k, v in _CLASSIFIERS.items()}
_SPDX_CASE: dict[str, str] = {s.lower(): s for s in PERMISSIVE}


def normalize_id(raw: str) -> str:
    """Normalise one license name (no operators) to an SPDX-ish id.

    Unknown names come back as ``UNKNOWN``; copyleft families come back with a
    recognisable id (``GPL-2.0+``, ``LGPL``, ``MPL-2.0`` ...) that :func:`is_permissive`
    rejects.
    """
    text = raw.strip().strip("()").strip()
    if not text:
        return UNKNOWN
    low = text.lower()
    if low in _SPDX_CASE:
        return _SPDX_CASE[low]
    k = _key(text)
    if k in _ALIASES:
        return _ALIASES[k]
    if k in _CLASSIFIER_KEYS:
        return _CLASSIFIER_KEYS[k]
    # Copyleft families by prefix / mention: always rejected, so we only need the family.
    m = re.match(r"^(a|l)?gpl[-v ]?(\d(?:\.\d)?)?(\+|-or-later|-only)?", k)
    if m:
        fam = {"a": "AGPL", "l": "LGPL", None: "GPL"}[m.group(1)]
        return fam + (f"-{m.group(2)}" if m.group(2) else "") + ("+" if m.group(3) in ("+", "-or-later") else "")
    if "affero" in k:
        return "AGPL"
    if "lesser general public" in k or "library general public" in k:
        return "LGPL"
    if "general public license" in k or k.startswith("gnu "):
        return "GPL"
    if k.startswith("mpl") or "mozilla public" in k:
        return "MPL"
    if k.startswith("epl") or "eclipse public" in k:
        return "EPL"
    if k.startswith("cc-by") or k.startswith("cc by"):
        return "CC-BY"
    # Fuzzy permissive matches on longer free-text names.
    if re.fullmatch(r"(the )?mit( licen[cs]e)?( \(mit\))?", k):
        return "MIT"
    if re.fullmatch(r"apache[- ]?(licen[cs]e)?[- ,]*(version |v)?2(\.0)?", k):
        return "Apache-2.0"
    if re.fullmatch(r"bsd[- ]?(2|two)[- ]?clause", k):
        return "BSD-2-Clause"
    if re.fullmatch(r"bsd[- ]?(3|three)[- ]?clause", k):
        return "BSD-3-Clause"
    return UNKNOWN


_TOKEN_RE = re.compile(r"\(|\)|\s+(?:or|and|with)\s+|\s*,?\s+(?:or|and)\s+", re.IGNORECASE)


def _tokenize(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(expr):
        before = expr[pos : m.start()].strip()
        if before:
            out.append(before)
        tok = m.group(0).strip().lower().lstrip(",").strip()
        out.append({"(": "(", ")": ")", "or": "OR", "and": "AND", "with": "WITH"}[tok])
        pos = m.end()
    rest = expr[pos:].strip()
    if rest:
        out.append(rest)
    return out


class _Parser:
    """Tiny recursive-descent parser for SPDX-like expressions."""

    def __init__(self, tokens: list[str]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse_or(self) -> Any:
        node = self.parse_and()
        while self.peek() == "OR":
            self.take()
            node = ("OR", node, self.parse_and())
        return node

    def parse_and(self) -> Any:
        node = self.parse_with()
        while self.peek() == "AND":
            self.take()
            node = ("AND", node, self.parse_with())
        return node

    def parse_with(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        if tok == "(":
            self.take()
            node = self.parse_or()
            if self.peek() != ")":
                raise ValueError("missing )")
            self.take()
        elif tok in ("OR", "AND", "WITH", ")"):
            raise ValueError(f"unexpected {tok}")
        else:
            node = ("ID", normalize_id(self.take()))
        if self.peek() == "WITH":
            self.take()
            exc = self.take() if self.peek() not in (None, "(", ")", "OR", "AND", "WITH") else ""
            node = ("WITH", node, exc)
        return node


def _render(node: Any, top: bool = True) -> str:
    kind = node[0]
    if kind == "ID":
        return str(node[1])
    if kind == "WITH":
        return f"{_render(node[1], False)} WITH {node[2]}"
    parts: list[str] = []
    stack = [node[2], node[1]]
    while stack:  # flatten chains of the same operator: (A OR B) OR C -> A OR B OR C
        n = stack.pop()
        if n[0] == kind:
            stack.extend([n[2], n[1]])
        else:
            parts.append(_render(n, False))
    text = f" {kind} ".join(parts)
    return text if top else f"({text})"


def _accept(node: Any) -> bool:
    kind = node[0]
    if kind == "ID":
        return node[1] in PERMISSIVE
    if kind == "WITH":
        base_ok = _accept(node[1])
        exc = str(node[2]).lower()
        # Exceptions only ever add permissions, but we accept only ones we know.
        return base_ok and (exc in _OK_EXCEPTIONS or exc.endswith("exception"))
    if kind == "OR":
        return _accept(node[1]) or _accept(node[2])
    return _accept(node[1]) and _accept(node[2])


_OPERATOR_RE = re.compile(r"\s(?:or|and|with)\s", re.IGNORECASE)


def _parse(raw: str) -> Any:
    text = " ".join(raw.split())
    if not _OPERATOR_RE.search(text):
        whole = normalize_id(text)
        if whole == UNKNOWN and "(" in text:
            whole = normalize_id(re.sub(r"\s*\([^)]*\)", "", text))
        if whole != UNKNOWN or not text:
            return ("ID", whole)
    # Old Cargo / npm style "MIT/Apache-2.0" means OR (but not "zlib/libpng").
    if "/" in text and not re.search(r"[\s()]", text):
        parts = [p for p in text.split("/") if p]
        node: Any = ("ID", normalize_id(parts[0]))
        for p in parts[1:]:
            node = ("OR", node, ("ID", normalize_id(p)))
        return node
    try:
        parser = _Parser(_tokenize(text))
        node = parser.parse_or()
        if parser.peek() is not None:
            return ("ID", UNKNOWN)
        return node
    except (ValueError, IndexError):
        return ("ID", UNKNOWN)


def normalize(raw: str | None) -> str:
    """Normalise a license string or expression to an SPDX-ish expression string."""
    if raw is None:
        return UNKNOWN
    return _render(_parse(raw))


def is_permissive(expr: str | None) -> bool:
    """True when (the normalised form of) ``expr`` may go into the corpus.

    ``A OR B`` is accepted when either side is permissive; ``A AND B`` only when both are.
    """
    if expr is None:
        return False
    return bool(_accept(_parse(expr)))


# --------------------------------------------------------------------------- sources


def license_from_text(text: str) -> str:
    """Guess a license from the text of a LICENSE/COPYING file (first few KB)."""
    t = " ".join(text[:6000].split()).lower()
    if not t:
        return UNKNOWN
    if "gnu affero general public license" in t:
        return "AGPL"
    if "gnu lesser general public license" in t or "gnu library general public license" in t:
        return "LGPL"
    if "gnu general public license" in t:
        return "GPL"
    if "mozilla public license" in t:
        return "MPL"
    if "apache license" in t and "version 2.0" in t:
        return "Apache-2.0"
    if "permission is hereby granted, free of charge" in t:
        return "MIT"
    if "redistribution and use in source and binary forms" in t:
        return "BSD-3-Clause" if ("neither the name" in t or "names of its contributors" in t) else "BSD-2-Clause"
    if "permission to use, copy, modify, and/or distribute this software" in t:
        return "ISC"
    if "this is free and unencumbered software released into the public domain" in t:
        return "Unlicense"
    if "python software foundation license" in t:
        return "PSF-2.0"
    if "boost software license" in t:
        return "BSL-1.0"
    if "this software is provided 'as-is', without any express or implied" in t:
        return "Zlib"
    return UNKNOWN


def license_from_pypi_metadata(text: str) -> str:
    """License of a wheel ``METADATA`` / sdist ``PKG-INFO`` file.

    Preference: ``License-Expression`` (PEP 639), then a short ``License`` field, then
    the license trove classifiers (several classifiers are AND-ed: they may describe parts
    under different licenses), then a long ``License`` field treated as license text.
    """
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    expr = msg.get("License-Expression")
    if expr and normalize(expr) != UNKNOWN:
        return normalize(expr)
    lic = (msg.get("License") or "").strip()
    if lic and "\n" not in lic and len(lic) < 120:
        norm = normalize(lic)
        if norm != UNKNOWN:
            return norm
    found: list[str] = []
    for c in msg.get_all("Classifier") or []:
        if c.startswith("License ::"):
            leaf = c.split("::")[-1].strip()
            if leaf.lower() == "osi approved":
                continue  # the bare "License :: OSI Approved" parent names no license
            norm = _CLASSIFIERS.get(leaf.lower()) or normalize_id(leaf)
            if norm not in found:  # an unrecognised classifier makes the whole thing UNKNOWN
                found.append(norm)
    if found:
        # Several classifiers may mean "parts under each" as well as a choice: be strict.
        return " AND ".join(found) if len(found) > 1 else found[0]
    if lic:
        return license_from_text(lic)
    return UNKNOWN


def license_from_npm(package_json: dict[str, Any] | str) -> str:
    """License of an npm package from its ``package.json`` (dict or JSON text)."""
    data: Any = json.loads(package_json) if isinstance(package_json, str) else package_json
    if not isinstance(data, dict):
        return UNKNOWN
    lic = data.get("license")
    if isinstance(lic, dict):
        lic = lic.get("type")
    if isinstance(lic, str) and lic.strip():
        if lic.strip().upper().startswith("SEE LICENSE"):
            return UNKNOWN
        return normalize(lic)
    lics = data.get("licenses")
    if isinstance(lics, list):
        names = [x.get("type") if isinstance(x, dict) else x for x in lics]
        parts = [normalize(str(n)) for n in names if n]
        if parts:
            return " OR ".join(parts) if len(parts) > 1 else parts[0]
    return UNKNOWN


def license_from_cargo_toml(text: str) -> str:
    """License of a crate from ``Cargo.toml`` (``license`` field of ``[package]``)."""
    in_package = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            in_package = s == "[package]"
            continue
        if in_package:
            m = re.match(r'^license\s*=\s*"([^"]*)"', s)
            if m:
                return normalize(m.group(1))
    return UNKNOWN


@dataclass
class Dep5:
    """A parsed Debian machine-readable ``copyright`` file (DEP-5)."""

    header_license: str = UNKNOWN
    #: (glob patterns, normalised license) in file order; the last match wins.
    stanzas: list[tuple[list[str], str]] = field(default_factory=list)

    def license_for(self, path: str) -> str:
        """License of ``path`` (relative to the source root) by the last matching stanza."""
        result: str | None = None
        for patterns, lic in self.stanzas:
            for pat in patterns:
                if _dep5_match(pat, path):
                    result = lic
                    break
        if result is not None:
            return result
        return self.header_license

    @property
    def main_license(self) -> str:
        """The ``Files: *`` license, else the header license."""
        for patterns, lic in self.stanzas:
            if "*" in patterns:
                return lic
        return self.header_license


def _dep5_match(pattern: str, path: str) -> bool:
    # DEP-5: '*' matches any characters including '/', '?' one character; patterns are
    # relative to the source root.  A pattern naming a directory matches everything in it.
    pat = pattern.strip().lstrip("./")
    if pat in ("*", ""):
        return True
    if fnmatch.fnmatchcase(path, pat):
        return True
    return path.startswith(pat.rstrip("/") + "/")


def parse_dep5(text: str) -> Dep5:
    """Parse a DEP-5 copyright file; non-DEP-5 files give an all-UNKNOWN result
    unless their text is recognisable license text."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    result = Dep5()
    is_dep5 = "format:" in text[:400].lower()
    if not is_dep5:
        result.header_license = license_from_text(text)
        return result
    raw_stanzas: list[tuple[list[str], str, str]] = []
    texts: dict[str, str] = {}
    header: tuple[str, str] = ("", "")
    for para in paragraphs:
        fields: dict[str, str] = {}
        current: str | None = None
        for line in para.split("\n"):
            if not line.strip() or line.startswith("#"):
                continue
            if line[0] in " \t":
                if current is not None:
                    fields[current] += "\n" + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                current = key.strip().lower()
                fields[current] = value.strip()
        lic_field = fields.get("license")
        if lic_field is None:
            continue
        first_line, _, body = lic_field.partition("\n")
        first_line = first_line.strip()
        if "files" in fields:
            raw_stanzas.append((fields["files"].split(), first_line, body))
        elif "format" in fields or "upstream-name" in fields or "source" in fields:
            header = (first_line, body)
        elif first_line and body.strip():
            texts[first_line] = body
    result.header_license = _dep5_license(header[0], header[1], texts)
    for patterns, name, body in raw_stanzas:
        result.stanzas.append((patterns, _dep5_license(name, body, texts)))
    return result


def _dep5_license(name: str, body: str, texts: dict[str, str]) -> str:
    """A DEP-5 short name, falling back to the license text for custom names
    (``BSD-3-google``, ``BSD-C3``, ``BSD-3-clause~Google`` ...)."""
    if not name:
        return UNKNOWN
    norm = normalize(name)
    if norm != UNKNOWN and not norm.startswith(UNKNOWN + " WITH "):
        return norm  # known, or a compound expression we must not second-guess
    m = re.match(r"^(.*?)\s+with\s+(.*)$", name, re.IGNORECASE)
    base, exception = (m.group(1), m.group(2)) if m else (name, "")
    guess = normalize(base.split("~", 1)[0]) if "~" in base else UNKNOWN
    if guess == UNKNOWN:
        text = body if body.strip() else texts.get(name, "") or texts.get(base, "")
        guess = license_from_text(text)
    if guess == UNKNOWN:
        return norm
    return f"{guess} WITH {exception.strip()}" if exception.strip() else guess

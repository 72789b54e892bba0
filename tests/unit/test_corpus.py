"""Corpus building: license policy, dedup, decontamination, record schema (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_lsp.train import licenses
from dg_lsp.train.corpus import Source, build_corpus, language_of, scan_package, select, skip_reason, water_fill
from dg_lsp.train.decontaminate import Decontaminator, load_humaneval, normalize_ws


@pytest.mark.parametrize(
    ("raw", "norm", "ok"),
    [
        ("MIT", "MIT", True),
        ("MIT License", "MIT", True),
        ("Expat", "MIT", True),
        ("BSD-3-clause", "BSD-3-Clause", True),
        ("BSD", "BSD-3-Clause", True),
        ("BSD-2-Clause", "BSD-2-Clause", True),
        ("Apache 2.0", "Apache-2.0", True),
        ("Apache License, Version 2.0", "Apache-2.0", True),
        ("Python Software Foundation License", "PSF-2.0", True),
        ("ISC", "ISC", True),
        ("0BSD", "0BSD", True),
        ("Unlicense", "Unlicense", True),
        ("zlib/libpng", "Zlib", True),
        ("public-domain", "LicenseRef-Public-Domain", True),
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0", True),
        ("MIT/Apache-2.0", "MIT OR Apache-2.0", True),
        ("Apache-2.0 or MIT", "Apache-2.0 OR MIT", True),
        ("GPL-2 or BSD-3-clause", "GPL-2 OR BSD-3-Clause", True),
        ("(MIT AND BSD-3-Clause)", "MIT AND BSD-3-Clause", True),
        ("BSD-3-clause with PCRE2-exception", "BSD-3-Clause WITH PCRE2-exception", True),
        ("Apache-2.0 WITH LLVM-exception", "Apache-2.0 WITH LLVM-exception", True),
        ("GPL-2+", "GPL-2+", False),
        ("GPL-3.0-only", "GPL-3.0", False),
        ("LGPL-2.1+", "LGPL-2.1+", False),
        ("AGPL-3.0", "AGPL-3.0", False),
        ("MPL-2.0", "MPL-2.0", False),
        ("GNU General Public License v3 (GPLv3)", "GPL", False),
        ("MIT AND GPL-3.0", "MIT AND GPL-3.0", False),
        ("BSD-2-clause and GPL-2", "BSD-2-Clause AND GPL-2", False),
        ("UNLICENSED", "Proprietary", False),
        ("SEE LICENSE IN LICENSE.txt", "UNKNOWN", False),
        ("", "UNKNOWN", False),
        ("Frobnicate Public License", "UNKNOWN", False),
    ],
)
def test_license_table(raw: str, norm: str, ok: bool) -> None:
    assert licenses.normalize(raw) == norm
    assert licenses.is_permissive(raw) is ok


def test_license_sources() -> None:
    meta = "Metadata-Version: 2.1\nName: x\nVersion: 1\nClassifier: License :: OSI Approved :: BSD License\n\n"
    assert licenses.license_from_pypi_metadata(meta) == "BSD-3-Clause"
    meta2 = "Metadata-Version: 2.4\nName: x\nLicense-Expression: MIT OR Apache-2.0\n\n"
    assert licenses.license_from_pypi_metadata(meta2) == "MIT OR Apache-2.0"
    both = meta.replace("\n\n", "\nClassifier: License :: OSI Approved :: GNU General Public License (GPL)\n\n")
    assert not licenses.is_permissive(licenses.license_from_pypi_metadata(both))
    afl = meta.replace("\n\n", "\nClassifier: License :: OSI Approved :: Academic Free License (AFL)\n\n")
    assert licenses.license_from_pypi_metadata(afl) == "BSD-3-Clause AND UNKNOWN"
    osi = meta.replace("\n\n", "\nClassifier: License :: OSI Approved\n\n")
    assert licenses.license_from_pypi_metadata(osi) == "BSD-3-Clause"
    meta3 = "Metadata-Version: 2.1\nName: x\nLicense: GPLv3\n\n"
    assert not licenses.is_permissive(licenses.license_from_pypi_metadata(meta3))
    assert licenses.license_from_npm({"license": "ISC"}) == "ISC"
    assert licenses.license_from_npm({"license": {"type": "MIT"}}) == "MIT"
    assert licenses.license_from_npm({"licenses": [{"type": "MIT"}, {"type": "GPL-2.0"}]}) == "MIT OR GPL-2.0"
    assert licenses.license_from_npm({}) == "UNKNOWN"
    cargo = '[package]\nname = "x"\nlicense = "MIT/Apache-2.0"\n[dependencies]\nlicense = "GPL"\n'
    assert licenses.license_from_cargo_toml(cargo) == "MIT OR Apache-2.0"
    assert licenses.license_from_text("Permission is hereby granted, free of charge, to any person") == "MIT"
    assert licenses.license_from_text("GNU GENERAL PUBLIC LICENSE Version 3") == "GPL"


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: thing

Files: *
Copyright: 2020 A
License: BSD-2-clause

Files: programs/*
Copyright: 2020 A
License: GPL-2+
 long text

Files: debian/*
License: GPL-2+

License: BSD-2-clause
 text
"""


def test_dep5_per_file() -> None:
    d = licenses.parse_dep5(DEP5)
    assert d.main_license == "BSD-2-Clause"
    assert d.license_for("lib/lz4.c") == "BSD-2-Clause"
    assert d.license_for("programs/main.c") == "GPL-2+"
    assert not licenses.is_permissive(d.license_for("programs/util/x.c"))


def test_language_and_filters() -> None:
    assert language_of("a/b.py", "") == "python"
    assert language_of("a/b.d.ts", "") == "typescript"
    assert language_of("a/b.tsx", "") == "tsx"
    assert language_of("inc/x.h", "", "cpp") == "cpp"
    assert language_of("usr/bin/neofetch", "#!/usr/bin/env bash\n") == "bash"
    assert language_of("README.md", "") is None
    code = b"def f():\n    return 1\n" * 5
    assert skip_reason("pkg/mod.py", code) is None
    assert skip_reason("pkg/node_modules/x/mod.js", code) == "vendored"
    assert skip_reason("pkg/dist/app.min.js", code) == "minified"
    assert skip_reason("pkg/big.js", b"var a=1;" * 300) == "long_lines"
    assert skip_reason("pkg/gen.go", b"// Code generated by protoc-gen-go. DO NOT EDIT.\n" + code) == "generated"
    assert skip_reason("pkg/latin1.py", b"# caf\xe9\n" + code) == "non_utf8"
    assert skip_reason("pkg/huge.py", b"x = 1\n" * 200_000) == "too_large"


def test_water_fill() -> None:
    alloc = water_fill({"a": 10, "b": 100, "c": 100}, 110)
    assert alloc["a"] == 10 and alloc["b"] + alloc["c"] == 100 and abs(alloc["b"] - alloc["c"]) <= 1


def _fake_sdist(root: Path, name: str, license_classifier: str = "MIT License") -> Path:
    d = root / f"{name}-1.0"
    (d / name).mkdir(parents=True)
    (d / "PKG-INFO").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
        f"Classifier: License :: OSI Approved :: {license_classifier}\n\n",
        encoding="utf-8",
    )
    (d / name / "__init__.py").write_text('"""Package."""\n\nVERSION = "1.0"\n\n\ndef hello() -> str:\n    return "hi"\n', encoding="utf-8")
    (d / name / "core.py").write_text("def add_all(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n", encoding="utf-8")
    # same content, different whitespace: an exact duplicate after normalisation
    (d / name / "core_copy.py").write_text("def add_all(xs):\n  total = 0\n  for x in xs:\n    total += x\n  return total\n", encoding="utf-8")
    (d / name / "helper.js").write_text("// helper module: small numeric helpers\nexport function twice(x) {\n  return 2 * x;\n}\n", encoding="utf-8")
    (d / name / "data.json").write_text('{"a": 1}\n', encoding="utf-8")
    (d / name / "app.min.js").write_text("function a(){return 1}" * 4, encoding="utf-8")
    (d / name / "vendor").mkdir()
    (d / name / "vendor" / "lib.py").write_text("def vendored_code():\n    return 'not ours'\n" * 3, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def decon() -> Decontaminator:
    return Decontaminator.from_installed()


def test_decontamination(decon: Decontaminator) -> None:
    problems = load_humaneval()
    assert len(problems) == 164
    prob = max(problems, key=lambda p: len(p["canonical_solution"]))
    leaked = "import os\n\n" + prob["prompt"] + prob["canonical_solution"] + "\n\nprint('done')\n"
    assert decon.check("pkg/solutions.py", leaked) is not None
    # the solution body alone, reindented, is still caught
    body_only = "def mine(x):\n" + "\n".join("  " + ln.strip() for ln in prob["canonical_solution"].splitlines()) + "\n"
    assert decon.check("pkg/other.py", body_only) is not None
    # the prompt's signature + docstring alone is caught
    sig_only = prob["prompt"].replace("    ", "\t") + "    pass\n"
    assert decon.check("pkg/stub.py", normalize_ws(sig_only)) is not None
    unrelated = "def parse_config(path):\n    with open(path) as fh:\n        return fh.read().splitlines()\n"
    assert decon.check("pkg/config.py", unrelated) is None
    assert decon.check("evals/humaneval_tasks.py", unrelated) is not None
    assert decon.check("bench/mbpp/run.py", unrelated) is not None
    assert decon.check("pkg/x.py", "# copied from HumanEval/12\n" + unrelated) is not None


def test_corpus_record_schema(tmp_path: Path, decon: Decontaminator) -> None:
    good = _fake_sdist(tmp_path / "dl", "goodpkg")
    gpl = _fake_sdist(tmp_path / "dl", "gplpkg", "GNU General Public License v3 (GPLv3)")
    leak = _fake_sdist(tmp_path / "dl", "leakpkg")
    prob = load_humaneval()[0]
    (leak / "leakpkg" / "solved.py").write_text(prob["prompt"] + prob["canonical_solution"], encoding="utf-8")
    src_good = Source("pypi", "goodpkg", "1.0", kind="sdist")
    src_gpl = Source("pypi", "gplpkg", "1.0", kind="sdist")
    src_leak = Source("pypi", "leakpkg", "1.0", kind="sdist")

    scan = scan_package(src_good, good)
    assert scan.license == "MIT"
    rels = sorted(c.rel for c in scan.candidates)
    assert rels == ["goodpkg/__init__.py", "goodpkg/core.py", "goodpkg/core_copy.py", "goodpkg/helper.js"]
    assert scan.skipped["minified"] == 1 and scan.skipped["vendored"] == 1
    assert scan_package(src_gpl, gpl).candidates == []
    _, dups = select([scan], 10**9)
    assert dups == 1

    out = tmp_path / "corpus"
    manifest = build_corpus(
        [(src_good, good), (src_gpl, gpl), (src_leak, leak)], out, max_mb=10, decontaminator=decon, progress=False
    )
    recs = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = {"text", "path", "language", "package", "version", "registry", "license", "sha256"}
    assert recs and all(set(r) == keys for r in recs)
    assert {r["package"] for r in recs} == {"goodpkg"}  # gpl rejected; leakpkg's files dedup/decontaminated
    assert {r["language"] for r in recs} == {"python", "javascript"}
    assert all(r["registry"] == "pypi" and r["license"] == "MIT" and r["version"] == "1.0" for r in recs)
    assert all(r["path"].startswith("pypi/goodpkg-1.0/") for r in recs)
    import hashlib

    assert all(hashlib.sha256(r["text"].encode()).hexdigest() == r["sha256"] for r in recs)
    assert manifest["dedup"]["exact_duplicates_dropped"] >= 1 + 3  # core_copy + leakpkg's copies of goodpkg files
    assert manifest["decontamination"]["dropped"] == 1
    assert manifest["filtered"]["license"] >= 4
    saved = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert saved["languages"]["python"]["bytes"] == sum(len(r["text"].encode()) for r in recs if r["language"] == "python")
    rows = {r["name"]: r for r in saved["packages"]}
    assert rows["goodpkg"]["files"] == len(recs) and rows["gplpkg"]["files"] == 0
    assert rows["goodpkg"]["license"] == "MIT" and rows["goodpkg"]["registry"] == "pypi"


def test_dep5_custom_license_names_use_text() -> None:
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2008 Google
License: BSD-3-google

Files: util/rune.cc
License: Lucent

License: BSD-3-google
 Redistribution and use in source and binary forms, with or without
 modification, are permitted provided that ... Neither the name of Google Inc.

License: Lucent
 Some bespoke words.
"""
    d = licenses.parse_dep5(text)
    assert d.license_for("re2/re2.cc") == "BSD-3-Clause"
    assert d.license_for("util/rune.cc") == "UNKNOWN"
    assert licenses.normalize("BSD-3-clause~Google") == "UNKNOWN"  # only via DEP-5 handling
    d2 = licenses.parse_dep5(text.replace("BSD-3-google", "BSD-3-clause~Google"))
    assert d2.license_for("x.cc") == "BSD-3-Clause"


def test_data_tables_and_diff_extraction(tmp_path: Path) -> None:
    import gzip

    from dg_lsp.train.corpus import data_fraction, extract_diff_new_files

    table = "TABLE = [\n" + "".join(f"    0x{i:08x}, 0x{i * 7:08x},\n" for i in range(200)) + "]\n"
    assert data_fraction(table) > 0.35
    assert skip_reason("pkg/tables.py", table.encode()) == "data_table"
    diff = (
        "--- pkg-1.0.orig/debian/copyright\n+++ pkg-1.0/debian/copyright\n@@ -0,0 +1,3 @@\n"
        "+Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n+\n+Files: *\n"
        "--- pkg-1.0.orig/src/a.c\n+++ pkg-1.0/src/a.c\n@@ -1 +1 @@\n-int a;\n+int b;\n"
    )
    p = tmp_path / "pkg_1.0-1.diff.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(diff)
    extract_diff_new_files(p, tmp_path / "src")
    assert (tmp_path / "src" / "debian" / "copyright").read_text(encoding="utf-8").startswith("Format:")
    assert not (tmp_path / "src" / "src" / "a.c").exists()

"""Editor-side latency of the real dg-lsp server: inline completion and rewrite-selection over stdio.

Spawns ``python -m dg_lsp serve``, waits for the model, then for every cursor in
``fixtures/cursors.json`` removes the expected middle from its fixture file, opens the result and
times ``textDocument/inlineCompletion`` at the cursor, ``--reps`` times. Between repetitions one
space is toggled at the end of the file (an incremental ``didChange``): the document version
changes, so the server's completion cache cannot answer and the model really runs (and the
prompt cache has to re-encode the prefix, which follows the suffix in the encoder layout).
With ``--typed-ms D`` each request follows a keystroke instead, as in an editor: the document is
opened without the character before the cursor, a ``didChange`` types it, and the request is sent
``D`` ms later (an editor's debounce: the Neovim plugin asks 100 ms after the key and sends the
change within 20 ms, so ~80-100 ms; until session 30 150 and 50 ms; VS Code less). Repetitions then go round all cursors in turn, so
every request's prompt differs from the one before it (a cursor moved, then a key typed). Run it
with ``--completion '{"prefetch": false}'`` and without to see what encoding the prompt in that
gap (the server's prompt prefetch) takes off a request.
``dg.rewriteSelection`` (``apply: false``) is timed separately over a few whole-line ranges of
each complete fixture. Latency is wall time at the client, from sending the request to reading
the answer: JSON-RPC, context cutting, encoding, denoising, post-processing, parse check.

    python benchmarks/lsp_latency.py                      # embedded default model
    python benchmarks/lsp_latency.py --model /tmp/tiny-bench --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    LANGUAGE_IDS,
    RESULTS_DIR,
    LspClient,
    LspError,
    command_line,
    end_position,
    fmt,
    has_suggestion,
    inline_params,
    load_cursors,
    machine_info,
    machine_line,
    markdown_table,
    offset_at,
    plot_latency_distributions,
    pyplot,
    summarize,
    text_table,
    utc_now,
    write_json,
)

SINGLE_LINE_KINDS = ("REST_OF_LINE", "LINE")
KIND_ORDER = ("REST_OF_LINE", "LINE", "BLOCK")
#: Line counts of the rewrite ranges, used in turn.
REWRITE_SPANS = (1, 2, 3)

CAPABILITIES: dict[str, Any] = {
    "window": {"workDoneProgress": False},
    "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}},
    "textDocument": {
        "synchronization": {"dynamicRegistration": False},
        "inlineCompletion": {"dynamicRegistration": False},
    },
}


@dataclass
class Sample:
    """One timed request."""

    op: str  # "inline" or "rewrite"
    kind: str  # REST_OF_LINE / LINE / BLOCK, or "<n> lines" for rewrites
    file: str
    index: int  # cursor or range number within the file
    rep: int
    ms: float
    drafts: int  # dg/draft notifications that arrived while it ran
    answered: bool  # a non-empty completion / a proposed rewrite came back
    note: str | None = None  # the server's reason when a rewrite proposed nothing
    first_draft_ms: float | None = None  # from sending the request to the first dg/draft
    variant: str | None = None  # --typed-ab: "<option> on" / "<option> off"


@dataclass(frozen=True)
class Case:
    """One cursor of ``fixtures/cursors.json``, with its document prepared."""

    file: str
    index: int
    kind: str
    line: int
    character: int
    text: str  # the fixture with the expected middle removed
    expected: str = ""  # that middle


class OpenDoc:
    """A document opened in the server; toggles a trailing space to make new versions."""

    def __init__(self, client: LspClient, path: Path, language_id: str, text: str) -> None:
        self.client = client
        self.uri = path.resolve().as_uri()
        self.text = text
        self.version = 1
        self._spaced = False
        client.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": self.uri, "languageId": language_id, "version": 1, "text": text}},
        )

    def toggle_trailing_space(self) -> None:
        """Append one space at the end of the file, or remove the one appended last time."""
        line, character = end_position(self.text)
        if self._spaced:
            change = {
                "range": {"start": {"line": line, "character": character - 1}, "end": {"line": line, "character": character}},
                "text": "",
            }
            self.text = self.text[:-1]
        else:
            change = {
                "range": {"start": {"line": line, "character": character}, "end": {"line": line, "character": character}},
                "text": " ",
            }
            self.text += " "
        self._spaced = not self._spaced
        self.version += 1
        self.client.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": self.uri, "version": self.version}, "contentChanges": [change]},
        )

    def type_text(self, offset: int, typed: str) -> None:
        """Insert ``typed`` at ``offset`` with an incremental didChange (a keystroke)."""
        line, character = end_position(self.text[:offset])
        at = {"line": line, "character": character}
        self.text = self.text[:offset] + typed + self.text[offset:]
        self.version += 1
        self.client.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": self.uri, "version": self.version}, "contentChanges": [{"range": {"start": at, "end": at}, "text": typed}]},
        )

    def close(self) -> None:
        """didClose."""
        self.client.notify("textDocument/didClose", {"textDocument": {"uri": self.uri}})


# -- cases -------------------------------------------------------------------------------------


def fixture_files(languages: list[str] | None) -> list[str]:
    """The ``<lang>/<file>`` keys of cursors.json whose fixture exists, filtered by language."""
    cursors = load_cursors(FIXTURES_DIR)
    keys = [key for key in cursors if (FIXTURES_DIR / key).is_file()]
    if languages:
        keys = [key for key in keys if key.split("/", 1)[0] in languages]
    return keys


def inline_cases(files: list[str], kinds: list[str] | None, max_cursors: int | None) -> list[Case]:
    """Every selected cursor, its expected middle removed from the fixture."""
    cursors = load_cursors(FIXTURES_DIR)
    cases: list[Case] = []
    for key in files:
        full = (FIXTURES_DIR / key).read_text(encoding="utf-8")
        chosen: dict[str, int] = defaultdict(int)
        for index, cursor in enumerate(cursors[key]):
            kind = str(cursor["kind"]).upper()
            if kinds and kind not in kinds:
                continue
            if max_cursors is not None and chosen[kind] >= max_cursors:
                continue
            start = offset_at(full, int(cursor["line"]), int(cursor["character"]))
            expected = str(cursor["expected"])
            if full[start : start + len(expected)] != expected:
                print(f"warning: {key} cursor {index}: expected text not found at the cursor; skipped", file=sys.stderr)
                continue
            text = full[:start] + full[start + len(expected) :]
            cases.append(Case(key, index, kind, int(cursor["line"]), int(cursor["character"]), text, expected))
            chosen[kind] += 1
    return cases


def rewrite_ranges(text: str, count: int) -> list[tuple[dict[str, Any], int]]:
    """``count`` whole-line ranges spread over the file's non-blank lines: (LSP range, line count)."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    out: list[tuple[dict[str, Any], int]] = []
    seen: set[int] = set()
    for k in range(count):
        if not candidates:
            break
        first = candidates[min(len(candidates) - 1, (k + 1) * len(candidates) // (count + 1))]
        if first in seen:
            continue
        seen.add(first)
        span = REWRITE_SPANS[k % len(REWRITE_SPANS)]
        last = min(first + span, len(lines) - 1)
        if last > first:
            end = {"line": last, "character": 0}
        else:  # the file's last line
            end = {"line": first, "character": len(lines[first])}
        out.append(({"start": {"line": first, "character": 0}, "end": end}, max(1, last - first)))
    return out


# -- the session -------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, log: Path) -> tuple[LspClient, Any]:
    """Spawn the server and return the client and its open stderr log file."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    stderr = log.open("wb")
    command = [sys.executable, "-m", "dg_lsp", "serve", "--log-level", args.server_log_level]
    return LspClient(command, env=env, stderr=stderr), stderr


def init_options(args: argparse.Namespace) -> dict[str, Any]:
    """The server's initializationOptions for these arguments."""
    options: dict[str, Any] = {"model": args.model, "completion": json.loads(args.completion)}
    if args.device:
        options["device"] = args.device
    if args.dtype:
        options["dtype"] = args.dtype
    if args.fast_path is not None:
        options["fastPath"] = args.fast_path == "on"
    if args.compile is not None:
        options["compile"] = args.compile
    return options


def set_completion_option(client: LspClient, args: argparse.Namespace, name: str, on: bool) -> None:
    """Set a boolean ``completion`` option (didChangeConfiguration) and wait until the server took it."""
    options = init_options(args)
    options["completion"] = {**options["completion"], name: on}
    client.notify("workspace/didChangeConfiguration", {"settings": {"dgLsp": options}})
    for _ in range(500):
        info = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=60)
        if isinstance(info, dict) and info.get("options", {}).get("completion", {}).get(name) is on:
            return
        time.sleep(0.01)
    raise LspError(f"the server did not take completion.{name}={on}")


def initialize(client: LspClient, args: argparse.Namespace) -> dict[str, Any]:
    """initialize / initialized, then poll ``dg.info`` until the model is no longer loading."""
    options = init_options(args)
    client.request(
        "initialize",
        {
            "processId": os.getpid(),
            "rootUri": FIXTURES_DIR.resolve().as_uri(),
            "capabilities": CAPABILITIES,
            "initializationOptions": options,
            "clientInfo": {"name": "dg-lsp-bench", "version": "1"},
        },
        timeout=args.load_timeout,
    )
    client.notify("initialized", {})
    deadline = time.monotonic() + args.load_timeout
    while True:
        info = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=60)
        if not isinstance(info, dict):
            raise LspError(f"dg.info returned {info!r}")
        if info.get("status") != "loading":
            return info
        if time.monotonic() > deadline:
            raise LspError(f"the model did not load within {args.load_timeout} s")
        time.sleep(0.2)


#: ``dg.info`` compile states after which the step in use no longer changes.
COMPILE_SETTLED = ("ready", "failed", "off")


def wait_for_compile(client: LspClient, timeout: float) -> tuple[dict[str, Any], float]:
    """Poll ``dg.info`` until the compiled step is swapped in (or failed, or never coming); (info, seconds waited)."""
    started = time.monotonic()
    while True:
        info = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=60)
        if not isinstance(info, dict):
            raise LspError(f"dg.info returned {info!r}")
        state = (info.get("compile") or {}).get("state", "off")
        if state in COMPILE_SETTLED:
            return info, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise LspError(f"the compiled step was not ready within {timeout} s (state {state})")
        time.sleep(0.5)


class DraftClock:
    """Records when the first ``dg/draft`` notification arrives after :meth:`start`."""

    def __init__(self, client: LspClient) -> None:
        self.started = 0.0
        self.first: float | None = None
        client.on_notification = self._seen

    def start(self) -> None:
        self.started, self.first = time.perf_counter(), None

    def _seen(self, method: str, params: Any) -> None:
        if method == "dg/draft" and self.first is None:
            self.first = time.perf_counter()

    def first_ms(self) -> float | None:
        return (self.first - self.started) * 1000.0 if self.first is not None else None


def inline_request(client: LspClient, doc: OpenDoc, case: Case, timeout: float) -> tuple[float, bool, int]:
    """Time one inline completion at the case's cursor: (ms, non-empty answer, drafts seen)."""
    before = client.notification_counts["dg/draft"]
    if isinstance(getattr(client, "draft_clock", None), DraftClock):
        client.draft_clock.start()  # type: ignore[attr-defined]
    params = inline_params(doc.uri, case.line, case.character)
    result, seconds = client.timed_request("textDocument/inlineCompletion", params, timeout=timeout)
    return seconds * 1000.0, has_suggestion(result), client.notification_counts["dg/draft"] - before


def typed_request(client: LspClient, case: Case, typed_ms: float, timeout: float) -> tuple[float, bool, int]:
    """Open the case's document without the character before the cursor, type it, wait ``typed_ms``, time the request."""
    language = case.file.split("/", 1)[0]
    cursor = offset_at(case.text, case.line, case.character)
    typed = case.text[cursor - 1 : cursor]
    doc = OpenDoc(client, FIXTURES_DIR / case.file, LANGUAGE_IDS.get(language, language), case.text[: cursor - len(typed)] + case.text[cursor:])
    try:
        if typed:
            doc.type_text(cursor - 1, typed)
        time.sleep(typed_ms / 1000.0)
        return inline_request(client, doc, case, timeout)
    finally:
        doc.close()


def rewrite_request(client: LspClient, doc: OpenDoc, range_: dict[str, Any], timeout: float) -> tuple[float, bool, int, str | None]:
    """Time one ``dg.rewriteSelection`` without applying it: (ms, proposed, drafts, server note)."""
    before = client.notification_counts["dg/draft"]
    params = {"command": "dg.rewriteSelection", "arguments": [doc.uri, range_, {"apply": False}]}
    result, seconds = client.timed_request("workspace/executeCommand", params, timeout=timeout)
    proposed = isinstance(result, dict) and result.get("text") is not None
    note = result.get("error") if isinstance(result, dict) else None
    return seconds * 1000.0, proposed, client.notification_counts["dg/draft"] - before, note


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON report (also used by the smoke test)."""
    from tqdm import tqdm

    languages = [s.strip() for s in args.languages.split(",") if s.strip()] if args.languages else None
    kinds = [s.strip().upper() for s in args.kinds.split(",") if s.strip()] if args.kinds else None
    files = fixture_files(languages)
    if not files:
        raise SystemExit("lsp_latency: no fixture files selected")
    cases = inline_cases(files, kinds, args.max_cursors)
    ranges = {key: rewrite_ranges((FIXTURES_DIR / key).read_text(encoding="utf-8"), args.rewrite_ranges) for key in files}
    total = len(cases) * args.reps + sum(len(r) for r in ranges.values()) * args.rewrite_reps

    log_path = Path(args.server_log) if args.server_log else Path(tempfile.mkstemp(prefix="dg-lsp-bench-", suffix=".log")[1])
    started = time.perf_counter()
    client, log_file = start_server(args, log_path)
    samples: list[Sample] = []
    try:
        try:
            info = initialize(client, args)
        except LspError as exc:
            raise SystemExit(f"lsp_latency: server did not start: {exc}\n{_tail(log_path)}") from exc
        ready_s = time.perf_counter() - started
        if info.get("status") != "ready":
            raise SystemExit(f"lsp_latency: the model failed to load: {info.get('error')}; {client.messages}")
        print(
            f"server ready in {ready_s:.1f} s: {info.get('model')} ({fmt(info.get('parameters'))} parameters) "
            f"on {info.get('device')}/{info.get('dtype')}",
            file=sys.stderr,
        )
        compile_wait_s: float | None = None
        if args.wait_compile:
            try:
                info, compile_wait_s = wait_for_compile(client, args.compile_timeout)
            except LspError as exc:
                raise SystemExit(f"lsp_latency: {exc}") from exc
            print(f"compiled step {info['compile'].get('state')} {compile_wait_s:.1f} s after ready", file=sys.stderr)
        clock = DraftClock(client)
        client.draft_clock = clock  # type: ignore[attr-defined]
        _warm_up(client, cases, ranges, args)
        bar = tqdm(total=total, desc="requests", unit="req", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)
        if args.typed_ms is None:
            for case in cases:
                language = case.file.split("/", 1)[0]
                doc = OpenDoc(client, FIXTURES_DIR / case.file, LANGUAGE_IDS.get(language, language), case.text)
                for rep in range(args.reps):
                    if rep:
                        doc.toggle_trailing_space()
                    ms, answered, drafts = inline_request(client, doc, case, args.request_timeout)
                    samples.append(
                        Sample("inline", case.kind, case.file, case.index, rep, ms, drafts, answered, first_draft_ms=clock.first_ms())
                    )
                    bar.set_postfix_str(f"inline {case.kind} {ms:,.0f} ms", refresh=False)
                    bar.update(1)
                doc.close()
        else:
            for rep in range(args.reps):
                for number, case in enumerate(cases):
                    variant = None
                    if args.typed_ab:  # alternate per request; each cursor gets both in turn over the reps
                        on = (rep + number) % 2 == 0
                        set_completion_option(client, args, args.ab_option, on)
                        variant = f"{args.ab_option} {'on' if on else 'off'}"
                    ms, answered, drafts = typed_request(client, case, args.typed_ms, args.request_timeout)
                    samples.append(
                        Sample("inline", case.kind, case.file, case.index, rep, ms, drafts, answered,
                               first_draft_ms=clock.first_ms(), variant=variant)
                    )
                    bar.set_postfix_str(f"inline {case.kind} {ms:,.0f} ms", refresh=False)
                    bar.update(1)
        for key, file_ranges in ranges.items():
            language = key.split("/", 1)[0]
            text = (FIXTURES_DIR / key).read_text(encoding="utf-8")
            doc = OpenDoc(client, FIXTURES_DIR / key, LANGUAGE_IDS.get(language, language), text)
            for index, (range_, lines) in enumerate(file_ranges):
                for rep in range(args.rewrite_reps):
                    if rep:
                        doc.toggle_trailing_space()
                    ms, proposed, drafts, note = rewrite_request(client, doc, range_, args.request_timeout)
                    samples.append(Sample("rewrite", f"{lines} line{'s' * (lines > 1)}", key, index, rep, ms, drafts, proposed, note))
                    bar.set_postfix_str(f"rewrite {ms:,.0f} ms", refresh=False)
                    bar.update(1)
            doc.close()
        bar.close()
        final = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=60)
    finally:
        client.close()
        log_file.close()
    report = _report(args, info, final, samples, ready_s, log_path)
    report["server"]["compile_wait_seconds"] = compile_wait_s
    report["server"]["compile_at_end"] = final.get("compile") if isinstance(final, dict) else None
    return report


def _warm_up(client: LspClient, cases: list[Case], ranges: dict[str, list[tuple[dict[str, Any], int]]], args: argparse.Namespace) -> None:
    """Untimed requests first: the first real request would otherwise pay one-off costs."""
    if args.warmup <= 0 or not cases:
        return
    case = cases[0]
    language = case.file.split("/", 1)[0]
    doc = OpenDoc(client, FIXTURES_DIR / case.file, LANGUAGE_IDS.get(language, language), case.text)
    for i in range(args.warmup):
        if i:
            doc.toggle_trailing_space()
        inline_request(client, doc, case, args.request_timeout)
    doc.close()
    key = next((k for k, r in ranges.items() if r), None)
    if key is not None and args.rewrite_reps > 0:
        text = (FIXTURES_DIR / key).read_text(encoding="utf-8")
        doc = OpenDoc(client, FIXTURES_DIR / key, LANGUAGE_IDS.get(key.split("/", 1)[0], "plaintext"), text)
        for _ in range(args.warmup):
            rewrite_request(client, doc, ranges[key][0][0], args.request_timeout)
        doc.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- report ------------------------------------------------------------------------------------


def group_samples(samples: list[Sample]) -> dict[str, list[float]]:
    """Latencies (ms) per reported operation, in table order."""
    groups: dict[str, list[float]] = {}
    inline = [s for s in samples if s.op == "inline"]
    groups["inline (all kinds)"] = [s.ms for s in inline]
    groups["inline single-line (REST_OF_LINE+LINE)"] = [s.ms for s in inline if s.kind in SINGLE_LINE_KINDS]
    for kind in KIND_ORDER:
        groups[f"inline {kind}"] = [s.ms for s in inline if s.kind == kind]
    firsts = [s.first_draft_ms for s in inline if s.first_draft_ms is not None]
    groups["first draft after an inline request"] = firsts
    rewrites = [s for s in samples if s.op == "rewrite"]
    groups["rewrite (all ranges)"] = [s.ms for s in rewrites]
    for kind in sorted({s.kind for s in rewrites}):
        groups[f"rewrite {kind}"] = [s.ms for s in rewrites if s.kind == kind]
    return {name: values for name, values in groups.items() if values}


def paired_ratios(samples: list[Sample], kinds: tuple[str, ...]) -> list[float]:
    """Per cursor of ``kinds``: mean ms with the option on over mean ms with it off (``--typed-ab``)."""
    by_case: dict[tuple[str, int], dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.op == "inline" and s.variant is not None and s.kind in kinds:
            by_case[(s.file, s.index)][s.variant.endswith(" on")].append(s.ms)
    return [sum(v[True]) / len(v[True]) / (sum(v[False]) / len(v[False])) for v in by_case.values() if v[True] and v[False]]


def ab_report(samples: list[Sample]) -> dict[str, Any] | None:
    """``--typed-ab``: each variant's summaries and the per-cursor paired ratios (on / off)."""
    variants = sorted({s.variant for s in samples if s.variant is not None})
    if not variants:
        return None
    return {
        "summary_ms": {v: {name: summarize(values) for name, values in group_samples([s for s in samples if s.variant == v]).items()} for v in variants},
        "paired_ratio_on_over_off": {
            "single-line": summarize(paired_ratios(samples, SINGLE_LINE_KINDS)),
            "block": summarize(paired_ratios(samples, ("BLOCK",))),
            "all": summarize(paired_ratios(samples, KIND_ORDER)),
        },
    }


def _report(
    args: argparse.Namespace,
    info: dict[str, Any],
    final: Any,
    samples: list[Sample],
    ready_s: float,
    log_path: Path,
) -> dict[str, Any]:
    groups = group_samples(samples)
    summary = {name: summarize(values) for name, values in groups.items()}
    single = summary.get("inline single-line (REST_OF_LINE+LINE)")
    per_language: dict[str, dict[str, Any]] = defaultdict(dict)
    for op in ("inline", "rewrite"):
        for language in sorted({s.file.split("/", 1)[0] for s in samples if s.op == op}):
            values = [s.ms for s in samples if s.op == op and s.file.startswith(language + "/")]
            per_language[language][op] = summarize(values)
    machine = machine_info(device=info.get("device"))
    machine["dtype"] = info.get("dtype")
    machine["torch_threads"] = args.threads  # None = torch's default (one per core)
    counters = final if isinstance(final, dict) else {}
    return {
        "benchmark": "lsp_latency",
        "date": utc_now(),
        "command": command_line(__file__, args.argv),
        "machine": machine,
        "server": {
            key: info.get(key)
            for key in ("version", "model", "modelPath", "device", "dtype", "parameters", "canvasLength", "loadSeconds", "warmupSeconds", "compile", "options")
        }
        | {"ready_seconds": ready_s, "log": str(log_path)},
        "settings": {
            "reps": args.reps,
            "rewrite_reps": args.rewrite_reps,
            "rewrite_ranges": args.rewrite_ranges,
            "warmup": args.warmup,
            "languages": args.languages,
            "kinds": args.kinds,
            "edit_between_reps": "toggle one space at the end of the file (didChange)"
            if args.typed_ms is None
            else "none: each request follows a typed character (didChange), reps go round all cursors",
            "typed_ms": args.typed_ms,
            "typed_ab": args.typed_ab,
            "ab_option": args.ab_option if args.typed_ab else None,
            "threads": args.threads,
        },
        "summary_ms": summary,
        "ab": ab_report(samples),
        "target": {
            "single_line_p50_ms": single["p50"] if single else None,
            "target_ms": args.target_ms,
            "met": bool(single and single["p50"] <= args.target_ms),
        },
        "answered": {
            "inline": sum(s.answered for s in samples if s.op == "inline"),
            "inline_total": sum(s.op == "inline" for s in samples),
            "rewrite": sum(s.answered for s in samples if s.op == "rewrite"),
            "rewrite_total": sum(s.op == "rewrite" for s in samples),
        },
        "per_language_ms": per_language,
        "server_counters": {k: counters.get(k) for k in ("jobs", "cacheHits", "typeThroughHits", "prefetch", "promptCache")},
        "samples": [asdict(s) for s in samples],
    }


def print_report(report: dict[str, Any]) -> None:
    """The terminal table, sanity warnings and the RESULTS.md block."""
    summary = report["summary_ms"]
    rows = [[name, s["count"], s["p50"], s["p95"], s["mean"], s["min"], s["max"]] for name, s in summary.items()]
    server = report["server"]
    print()
    print(f"dg-lsp latency at the client: {server['model']} on {server['device']}/{server['dtype']} (ms)")
    print(text_table(["operation", "count", "p50", "p95", "mean", "min", "max"], rows))
    target = report["target"]
    if target["single_line_p50_ms"] is not None:
        verdict = "met" if target["met"] else "NOT met"
        print(f"\nsingle-line p50 {target['single_line_p50_ms']:,.0f} ms; target <= {target['target_ms']:g} ms: {verdict}")
    answered = report["answered"]
    print(
        f"non-empty answers: inline {answered['inline']}/{answered['inline_total']}, "
        f"rewrite {answered['rewrite']}/{answered['rewrite_total']}"
    )
    counters = report["server_counters"]
    if counters.get("cacheHits") or counters.get("typeThroughHits"):
        print(
            f"warning: the server answered {counters.get('cacheHits')} requests from its completion cache and "
            f"{counters.get('typeThroughHits')} by type-through; those latencies are not model runs",
            file=sys.stderr,
        )
    print("\n--- markdown for benchmarks/RESULTS.md ---")
    print(markdown_block(report))
    print("--- end ---")


def markdown_block(report: dict[str, Any]) -> str:
    """A RESULTS.md section: command, machine, date and the numbers."""
    server, settings = report["server"], report["settings"]
    completion = (server.get("options") or {}).get("completion") or {}
    params = server.get("parameters")
    size = f"{params / 1e6:.1f}M parameters" if isinstance(params, (int, float)) else "parameters unknown"
    rows = [[name, s["count"], s["p50"], s["p95"], s["mean"]] for name, s in report["summary_ms"].items()]
    target = report["target"]
    lines = [
        f"### Editor latency over LSP ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: `{server['model']}` ({size}), {server['device']}/{server['dtype']}; "
        f"server ready {server['ready_seconds']:.1f} s after spawn (load {fmt(server.get('loadSeconds'))} s, "
        f"warm-up {fmt(server.get('warmupSeconds'))} s).",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        markdown_table(["operation", "n", "p50 ms", "p95 ms", "mean ms"], rows),
        "",
    ]
    if target["single_line_p50_ms"] is not None:
        verdict = "met" if target["met"] else "not met"
        lines.append(
            f"Single-line infill (REST_OF_LINE + LINE) p50: **{target['single_line_p50_ms']:,.0f} ms** "
            f"(target <= {target['target_ms']:g} ms on the 2-core CI machine: {verdict})."
        )
        lines.append("")
    typed = settings.get("typed_ms")
    edits = (
        f"before every repetition one space is toggled at the end of the file, so the completion cache never "
        f"answers and the prompt cache re-encodes the prefix"
        if typed is None
        else f"each request {typed:g} ms after a didChange that types the character before the cursor (a fresh "
        f"document each time; repetitions go round all cursors, so each prompt differs from the one before"
        + (f"; `completion.{settings.get('ab_option')}` alternated on / off between requests" if settings.get("typed_ab") else
           f"; prompt prefetch {'on' if completion.get('prefetch', True) else 'off'}, "
           f"speculation {'on' if completion.get('speculate') else 'off'}")
        + ")"
    )
    ab = report.get("ab")
    if ab:
        lines += ["| variant | single-line p50 ms | block p50 ms | first draft p50 ms |", "|:---|---:|---:|---:|"]
        for variant, groups in ab["summary_ms"].items():
            cells = [groups.get(name, {}).get("p50") for name in
                     ("inline single-line (REST_OF_LINE+LINE)", "inline BLOCK", "first draft after an inline request")]
            lines.append(f"| {variant} | " + " | ".join("–" if c is None else f"{c:,.1f}" for c in cells) + " |")
        ratios = ab["paired_ratio_on_over_off"]
        lines += ["", f"Paired per cursor, mean ms with `{settings.get('ab_option')}` on / off: " + ", ".join(
            f"{name} p50 {r['p50']:.3f} (n {r['count']})" for name, r in ratios.items() if r.get("count")) + ".", ""]
    lines.append(
        f"Wall time at the client, from sending the request to reading the answer. Each cursor of "
        f"`fixtures/cursors.json` with its expected middle removed, {settings['reps']} requests each; {edits}. Rewrites: {settings['rewrite_ranges']} whole-line ranges (1-3 lines) "
        f"per fixture, {settings['rewrite_reps']} times each, `apply: false`. Completion settings: "
        f"maxSteps {completion.get('maxSteps')}, contextTokens {completion.get('contextTokens')}, "
        f"parseCheck {completion.get('parseCheck')}, adaptive stopping on; {settings['warmup']} untimed warm-up "
        f"request(s) first."
    )
    return "\n".join(lines)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The options that start and reach the server (what :func:`start_server`, :func:`initialize` and
    :func:`wait_for_compile` read); shared with ``benchmarks/typing_cost.py``."""
    parser.add_argument("--model", default=None, help="checkpoint directory (default: null = the embedded model)")
    parser.add_argument("--completion", default="{}", help='JSON for initializationOptions.completion, e.g. \'{"maxSteps": 8}\'')
    parser.add_argument("--device", default=None, help="initializationOptions.device (default: the server's)")
    parser.add_argument("--dtype", default=None, help="initializationOptions.dtype (default: the server's)")
    parser.add_argument("--fast-path", choices=["on", "off"], default=None, help="initializationOptions.fastPath (default: the server's)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default=None, help="initializationOptions.compile (default: the server's)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the server (default: torch's)")
    parser.add_argument("--load-timeout", type=float, default=900.0, help="seconds to wait for the model")
    parser.add_argument("--wait-compile", action="store_true", help="time only after dg.info's compile.state is ready (or failed/off): the step compiled in the background is in use")
    parser.add_argument("--compile-timeout", type=float, default=1800.0, help="seconds --wait-compile waits")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds to wait for one answer")
    parser.add_argument("--server-log", default=None, help="server stderr goes here (default: a temp file)")
    parser.add_argument("--server-log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(parser)
    parser.add_argument("--reps", type=int, default=5, help="inline requests per cursor")
    parser.add_argument("--typed-ms", type=float, default=None, help="each request follows a typed key by this many ms (an editor's debounce); see the module docstring")
    parser.add_argument("--typed-ab", action="store_true", help="with --typed-ms: alternate --ab-option on and off between requests in one server (didChangeConfiguration) and report both, paired per cursor")
    parser.add_argument("--ab-option", default="prefetch", choices=["prefetch", "speculate"], help="the boolean completion option --typed-ab alternates")
    parser.add_argument("--rewrite-ranges", type=int, default=3, help="rewrite ranges per fixture file")
    parser.add_argument("--rewrite-reps", type=int, default=2, help="rewrite requests per range (0 = no rewrites)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests of each kind before timing")
    parser.add_argument("--languages", default=None, help="comma-separated fixture folders (default: all)")
    parser.add_argument("--kinds", default=None, help="comma-separated cursor kinds, e.g. REST_OF_LINE,LINE")
    parser.add_argument("--max-cursors", type=int, default=None, help="at most this many cursors per file and kind")
    parser.add_argument("--target-ms", type=float, default=300.0, help="single-line p50 target")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "lsp_latency.json", help="report path")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "lsp_latency.png", help="latency plot path")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--compare", type=Path, nargs="+", default=None, help="saved JSON reports: draw them side by side into --plot, run nothing")
    return parser


COMPARE_GROUPS = (
    "first draft after an inline request",
    "inline REST_OF_LINE",
    "inline single-line (REST_OF_LINE+LINE)",
    "inline LINE",
    "inline BLOCK",
)


def compare_plot(reports: list[Path], path: Path, target_ms: float | None = None) -> Path:
    """Grouped bars: p50 (and p95 whiskers) per operation for several saved runs (labelled by their file names)."""
    plt = pyplot()
    loaded = [(p.stem, json.loads(p.read_text(encoding="utf-8"))) for p in reports]
    groups = [g for g in COMPARE_GROUPS if any(g in r["summary_ms"] for _, r in loaded)]
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 2, 4.8))
    width = 0.8 / max(1, len(loaded))
    for i, (label, report) in enumerate(loaded):
        p50 = [report["summary_ms"].get(g, {}).get("p50", float("nan")) for g in groups]
        p95 = [report["summary_ms"].get(g, {}).get("p95", float("nan")) for g in groups]
        xs = [j + (i - (len(loaded) - 1) / 2) * width for j in range(len(groups))]
        load = (report["machine"].get("load_average") or ["?"])[0]
        bars = ax.bar(xs, p50, width, label=f"{label} (load average {load} at start)")
        ax.errorbar(xs, p50, yerr=[[0] * len(p50), [max(0.0, b - a) for a, b in zip(p50, p95)]], fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in p50], fontsize=7)
    if target_ms:
        ax.axhline(target_ms, color="red", ls="--", lw=0.8, label=f"single-line target {target_ms:,.0f} ms")
    ax.set_xticks(range(len(groups)), [g.removeprefix("inline ").replace(" (", "\n(") for g in groups], fontsize=8)
    ax.set_ylabel("ms at the client (bar p50, whisker p95)")
    ax.legend(fontsize=7)
    ax.set_title(f"dg-lsp latency over LSP, {loaded[0][1]['date'][:10]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.typed_ab and args.typed_ms is None:
        parser.error("--typed-ab needs --typed-ms")
    if args.compare:
        print(f"wrote {compare_plot(args.compare, args.plot, args.target_ms)}")
        return 0
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("reps", "rewrite_ranges", "rewrite_reps", "warmup"):
        if getattr(args, name) < 0 or (name == "reps" and args.reps < 1):
            raise SystemExit(f"lsp_latency: --{name.replace('_', '-')} is out of range")
    json.loads(args.completion)  # fail early on bad JSON
    report = run(args)
    print_report(report)
    write_json(args.json, report)
    print(f"\nwrote {args.json}")
    if not args.no_plot:
        print(f"wrote {plot_report(report, args.plot, args.target_ms)}")
    return 0


def plot_report(report: dict[str, Any], path: Path, target_ms: float | None) -> Path:
    """Latency distributions of a report: single-line, block and rewrites (per variant with ``--typed-ab``)."""
    server, samples = report["server"], [Sample(**s) for s in report["samples"]]
    shown = ("inline single-line (REST_OF_LINE+LINE)", "inline BLOCK", "rewrite (all ranges)")
    variants = sorted({s.variant for s in samples if s.variant is not None})
    if variants:
        groups = {
            f"{variant}: {name.removeprefix('inline ')}": values
            for variant in variants
            for name, values in group_samples([s for s in samples if s.variant == variant]).items()
            if name in shown
        }
    else:
        everything = group_samples(samples)
        groups = {k: v for k, v in everything.items() if k in shown} or everything
    return plot_latency_distributions(
        groups,
        path,
        f"dg-lsp latency at the client: {server['model']} on {server['device']}/{server['dtype']}, "
        f"{report['machine']['cpu']} x{report['machine']['nproc']} ({report['date'][:10]})",
        target_ms=target_ms,
    )


if __name__ == "__main__":
    sys.exit(main())

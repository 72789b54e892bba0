"""What typing costs the server and what the user waits for: keys at a steady pace, the Neovim plugin's timing.

A typist types the first ``--chars`` characters of each single-line fixture cursor's expected text
(``fixtures/cursors.json``, REST_OF_LINE and LINE), one key every ``--key-ms`` ms, into the real
server over stdio, reported the way the Neovim plugin reports it: changes batched into one
``didChange`` sent ``--batch-ms`` (20) after the first unsent key (its ``change_debounce_ms``, the
client's ``debounce_text_changes``), and a request ``--debounce-ms`` (100) after the last key (its
``debounce_ms``; 50 and 150 ms before session 30). Every key re-arms that
timer and cancels a request in flight (``$/cancelRequest``); changes are flushed before a request.
After the last key the request is awaited. Per episode (one cursor typed at one pace):

- ``wait_ms``: from the last key to the answer, what the user waits for the ghost text;
- ``request_ms``: from the request to the answer (``benchmarks/lsp_latency.py``'s measure);
- ``answered_between_keys``: requests sent while typing (the key pace slower than the debounce) whose answer
  arrived before the next key, i.e. a suggestion the editor could show between keys (the others are cancelled);
- ``ghost_cleared_ms``: for each key that found ghost text of the request in flight on screen (its first non-empty
  ``dg/draft``, or its non-empty answer: what the plugin draws), how long it had been shown; under 50 ms is a flash;
- ``cpu_s``: the server process's CPU time (user + system, all its threads, ``/proc/<pid>/stat``) from
  the first key to ``--settle-ms`` after the answer: the work the typing caused, cancelled work included.

``--option`` (default ``speculate``) alternates on and off between episodes (``didChangeConfiguration``),
so at every pace each cursor is typed once with it and once without (``--reps`` 2) and the report pairs
them; ``--alt-timing B D`` alternates the client's timing instead (changes batched ``B`` ms, request
``D`` ms after the last key, against ``--batch-ms`` / ``--debounce-ms``). Needs Linux (``/proc``).

    python benchmarks/typing_cost.py --key-ms 80 120 200 300 --wait-compile
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
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
    PendingRequest,
    command_line,
    end_position,
    fmt,
    has_suggestion,
    inline_params,
    machine_info,
    offset_at,
    pyplot,
    summarize,
    text_table,
    utc_now,
    write_json,
)
from benchmarks.lsp_latency import (  # noqa: E402
    Case,
    OpenDoc,
    add_server_options,
    fixture_files,
    initialize,
    inline_cases,
    set_completion_option,
    start_server,
    wait_for_compile,
)

#: The cursor kinds a typist completes a line at.
LINE_KINDS = ["REST_OF_LINE", "LINE"]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Episode:
    """One cursor typed at one pace, and what it cost."""

    file: str
    index: int
    kind: str
    key_ms: float
    option_on: bool
    keys: int
    changes_sent: int
    requests_sent: int
    requests_cancelled: int
    answered_between_keys: int
    request_ms: float
    wait_ms: float
    answered: bool
    cpu_s: float
    #: For each key that cleared ghost text of the request in flight: how long it had been shown (ms).
    ghost_cleared_ms: tuple[float, ...] = ()


#: Ghost text shown for less than this before a key clears it is a flash.
FLASH_MS = 50.0


class GhostText:
    """When each request's ghost text first appeared: its first non-empty ``dg/draft`` (the Neovim plugin draws drafts)."""

    def __init__(self, client: LspClient) -> None:
        self._first_draft: dict[int, float] = {}
        self._lock = threading.Lock()
        client.on_notification = self._seen

    def _seen(self, method: str, params: Any) -> None:
        if method != "dg/draft" or not isinstance(params, dict) or not params.get("text"):
            return
        request_id = params.get("requestId")
        if isinstance(request_id, int):
            with self._lock:
                self._first_draft.setdefault(request_id, time.perf_counter())

    def shown_at(self, request: PendingRequest) -> float | None:
        """When ``request``'s ghost text appeared (a draft, or a non-empty answer), None if it has not."""
        with self._lock:
            shown = self._first_draft.get(request.id)
        if request.future.done():
            message, received = request.future.result()
            if has_suggestion(message.get("result")):
                shown = received if shown is None else min(shown, received)
        return shown


class PluginTiming:
    """The Neovim plugin's clock for one typed document: batched changes, a debounced request, cancel on key."""

    def __init__(self, client: LspClient, doc: OpenDoc, batch_ms: float, debounce_ms: float, ghost: GhostText) -> None:
        self.client, self.doc, self.ghost = client, doc, ghost
        self.batch_s, self.debounce_s = batch_ms / 1000.0, debounce_ms / 1000.0
        self.pending_at: int | None = None  # where the unsent keys start
        self.pending = ""
        self.flush_at: float | None = None
        self.trigger_at: float | None = None
        self.request: PendingRequest | None = None
        self.cursor = 0
        self.changes = self.requests = self.cancelled = 0
        #: Requests sent while typing whose answer arrived before the next key (a suggestion shown between keys).
        self.answered_between = 0
        #: How long ghost text had been shown when a key cleared it (ms), one entry per such key.
        self.ghost_cleared_ms: list[float] = []

    def key(self, offset: int, char: str) -> None:
        """A key typed at ``offset`` (the cursor): cancel the request in flight, batch the change, re-arm the trigger."""
        now = time.perf_counter()
        if self.request is not None:
            shown = self.ghost.shown_at(self.request)
            if shown is not None and shown <= now:
                self.ghost_cleared_ms.append((now - shown) * 1000.0)
            if self.request.future.done() and "result" in self.request.future.result()[0]:
                self.answered_between += 1
            else:
                self.client.cancel_request(self.request)
                self.cancelled += 1
            self.request = None
        if self.pending_at is None:
            self.pending_at, self.flush_at = offset, now + self.batch_s
        self.pending += char
        self.cursor = offset + len(char)
        self.trigger_at = now + self.debounce_s

    def flush(self) -> None:
        """Send the batched keys as one ``didChange``."""
        if self.pending_at is not None:
            self.doc.type_text(self.pending_at, self.pending)
            self.changes += 1
        self.pending_at, self.pending, self.flush_at = None, "", None

    def fire_due(self, now: float) -> None:
        """Whatever timer is due at ``now``: the change batch, then the request."""
        if self.flush_at is not None and now >= self.flush_at:
            self.flush()
        if self.trigger_at is not None and now >= self.trigger_at:
            self.trigger_at = None
            self.flush()
            params = inline_params(self.doc.uri, *end_position(self.doc.text[: self.cursor]))
            self.request = self.client.send_request("textDocument/inlineCompletion", params)
            self.requests += 1

    def run_until(self, deadline: float) -> None:
        """Fire timers as they fall due until ``deadline`` (perf_counter seconds)."""
        while True:
            due = [t for t in (self.flush_at, self.trigger_at) if t is not None and t <= deadline]
            if not due:
                break
            wait = min(due) - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.fire_due(time.perf_counter())
        left = deadline - time.perf_counter()
        if left > 0:
            time.sleep(left)


def type_episode(
    client: LspClient, case: Case, typed: str, key_ms: float, timing_ms: tuple[float, float], args: argparse.Namespace,
    ghost: GhostText,
) -> tuple[PluginTiming, float, float, bool, float]:
    """Type ``typed`` at the case's cursor with ``timing_ms`` = (change batch, request debounce);
    (timing, request ms, wait ms, answered, CPU s)."""
    language = case.file.split("/", 1)[0]
    cursor = offset_at(case.text, case.line, case.character)
    doc = OpenDoc(client, FIXTURES_DIR / case.file, LANGUAGE_IDS.get(language, language), case.text)
    try:
        timing = PluginTiming(client, doc, *timing_ms, ghost=ghost)
        cpu_before = process_cpu_seconds(client.proc.pid)
        start = time.perf_counter()
        for number, char in enumerate(typed):
            timing.run_until(start + number * key_ms / 1000.0)
            timing.key(cursor + number, char)
        last_key = time.perf_counter()
        assert timing.trigger_at is not None
        timing.run_until(timing.trigger_at)
        request = timing.request
        if request is None:
            raise LspError("the debounced request was not sent")
        message, received = request.future.result(args.request_timeout)
        if "error" in message:
            raise LspError(f"inlineCompletion failed: {message['error']}")
        answered = has_suggestion(message.get("result"))
        time.sleep(args.settle_ms / 1000.0)
        cpu = process_cpu_seconds(client.proc.pid) - cpu_before
        return timing, (received - request.started) * 1000.0, (received - last_key) * 1000.0, answered, cpu
    finally:
        doc.close()


def typed_text(case: Case, chars: int) -> str:
    """The first ``chars`` characters of the case's expected text on its line (what the typist types)."""
    return case.expected.split("\n", 1)[0][:chars]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report."""
    from tqdm import tqdm

    languages = [part.strip() for part in args.languages.split(",") if part.strip()] if args.languages else None
    cases = [case for case in inline_cases(fixture_files(languages), LINE_KINDS, args.max_cursors) if typed_text(case, args.chars)]
    if not cases:
        raise SystemExit("typing_cost: no single-line cursors selected")
    log_path = Path(args.server_log) if args.server_log else Path(tempfile.mkstemp(prefix="dg-lsp-typing-", suffix=".log")[1])
    client, log_file = start_server(args, log_path)
    ghost = GhostText(client)
    episodes: list[Episode] = []
    try:
        info = initialize(client, args)
        if info.get("status") != "ready":
            raise SystemExit(f"typing_cost: the model failed to load: {info.get('error')}")
        if args.wait_compile:
            info, waited = wait_for_compile(client, args.compile_timeout)
            print(f"compiled step {info['compile'].get('state')} {waited:.1f} s after ready", file=sys.stderr)
        for case in cases[:2]:  # untimed: the first requests pay one-off costs
            type_episode(client, case, typed_text(case, args.chars), args.key_ms[0], (args.batch_ms, args.debounce_ms), args, ghost)
        total = len(args.key_ms) * args.reps * len(cases)
        bar = tqdm(total=total, desc="episodes", unit="ep", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)
        for key_ms in args.key_ms:
            for rep in range(args.reps):
                for number, case in enumerate(cases):
                    on = (rep + number) % 2 == 0
                    timing_ms = (args.alt_timing[0], args.alt_timing[1]) if args.alt_timing and on else (args.batch_ms, args.debounce_ms)
                    if not args.alt_timing:
                        set_completion_option(client, args, args.option, on)
                    typed = typed_text(case, args.chars)
                    timing, request_ms, wait_ms, answered, cpu = type_episode(client, case, typed, key_ms, timing_ms, args, ghost)
                    episodes.append(Episode(case.file, case.index, case.kind, key_ms, on, len(typed), timing.changes,
                                            timing.requests, timing.cancelled, timing.answered_between, request_ms, wait_ms,
                                            answered, cpu, tuple(timing.ghost_cleared_ms)))
                    bar.set_postfix_str(f"{key_ms:g} ms/key {variant_label(args, on)}: {wait_ms:,.0f} ms", refresh=False)
                    bar.update(1)
        bar.close()
        final = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=60)
    finally:
        client.close()
        log_file.close()
    return report(args, info, final, episodes)


def variant_label(args: argparse.Namespace, on: bool) -> str:
    """What is alternated, and which side: a server option on/off, or the client's (batch, debounce) timing."""
    if args.alt_timing:
        batch, debounce = args.alt_timing if on else (args.batch_ms, args.debounce_ms)
        return f"changes {batch:g} / request {debounce:g} ms"
    return f"{args.option} {'on' if on else 'off'}"


def paired(episodes: list[Episode], key_ms: float, field: str) -> list[float]:
    """Per cursor at ``key_ms``: mean ``field`` with the option on over its mean with it off."""
    by_case: dict[tuple[str, int], dict[bool, list[float]]] = {}
    for ep in episodes:
        if ep.key_ms == key_ms:
            by_case.setdefault((ep.file, ep.index), {True: [], False: []})[ep.option_on].append(float(getattr(ep, field)))
    return sorted(
        (sum(v[True]) / len(v[True])) / (sum(v[False]) / len(v[False]))
        for v in by_case.values() if v[True] and v[False] and sum(v[False]) > 0
    )


def report(args: argparse.Namespace, info: dict[str, Any], final: Any, episodes: list[Episode]) -> dict[str, Any]:
    """The JSON report: per pace and variant the waits and CPU, and the paired ratios."""
    rows: list[dict[str, Any]] = []
    for key_ms in args.key_ms:
        for on in (False, True):
            chosen = [ep for ep in episodes if ep.key_ms == key_ms and ep.option_on is on]
            if not chosen:
                continue
            keys = sum(ep.keys for ep in chosen)
            cleared = [ms for ep in chosen for ms in ep.ghost_cleared_ms]
            rows.append({
                "key_ms": key_ms,
                "variant": variant_label(args, on),
                "option_on": on,
                "episodes": len(chosen),
                "wait_ms": summarize([ep.wait_ms for ep in chosen]),
                "request_ms": summarize([ep.request_ms for ep in chosen]),
                "cpu_s_per_episode": summarize([ep.cpu_s for ep in chosen]),
                "cpu_ms_per_key": 1000.0 * sum(ep.cpu_s for ep in chosen) / max(keys, 1),
                "requests_per_episode": sum(ep.requests_sent for ep in chosen) / len(chosen),
                # of the requests sent while typing (all but the last per episode): answered before the next key
                "answered_between_keys": sum(ep.answered_between_keys for ep in chosen),
                "requests_between_keys": sum(ep.requests_sent - 1 for ep in chosen),
                "answered": sum(ep.answered for ep in chosen),
                # keys that cleared ghost text of the request in flight, those that had shown it < FLASH_MS, of all keys
                "keys": keys,
                "ghost_cleared_by_key": len(cleared),
                "ghost_flashes": sum(ms < FLASH_MS for ms in cleared),
                "ghost_shown_ms": summarize(cleared) if cleared else None,
            })
    ratios: dict[str, dict[str, dict[str, float] | None]] = {}
    for key_ms in args.key_ms:
        ratios[str(key_ms)] = {}
        for field in ("wait_ms", "cpu_s"):
            values = paired(episodes, key_ms, field)
            ratios[str(key_ms)][field] = {"p25": values[len(values) // 4], "p50": values[len(values) // 2], "p75": values[(3 * len(values)) // 4],
                                          "count": len(values)} if values else None
    return {
        "benchmark": "typing_cost",
        "date": utc_now(),
        "command": command_line(__file__, args.argv),
        "machine": machine_info(),
        "server": {"model": info.get("model"), "device": info.get("device"), "dtype": info.get("dtype"),
                   "compile": (final or {}).get("compile") if isinstance(final, dict) else None},
        "settings": {"option": None if args.alt_timing else args.option, "alt_timing": args.alt_timing, "key_ms": args.key_ms, "chars": args.chars, "batch_ms": args.batch_ms,
                     "debounce_ms": args.debounce_ms, "settle_ms": args.settle_ms, "reps": args.reps,
                     "completion": args.completion},
        "rows": rows,
        "paired_on_over_off": ratios,
        "server_counters": {k: final.get(k) for k in ("jobs", "prefetch", "promptCache")} if isinstance(final, dict) else None,
        "episodes": [asdict(ep) for ep in episodes],
    }


def print_report(data: dict[str, Any]) -> None:
    """The table on stdout."""
    header = ["ms/key", "variant", "n", "wait p50", "wait p95", "request p50", "CPU s/episode", "CPU ms/key", "requests/ep",
              "answered between keys", "answered", f"ghost cleared by a key (< {FLASH_MS:g} ms) / keys"]
    table = [
        [fmt(r["key_ms"], 0), r["variant"], str(r["episodes"]), fmt(r["wait_ms"]["p50"]), fmt(r["wait_ms"]["p95"]),
         fmt(r["request_ms"]["p50"]), fmt(r["cpu_s_per_episode"]["mean"], 3), fmt(r["cpu_ms_per_key"]), fmt(r["requests_per_episode"], 2),
         f"{r['answered_between_keys']}/{r['requests_between_keys']}", str(r["answered"]),
         f"{r['ghost_cleared_by_key']} ({r['ghost_flashes']}) / {r['keys']}"]
        for r in data["rows"]
    ]
    print(text_table(header, table))
    for key_ms, fields in data["paired_on_over_off"].items():
        parts = [f"{field} {v['p50']:.3f} ({v['p25']:.3f}-{v['p75']:.3f})" for field, v in fields.items() if v]
        on, off = (next((r["variant"] for r in data["rows"] if r["option_on"] is side), "?") for side in (True, False))
        print(f"paired ({on}) / ({off}) at {float(key_ms):g} ms/key: " + ", ".join(parts))


def plot(data: dict[str, Any], path: Path) -> Path:
    """Two panels per pace: the wait after the last key (p50, p95 whisker) and CPU per typed key, off against on."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    paces = [float(k) for k in data["settings"]["key_ms"]]
    width = 0.38
    for shift, on in ((-width / 2, False), (width / 2, True)):
        rows = {r["key_ms"]: r for r in data["rows"] if r["option_on"] is on}
        xs = [i + shift for i, pace in enumerate(paces) if pace in rows]
        label = next((r["variant"] for r in rows.values()), "")
        p50 = [rows[p]["wait_ms"]["p50"] for p in paces if p in rows]
        p95 = [rows[p]["wait_ms"]["p95"] for p in paces if p in rows]
        left.bar(xs, p50, width, label=label, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95)]], capsize=3)
        right.bar(xs, [rows[p]["cpu_ms_per_key"] for p in paces if p in rows], width, label=label)
    for axis, title in ((left, "last key to answer, ms (p50, whisker p95)"), (right, "server CPU per typed key, ms")):
        axis.set_xticks(range(len(paces)), [f"{p:g} ms/key" for p in paces])
        axis.set_title(title, fontsize=10)
        axis.set_ylim(0, axis.get_ylim()[1] * 1.3)  # room for the legend above the bars
        axis.legend(fontsize=8, loc="upper left", ncols=2)
    fig.suptitle(f"typing {data['settings']['chars']} chars per cursor, Neovim plugin timing "
                 f"(changes batched {data['settings']['batch_ms']:g} ms, request {data['settings']['debounce_ms']:g} ms after the last key)"
                 + (f", against {data['settings']['alt_timing'][0]:g} / {data['settings']['alt_timing'][1]:g} ms" if data["settings"].get("alt_timing") else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(parser)
    parser.add_argument("--key-ms", type=float, nargs="+", default=[80.0, 120.0, 200.0], help="paces to type at (ms between keys)")
    parser.add_argument("--chars", type=int, default=6, help="characters typed per cursor")
    parser.add_argument("--reps", type=int, default=2, help="episodes per cursor and pace (alternating the option)")
    parser.add_argument("--option", default="speculate", choices=["speculate", "prefetch"], help="the boolean completion option alternated")
    parser.add_argument("--batch-ms", type=float, default=20.0, help="didChange batching (the plugin's change_debounce_ms)")
    parser.add_argument("--debounce-ms", type=float, default=100.0, help="request after the last key (the plugin's debounce_ms)")
    parser.add_argument("--alt-timing", type=float, nargs=2, default=None, metavar=("BATCH_MS", "DEBOUNCE_MS"),
                        help="alternate the client's timing instead of a server option: --batch-ms/--debounce-ms against these")
    parser.add_argument("--settle-ms", type=float, default=200.0, help="CPU still counted after the answer (cancelled work finishing)")
    parser.add_argument("--languages", default=None, help="comma-separated fixture folders (default: all)")
    parser.add_argument("--max-cursors", type=int, default=None, help="at most this many cursors per file and kind")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "typing_cost.json", help="report path")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: the JSON path with .png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    data = run(args)
    write_json(args.json, data)
    print_report(data)
    print(f"plot: {plot(data, args.plot or args.json.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Typing storm: N edits + inline-completion requests per second against the language server.

A client types into one document (or round-robin into several): every tick sends one
incremental ``didChange`` (a character, sometimes a newline, an emoji or a backspace; every few
hundred keystrokes the typed block is deleted again so documents stay bounded) and then one
``textDocument/inlineCompletion`` at the new cursor, without waiting for earlier answers. Each
new request or edit supersedes the previous job for that document, as in an editor.

Reported per phase: requests sent and answered (every request must be answered), non-empty
answers, jobs cancelled (from ``dg.info``), p50/p99 latency, server RSS at start and end, and
**stale answers**: non-empty answers computed for a document version other than the one the
request was sent at. Two independent checks flag one: the answer's final ``dg/draft`` carries
another version, or a request sent after a newer edit of the same document was answered first
(so the server had already seen the edit when it answered).

    python benchmarks/typing_storm.py --minutes 10 --documents 1,8      # the issue-13 measurement
    python benchmarks/typing_storm.py --minutes 0.1 --model DIR         # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    LspClient,
    command_line,
    fmt,
    inline_params,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    pyplot,
    rss_mib,
    text_table,
    utc_now,
    write_json,
)

CAPABILITIES = {
    "window": {"workDoneProgress": False},
    "textDocument": {"inlineCompletion": {"dynamicRegistration": False}},
}
SEED_TEXT = (
    "import math\n\n\ndef mean(xs):\n    total = sum(xs)\n    return total / len(xs)\n\n\n"
    "def spread(xs):\n    m = mean(xs)\n    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))\n\n\n"
)
TYPED = "    value = compute(items, key=lambda x: x.size) + offset  # 🚀 naïve\n"


class StormClient(LspClient):
    """LspClient noting which version each request's final draft was for (requests that do not block, ``send_request``,
    keep the storm typing while answers come back)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.final_draft_version: dict[int, int] = {}
        self.on_notification = self._note

    def _note(self, method: str, params: Any) -> None:
        if method == "dg/draft" and isinstance(params, dict) and params.get("final"):
            request_id = params.get("requestId")
            if isinstance(request_id, int):
                self.final_draft_version[request_id] = int(params["version"])


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units."""
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


@dataclass
class Document:
    """The client's mirror of one open document and its cursor (line, UTF-16 column)."""

    uri: str
    lines: list[str]
    version: int = 1
    line: int = 0
    typed_from: int = 0
    keystrokes: int = 0

    @property
    def character(self) -> int:
        return utf16_len(self.lines[self.line])

    def next_edit(self, rng: random.Random) -> dict[str, Any]:
        """Apply the next keystroke to the mirror and return its LSP content change."""
        self.keystrokes += 1
        if self.keystrokes % 400 == 0 and self.line > self.typed_from:  # delete the typed block
            start = {"line": self.typed_from, "character": 0}
            end = {"line": self.line, "character": self.character}
            del self.lines[self.typed_from : self.line]
            self.lines[self.typed_from] = ""
            self.line = self.typed_from
            return {"range": {"start": start, "end": end}, "text": ""}
        here = {"line": self.line, "character": self.character}
        current = self.lines[self.line]
        if current and rng.random() < 0.08:  # backspace
            last = current[-1]
            self.lines[self.line] = current[:-1]
            start = {"line": self.line, "character": self.character}
            return {"range": {"start": start, "end": {"line": self.line, "character": start["character"] + utf16_len(last)}}, "text": ""}
        char = TYPED[len(current) % len(TYPED)]
        if char == "\n":
            self.lines.insert(self.line + 1, "")
            self.line += 1
        else:
            self.lines[self.line] = current + char
        return {"range": {"start": here, "end": here}, "text": char}


@dataclass
class Sent:
    """One inline-completion request of the storm."""

    request_id: int
    uri: str
    version: int
    sent: float
    order: int
    future: Future[tuple[dict[str, Any], float]]


@dataclass
class Phase:
    """The figures of one phase (one document count)."""

    documents: int
    seconds: float
    rate_target: float
    edits: int = 0
    requests: int = 0
    answered: int = 0
    errors: int = 0
    unanswered: int = 0
    non_empty: int = 0
    stale: int = 0
    jobs_cancelled: int = 0
    jobs_completed: int = 0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    non_empty_latency_ms: dict[str, float] = field(default_factory=dict)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    latency_series: list[tuple[float, float]] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def start_client(args: argparse.Namespace, log: Path) -> tuple[StormClient, dict[str, Any]]:
    """Start ``dg-lsp serve``, initialise it and wait for the model."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "dg_lsp", "serve", "--log-level", "warning"]
    client = StormClient(command, env=env, stderr=log.open("wb"))
    options: dict[str, Any] = {"completion": {"draftIntervalMs": 30, **json.loads(args.completion)}}
    if args.model:
        options["model"] = str(args.model)
    client.request("initialize", {"processId": os.getpid(), "capabilities": CAPABILITIES, "initializationOptions": options}, timeout=300)
    client.notify("initialized", {})
    deadline = time.monotonic() + 300
    while True:
        info = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=120)
        if info["status"] != "loading":
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not load")
        time.sleep(0.2)
    if info["status"] != "ready":
        raise RuntimeError(f"the model failed to load: {info.get('error')}")
    return client, info


def run_phase(
    client: StormClient, documents: int, seconds: float, rate: float, seed: int, bar: Any, burst: int = 0, think_s: float = 0.0
) -> Phase:
    """Type into ``documents`` documents at ``rate`` keystrokes (each followed by a request) per second.

    ``burst`` > 0: pause ``think_s`` after every ``burst`` keystrokes (answers then get computed).
    """
    rng = random.Random(seed)
    pid = client.proc.pid
    docs = []
    for index in range(documents):
        uri = f"file:///storm/{documents}docs/doc{index}.py"
        doc = Document(uri, SEED_TEXT.split("\n"))
        doc.line = doc.typed_from = len(doc.lines) - 1
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SEED_TEXT}})
        docs.append(doc)
    before = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=120)["jobs"]
    phase = Phase(documents=documents, seconds=seconds, rate_target=rate, rss_start_mib=rss_mib(pid))
    phase.rss_samples.append((0.0, phase.rss_start_mib))
    sent: list[Sent] = []
    last_edit_order: dict[str, int] = {}
    started = time.perf_counter()
    tick = 1.0 / rate
    order = 0
    next_sample = 5.0
    while True:
        now = time.perf_counter() - started
        if now >= seconds:
            break
        doc = docs[order % documents]
        change = doc.next_edit(rng)
        doc.version += 1
        client.notify("textDocument/didChange", {"textDocument": {"uri": doc.uri, "version": doc.version}, "contentChanges": [change]})
        phase.edits += 1
        order += 1
        last_edit_order[doc.uri] = order
        pending = client.send_request("textDocument/inlineCompletion", inline_params(doc.uri, doc.line, doc.character))
        sent.append(Sent(pending.id, doc.uri, doc.version, pending.started, order, pending.future))
        phase.requests += 1
        bar.update(1)
        if now >= next_sample:
            phase.rss_samples.append((now, rss_mib(pid)))
            next_sample += 5.0
        due = order * tick if burst <= 0 else (order // burst) * (burst * tick + think_s) + (order % burst) * tick
        wait = started + due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    phase.seconds = time.perf_counter() - started
    latencies, non_empty_latencies = [], []
    answered_at: dict[int, float] = {}
    results: dict[int, dict[str, Any]] = {}
    for request in sent:  # every request must be answered: wait up to a minute for the last ones
        try:
            message, received = request.future.result(timeout=60)
        except TimeoutError:
            phase.unanswered += 1
            continue
        phase.answered += 1
        answered_at[request.request_id] = received
        latency = (received - request.sent) * 1000.0
        latencies.append(latency)
        phase.latency_series.append((request.sent - started, latency))
        if "error" in message:
            phase.errors += 1
            if len(phase.error_messages) < 5:
                phase.error_messages.append(str(message["error"].get("message")))
            continue
        results[request.request_id] = message.get("result") or {}
        if results[request.request_id].get("items"):
            phase.non_empty += 1
            non_empty_latencies.append(latency)
    phase.stale = count_stale(sent, results, answered_at, client.final_draft_version)
    after = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=120)["jobs"]
    phase.jobs_cancelled = after["cancelled"] - before["cancelled"]
    phase.jobs_completed = after["completed"] - before["completed"]
    phase.rss_end_mib = rss_mib(pid)
    phase.rss_samples.append((phase.seconds, phase.rss_end_mib))
    phase.latency_ms = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan"))}
    phase.non_empty_latency_ms = {"p50": percentile(non_empty_latencies, 50), "p99": percentile(non_empty_latencies, 99)}
    for doc in docs:
        client.notify("textDocument/didClose", {"textDocument": {"uri": doc.uri}})
    return phase


def count_stale(
    sent: list[Sent], results: dict[int, dict[str, Any]], answered_at: dict[int, float], draft_version: dict[int, int]
) -> int:
    """Non-empty answers computed for a version other than the one their request was sent at."""
    stale = 0
    by_uri: dict[str, list[Sent]] = {}
    for request in sent:
        by_uri.setdefault(request.uri, []).append(request)
    for requests in by_uri.values():
        # earliest receipt among the requests sent after each one (they follow a newer edit)
        later_first = float("inf")
        for request in reversed(requests):
            result = results.get(request.request_id)
            if result and result.get("items"):
                version = draft_version.get(request.request_id)
                if (version is not None and version != request.version) or later_first < answered_at[request.request_id]:
                    stale += 1
            if request.request_id in answered_at:
                later_first = min(later_first, answered_at[request.request_id])
    return stale


def plot(phases: list[Phase], path: Path, title: str) -> Path:
    """Latency over time (scatter) and RSS over time, one colour per phase."""
    plt = pyplot()
    fig, (lat_ax, rss_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    for phase in phases:
        label = f"{phase.documents} document{'s' if phase.documents > 1 else ''}"
        if phase.latency_series:
            xs, ys = zip(*phase.latency_series)
            lat_ax.scatter(xs, ys, s=2, alpha=0.3, label=f"{label}: p50 {fmt(phase.latency_ms['p50'], 0)} ms, p99 {fmt(phase.latency_ms['p99'], 0)} ms")
        xs, ys = zip(*phase.rss_samples)
        rss_ax.plot(xs, ys, label=label)
    lat_ax.set_yscale("log")
    lat_ax.set_xlabel("time since start of phase (s)")
    lat_ax.set_ylabel("request → answer (ms, log)")
    lat_ax.set_title("latency of every request")
    lat_ax.legend(fontsize=8, markerscale=4)
    rss_ax.set_xlabel("time since start of phase (s)")
    rss_ax.set_ylabel("server RSS (MiB)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.set_title("server memory")
    rss_ax.legend(fontsize=8)
    for ax in (lat_ax, rss_ax):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HEADERS = ["documents", "seconds", "req/s", "requests", "answered", "unanswered", "errors", "non-empty",
           "jobs cancelled", "p50 ms", "p99 ms", "RSS start MiB", "RSS end MiB", "stale"]


def rows(phases: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows of the phases."""
    return [[str(p["documents"]), p["seconds"], p["achieved_rate"], p["requests"], p["answered"], p["unanswered"],
             p["errors"], p["non_empty"], p["jobs_cancelled"], p["latency_ms"]["p50"], p["latency_ms"]["p99"],
             p["rss_start_mib"], p["rss_end_mib"], p["stale"]] for p in phases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=50.0, help="edits (each followed by a request) per second")
    parser.add_argument("--documents", default="1,8", help="comma-separated document counts, one phase each")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--completion", default="{}", help='extra completion options (JSON), e.g. {"parseCheck": false}')
    parser.add_argument("--burst", type=int, default=0, help="keystrokes per burst (0: steady typing)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause after each burst")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "typing_storm.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default next to the JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    counts = [int(c) for c in args.documents.split(",")]
    seconds = args.minutes * 60.0
    info = machine_info()
    date = utc_now()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="dg-storm-") as work:
        log = Path(work) / "server.log"
        client, facts = start_client(args, log)
        try:
            for index, count in enumerate(counts):
                total = int(seconds * args.rate)
                with tqdm(total=total, desc=f"{count} doc(s)", unit="req", file=sys.stderr, disable=args.no_progress,
                          dynamic_ncols=True) as bar:
                    phases.append(run_phase(client, count, seconds, args.rate, args.seed + index, bar, args.burst, args.think_ms / 1000.0))
            alive = client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, timeout=120)["status"]
        finally:
            exit_code = client.close()
            server_log = log.read_text(errors="replace")[-4000:]
    plot_path = args.plot or args.json.with_suffix(".png")
    plot(phases, plot_path, f"typing storm: {args.rate:g} edits + requests/s, {facts.get('model')} on {facts.get('device')}")
    report = {
        "command": command_line(__file__, argv if argv is not None else sys.argv[1:]),
        "date": date, "machine": info, "model": facts.get("model"), "device": facts.get("device"),
        "rate": args.rate, "minutes": args.minutes, "burst": args.burst, "think_ms": args.think_ms, "server_status_after": alive, "server_exit_code": exit_code,
        "plot": str(plot_path),
        "phases": [asdict(p) | {"achieved_rate": p.achieved_rate} for p in phases],
        "server_log_tail": server_log,
    }
    for phase in report["phases"]:
        phase["rss_samples"] = phase["rss_samples"][:: max(1, len(phase["rss_samples"]) // 200)]
        phase.pop("latency_series")
    write_json(args.json, report)
    print(text_table(HEADERS, rows(report["phases"])))
    print("\n--- markdown for benchmarks/RESULTS.md ---")
    print(markdown_block(report))
    return 0


def markdown_block(report: dict[str, Any]) -> str:
    """A RESULTS.md section: command, machine, date, table."""
    return "\n".join([
        f"### Typing storm: {report['rate']:g} edits + completion requests per second ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: `{report['model']}` on {report['device']}. Machine: {machine_line(report['machine'])}.",
        "",
        markdown_table(HEADERS, rows(report["phases"])),
        "",
        f"Server after the storm: `{report['server_status_after']}`, exit code {report['server_exit_code']} after shutdown/exit.",
        "",
        f"Plot: `{report['plot']}`.",
    ])


if __name__ == "__main__":
    sys.exit(main())

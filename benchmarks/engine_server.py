"""Throughput and latency of the shared engine server for 1-8 concurrent users, batched vs unbatched.

Starts ``dg-lsp engine-serve`` twice on the same model: once with ``--max-batch 8`` (requests
share denoising steps) and once with ``--max-batch 1`` (one canvas per forward, requests
queue). Each simulated user is a closed loop: it sends a completion, waits for the answer,
sends the next. Requests are the holes of ``fixtures/cursors.json`` (expected middle removed),
sent as the language server sends them (hole kind, language, 16 steps, adaptive stopping).
Reported per mode and user count: requests/s, middle tokens/s, p50/p95 latency, mean
canvases per forward (from ``/metrics``), and whether batched answers equal unbatched ones.

    python benchmarks/engine_server.py                        # embedded model, CPU
    python benchmarks/engine_server.py --model DIR --device cuda --users 1,2,4,8,16 --canvas-batching pad
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    RESULTS_DIR,
    command_line,
    fmt,
    load_cursors,
    machine_info,
    machine_line,
    markdown_table,
    offset_at,
    pyplot,
    summarize,
    text_table,
    utc_now,
    write_json,
)
from dg_lsp.engine_server.launch import RunningServer, start_engine_server  # noqa: E402
from dg_lsp.languages import detect_language  # noqa: E402


@dataclass(frozen=True)
class Hole:
    """One request of the workload."""

    name: str
    prefix: str
    suffix: str
    kind: str
    language: str | None


@dataclass
class Run:
    """One (mode, users) measurement."""

    mode: str
    users: int
    requests: int
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list)
    middle_tokens: int = 0
    forwards: float = 0.0
    canvas_steps: float = 0.0
    #: Seconds spent in decoder forwards (from ``dg_engine_forward_seconds``).
    forward_s: float = 0.0
    queue_ms: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.middle_tokens / self.wall_s

    @property
    def forward_ms(self) -> float:
        """Mean time of one batched forward."""
        return 1000.0 * self.forward_s / self.forwards if self.forwards else 0.0

    @property
    def canvases_per_forward(self) -> float:
        return self.canvas_steps / self.forwards if self.forwards else 0.0


def workload() -> list[Hole]:
    """Every cursor of the fixtures, its expected middle cut out."""
    holes = []
    for name, cursors in sorted(load_cursors().items()):
        text = (FIXTURES_DIR / name).read_text(encoding="utf-8")
        for index, cursor in enumerate(cursors):
            start = offset_at(text, cursor["line"], cursor["character"])
            end = start + len(cursor["expected"])
            language = detect_language((FIXTURES_DIR / name).as_uri(), None)
            holes.append(Hole(f"{name}#{index}", text[:start], text[end:], cursor["kind"].lower(), language))
    return holes


def payload(hole: Hole, steps: int) -> dict[str, Any]:
    """The request the language server would send for ``hole``."""
    return {
        "prompt": hole.prefix,
        "suffix": hole.suffix,
        "max_tokens": 256,
        "temperature": 0.0,
        "seed": 0,
        "dg": {"kind": hole.kind, "language": hole.language, "max_context_tokens": 1024, "sampler": {"max_steps": steps}},
    }


async def _user(client: httpx.AsyncClient, server: RunningServer, holes: list[Hole], first: int, count: int,
                steps: int, run: Run, bar: Any) -> None:
    for i in range(count):
        hole = holes[(first + i) % len(holes)]
        started = time.perf_counter()
        reply = await client.post(f"{server.url}/v1/completions", json=payload(hole, steps))
        elapsed = (time.perf_counter() - started) * 1000.0
        reply.raise_for_status()
        answer = reply.json()
        run.latencies_ms.append(elapsed)
        run.middle_tokens += int(answer["usage"]["completion_tokens"])
        run.queue_ms.append(float(answer["dg"]["queue_ms"]))
        run.answers[f"{hole.name}@{first + i}"] = answer["choices"][0]["text"]
        bar.update(1)


async def measure(server: RunningServer, mode: str, users: int, holes: list[Hole], per_user: int, steps: int, bar: Any) -> Run:
    """``users`` closed-loop clients, ``per_user`` requests each, all started together."""
    forwards = server.metric("dg_engine_forwards_total")
    forward_s = server.metric("dg_engine_forward_seconds_sum")
    canvas_steps = server.metric("dg_engine_canvas_steps_total")
    run = Run(mode=mode, users=users, requests=users * per_user, wall_s=0.0)
    spread = max(len(holes) // max(users, 1), 1)
    async with httpx.AsyncClient(headers=server.headers, timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(_user(client, server, holes, u * spread, per_user, steps, run, bar) for u in range(users)))
        run.wall_s = time.perf_counter() - started
    run.forwards = server.metric("dg_engine_forwards_total") - forwards
    run.forward_s = server.metric("dg_engine_forward_seconds_sum") - forward_s
    run.canvas_steps = server.metric("dg_engine_canvas_steps_total") - canvas_steps
    return run


def plot(runs: list[Run], path: Path, title: str) -> Path:
    """Throughput and latency against concurrent users, batched vs unbatched."""
    plt = pyplot()
    fig, (tput, lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, color in (("batched", "tab:blue"), ("batched-restack", "tab:green"), ("unbatched", "tab:orange")):
        mine = sorted((r for r in runs if r.mode == mode), key=lambda r: r.users)
        if not mine:
            continue
        users = [r.users for r in mine]
        tput.plot(users, [r.requests_per_s for r in mine], "o-", color=color, label=mode)
        p50 = [summarize(r.latencies_ms)["p50"] for r in mine]
        p95 = [summarize(r.latencies_ms)["p95"] for r in mine]
        lat.plot(users, p50, "o-", color=color, label=f"{mode} p50")
        lat.plot(users, p95, "s--", color=color, label=f"{mode} p95")
    tput.set(xlabel="concurrent users", ylabel="requests / s", title="throughput")
    lat.set(xlabel="concurrent users", ylabel="latency (ms)", title="latency per request")
    for ax in (tput, lat):
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rows(runs: list[Run]) -> list[list[Any]]:
    out = []
    for r in sorted(runs, key=lambda r: (r.users, r.mode)):
        stats = summarize(r.latencies_ms)
        out.append([r.users, r.mode, r.requests, fmt(r.requests_per_s, 2), fmt(r.tokens_per_s, 1), fmt(stats["p50"]),
                    fmt(stats["p95"]), fmt(summarize(r.queue_ms)["p50"]), fmt(r.canvases_per_forward, 2),
                    fmt(r.forward_ms)])
    return out


HEADERS = ["users", "mode", "requests", "req/s", "middle tok/s", "p50 ms", "p95 ms", "queue p50 ms", "canvases/forward",
           "forward ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--users", default="1,2,4,8", help="comma-separated concurrent user counts")
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement, spread over the users")
    parser.add_argument("--steps", type=int, default=16, help="maximum denoising steps per request")
    parser.add_argument("--max-batch", type=int, default=8, help="batch size of the batched server")
    parser.add_argument("--batch-cache", default="static", choices=["static", "restack", "both"],
                        help="the servers' batched KV cache: preallocated slots, or restacked per membership change; "
                        "both: a third server, batched on the restacking cache, interleaved with the others")
    parser.add_argument("--canvas-batching", default="auto", choices=["auto", "pad", "per-length"],
                        help="how the batched server groups canvases of different lengths")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server (default: torch's)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "engine_server.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default next to the JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    users = [int(u) for u in args.users.split(",")]
    holes = workload()
    # mode -> (max batch, batch cache); ``--batch-cache both`` adds a batched server on the restacking cache
    cache = "static" if args.batch_cache == "both" else args.batch_cache
    modes = {"batched": (args.max_batch, cache), "unbatched": (1, cache)}
    if args.batch_cache == "both":
        modes = {"batched": (args.max_batch, "static"), "batched-restack": (args.max_batch, "restack"),
                 "unbatched": (1, "static")}
    runs: list[Run] = []
    info = machine_info(args.device if args.device != "auto" else None)
    date = utc_now()
    facts: dict[str, Any] = {}
    per_user = {count: max(1, -(-args.requests // count)) for count in users}
    total = len(modes) * sum(count * per_user[count] for count in users)
    servers: dict[str, RunningServer] = {}
    with tempfile.TemporaryDirectory(prefix="dg-engine-bench-") as work, tqdm(
        total=total, desc="requests", unit="req", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True
    ) as bar:
        try:
            for mode, (batch, batch_cache) in modes.items():  # all stay up; the idle ones sleep on their queues
                servers[mode] = start_engine_server(
                    args.model, Path(work) / mode, "--device", args.device, "--max-batch", str(batch),
                    "--max-queue", "1024", "--canvas-batching", args.canvas_batching, "--batch-cache", batch_cache,
                    token=None, threads=args.threads,
                )
                facts = httpx.get(f"{servers[mode].url}/v1/models", timeout=30).json()["data"][0]["dg"]
                asyncio.run(measure(servers[mode], mode, 1, holes, 2, args.steps, tqdm(disable=True)))  # warm-up
            for count in users:  # modes interleaved per user count, so drift in machine load hits both alike
                for mode in modes:
                    bar.set_postfix_str(f"{mode}, {count} users")
                    runs.append(asyncio.run(measure(servers[mode], mode, count, holes, per_user[count], args.steps, bar)))
        finally:
            for server in servers.values():
                server.stop()
    identical = all(
        r.answers == other.answers
        for r in runs if r.mode.startswith("batched")
        for other in runs if other.mode == "unbatched" and other.users == r.users
    )
    plot_path = args.plot or args.json.with_suffix(".png")
    plot(runs, plot_path, f"engine server: {facts.get('model')} on {facts.get('device')} ({facts.get('dtype')})")
    report = {
        "command": command_line(__file__, argv if argv is not None else sys.argv[1:]),
        "date": date, "machine": info, "model": facts, "steps": args.steps, "max_batch": args.max_batch,
        "canvas_batching": args.canvas_batching,
        "batch_cache": args.batch_cache,
        "requests": args.requests, "answers_identical": identical, "plot": str(plot_path),
        "runs": [{k: v for k, v in asdict(r).items() if k != "answers"} | {
            "requests_per_s": r.requests_per_s, "tokens_per_s": r.tokens_per_s,
            "canvases_per_forward": r.canvases_per_forward, "forward_ms": r.forward_ms, "latency": summarize(r.latencies_ms)} for r in runs],
        "table": rows(runs),
    }
    write_json(args.json, report)
    print(text_table(HEADERS, rows(runs)))
    print("\n--- markdown for benchmarks/RESULTS.md ---")
    print(markdown_block(report))
    return 0


def markdown_block(report: dict[str, Any]) -> str:
    """A RESULTS.md section: command, machine, date, table, headline."""
    facts, runs = report["model"], report["runs"]
    lines = [
        f"### Engine server, batched vs unbatched: {facts.get('model')} on {facts.get('device')} ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: `{facts.get('model')}` ({fmt(facts.get('parameters', 0) / 1e6)}M parameters), "
        f"{facts.get('device')}/{facts.get('dtype')}; {report['steps']} steps max, adaptive stopping on; "
        f"about {report['requests']} requests per measurement, each user a closed loop; canvas batching "
        f"`{report.get('canvas_batching', 'auto')}` (`{'pad' if facts.get('padCanvases') else 'per-length'}`); "
        f"batch cache `{report.get('batch_cache', 'restack')}`"
        + (" (`batched` and `unbatched` on the static cache, `batched-restack` restacking)."
           if report.get("batch_cache") == "both" else "."),
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        markdown_table(HEADERS, report["table"]),
        "",
    ]
    top = max(r["users"] for r in runs)
    speed = {r["mode"]: r["requests_per_s"] for r in runs if r["users"] == top}
    if "batched" in speed and "unbatched" in speed:
        lines.append(
            f"At {top} users, batching ({report['max_batch']} canvases per forward) gives "
            f"{fmt(speed['batched'] / speed['unbatched'], 2)}x the requests/s of one canvas per forward. "
        )
    lines.append(f"Batched answers identical to unbatched: {'yes' if report['answers_identical'] else 'NO'}.")
    lines += ["", f"Plot: `{report['plot']}`."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Engine-server soak: concurrent clients for a long time; latency and memory over time.

Starts ``dg-lsp engine-serve`` (with a token) and runs ``--clients`` closed-loop clients for
``--minutes``: most send completions for the fixture holes (half of them streamed with drafts),
and every ``--disconnect-every``-th client gives up on its request after a random short wait
(the server must cancel it and keep no state). Every ``--sample-s`` seconds the server's RSS
and ``/metrics`` are sampled. Reported: requests by outcome, latency p50/p99 per minute and
overall, RSS at start and end (growth), and whether the server stayed healthy.

    python benchmarks/engine_soak.py --minutes 30 --clients 16        # the issue-13 measurement
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    command_line,
    fmt,
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
from benchmarks.engine_server import Hole, payload, workload  # noqa: E402
from dg_lsp.engine_server.launch import RunningServer, start_engine_server  # noqa: E402


@dataclass
class Soak:
    """Everything measured during the soak."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, ms)
    rss: list[tuple[float, float]] = field(default_factory=list)
    #: (seconds, queue depth, active canvases, requests the server cancelled) from /metrics
    engine: list[tuple[float, float, float, float]] = field(default_factory=list)
    health_failures: int = 0
    errors: list[str] = field(default_factory=list)


async def _complete(client: httpx.AsyncClient, server: RunningServer, hole: Hole, stream: bool, steps: int) -> str:
    body = payload(hole, steps) | {"stream": stream}
    if not stream:
        reply = await client.post(f"{server.url}/v1/completions", json=body)
        return "ok" if reply.status_code == 200 else f"http {reply.status_code}"
    final = None
    async with client.stream("POST", f"{server.url}/v1/completions", json=body) as reply:
        if reply.status_code != 200:
            return f"http {reply.status_code}"
        async for line in reply.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                final = json.loads(line[6:])
    return "ok" if final is not None and "choices" in final and final["choices"][0]["finish_reason"] else "no final event"


async def _client(index: int, server: RunningServer, holes: list[Hole], deadline: float, started: float, steps: int,
                  disconnecting: bool, soak: Soak, bar: Any) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(headers=server.headers, timeout=300) as client:
        count = 0
        while time.perf_counter() < deadline:
            hole = holes[(index * 7 + count) % len(holes)]
            stream = (index + count) % 2 == 1
            count += 1
            sent = time.perf_counter()
            try:
                if disconnecting:
                    await asyncio.wait_for(_complete(client, server, hole, stream, steps), rng.uniform(0.05, 0.6))
                    outcome = "ok"
                else:
                    outcome = await _complete(client, server, hole, stream, steps)
            except TimeoutError:
                outcome = "client gave up"
            except httpx.HTTPError as exc:
                outcome = f"transport error {type(exc).__name__}"
                if len(soak.errors) < 10:
                    soak.errors.append(f"{type(exc).__name__}: {exc}")
            elapsed = (time.perf_counter() - sent) * 1000.0
            soak.outcomes[outcome] += 1
            if outcome == "ok":
                soak.latencies.append((sent - started, elapsed))
            bar.update(1)


async def _sampler(server: RunningServer, deadline: float, started: float, every: float, soak: Soak) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            soak.rss.append((time.perf_counter() - started, rss_mib(server.process.pid)))
            try:
                health = await client.get(f"{server.url}/health")  # a liveness probe: no token
                if health.status_code != 200:
                    soak.health_failures += 1
                metrics = (await client.get(f"{server.url}/metrics", headers=server.headers)).text
                soak.engine.append((time.perf_counter() - started, *_samples(metrics)))
            except httpx.HTTPError:
                soak.health_failures += 1
            if time.perf_counter() >= deadline:
                return
            await asyncio.sleep(min(every, max(deadline - time.perf_counter(), 0.0)))


def _samples(metrics: str) -> tuple[float, float, float]:
    """Queue depth, active canvases and cancelled requests from a /metrics text."""
    wanted = {"dg_engine_queue_depth": 0.0, "dg_engine_active_canvases": 0.0,
              'dg_engine_requests_total{status="cancelled"}': 0.0}
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            wanted[name] = float(value)
    return tuple(wanted.values())  # type: ignore[return-value]


async def soak_run(server: RunningServer, clients: int, seconds: float, steps: int, disconnect_every: int,
                   sample_s: float, bar: Any) -> Soak:
    """Run the clients and the sampler until ``seconds`` have passed."""
    holes = workload()
    soak = Soak()
    started = time.perf_counter()
    deadline = started + seconds
    tasks = [
        _client(i, server, holes, deadline, started, steps, disconnect_every > 0 and i % disconnect_every == disconnect_every - 1, soak, bar)
        for i in range(clients)
    ]
    await asyncio.gather(_sampler(server, deadline, started, sample_s, soak), *tasks)
    soak.rss.append((time.perf_counter() - started, rss_mib(server.process.pid)))
    return soak


def per_minute(latencies: list[tuple[float, float]], window_s: float = 60.0) -> list[dict[str, float]]:
    """p50/p99 latency and request count per time window."""
    windows: dict[int, list[float]] = {}
    for at, ms in latencies:
        windows.setdefault(int(at // window_s), []).append(ms)
    return [{"start_s": k * window_s, "count": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
            for k, v in sorted(windows.items())]


def plot(report: dict[str, Any], latencies: list[tuple[float, float]], path: Path) -> Path:
    """Latency over time (every request, windowed p50/p99) and server RSS over time."""
    plt = pyplot()
    fig, (lat_ax, rss_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    if latencies:
        xs, ys = zip(*latencies)
        lat_ax.scatter([x / 60 for x in xs], ys, s=2, alpha=0.2, color="grey", label="requests")
    windows = report["windows"]
    mids = [(w["start_s"] + report["window_s"] / 2) / 60 for w in windows]
    lat_ax.plot(mids, [w["p50"] for w in windows], label="p50 per window")
    lat_ax.plot(mids, [w["p99"] for w in windows], label="p99 per window")
    lat_ax.set_yscale("log")
    lat_ax.set_xlabel("minutes")
    lat_ax.set_ylabel("latency (ms, log)")
    lat_ax.set_title(f"{report['clients']} concurrent clients")
    lat_ax.legend(fontsize=8, markerscale=4)
    rss = report["rss_samples"]
    rss_ax.plot([t / 60 for t, _ in rss], [m for _, m in rss])
    rss_ax.set_xlabel("minutes")
    rss_ax.set_ylabel("engine server RSS (MiB)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.set_title("memory")
    for ax in (lat_ax, rss_ax):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"engine soak: {report['model']} on {report['device']}, {fmt(report['minutes'])} min", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HEADERS = ["minutes", "clients", "requests", "ok", "client gave up", "other", "p50 ms", "p99 ms",
           "RSS start MiB", "RSS end MiB", "RSS max MiB", "health failures"]


def row(report: dict[str, Any]) -> list[Any]:
    """The summary table row."""
    outcomes = report["outcomes"]
    other = sum(v for k, v in outcomes.items() if k not in ("ok", "client gave up"))
    return [report["minutes"], report["clients"], sum(outcomes.values()), outcomes.get("ok", 0),
            outcomes.get("client gave up", 0), other, report["latency_ms"]["p50"], report["latency_ms"]["p99"],
            report["rss_start_mib"], report["rss_end_mib"], report["rss_max_mib"], report["health_failures"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16, help="maximum denoising steps per request")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--disconnect-every", type=int, default=8, help="every Nth client disconnects early (0: none)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS and health sampling interval")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "engine_soak.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default next to the JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    info = machine_info(args.device if args.device != "auto" else None)
    date = utc_now()
    seconds = args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="dg-soak-") as work:
        server = start_engine_server(args.model, Path(work), "--device", args.device, "--max-batch", str(args.max_batch),
                                     "--max-queue", str(max(64, args.clients * 2)), threads=args.threads)
        try:
            facts = httpx.get(f"{server.url}/v1/models", headers=server.headers, timeout=30).json()["data"][0]["dg"]
            with tqdm(total=None, desc="soak", unit="req", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True) as bar:
                progress = tqdm(total=int(seconds), desc="seconds", unit="s", file=sys.stderr, disable=args.no_progress,
                                dynamic_ncols=True, position=1)

                async def ticking() -> Soak:
                    async def tick() -> None:
                        for _ in range(int(seconds)):
                            await asyncio.sleep(1)
                            progress.update(1)

                    ticker = asyncio.ensure_future(tick())
                    try:
                        return await soak_run(server, args.clients, seconds, args.steps, args.disconnect_every,
                                              args.sample_s, bar)
                    finally:
                        ticker.cancel()
                        progress.close()

                soak = asyncio.run(ticking())
            alive = server.process.poll() is None
            cancelled = server.metric('dg_engine_requests_total{status="cancelled"}')
        finally:
            server.stop()
        exit_code = server.process.returncode
    window_s = 60.0 if args.minutes >= 2 else max(args.minutes * 60.0 / 4, 1.0)
    latencies_ms = [ms for _, ms in soak.latencies]
    rss_values = [m for _, m in soak.rss]
    report: dict[str, Any] = {
        "command": command_line(__file__, argv if argv is not None else sys.argv[1:]),
        "date": date, "machine": info, "model": facts.get("model"), "device": facts.get("device"),
        "minutes": args.minutes, "clients": args.clients, "steps": args.steps, "max_batch": args.max_batch,
        "disconnect_every": args.disconnect_every,
        "outcomes": dict(soak.outcomes), "server_cancelled_requests": cancelled,
        "latency_ms": {"p50": percentile(latencies_ms, 50), "p99": percentile(latencies_ms, 99),
                       "max": max(latencies_ms, default=float("nan"))},
        "window_s": window_s, "windows": per_minute(soak.latencies, window_s),
        "rss_start_mib": rss_values[0], "rss_end_mib": rss_values[-1], "rss_max_mib": max(rss_values),
        "rss_samples": soak.rss, "engine_samples": soak.engine, "health_failures": soak.health_failures, "server_alive_at_end": alive,
        "server_exit_code_after_sigterm": exit_code, "transport_errors": soak.errors,
    }
    report["plot"] = str(plot(report, soak.latencies, args.plot or args.json.with_suffix(".png")))
    write_json(args.json, report)
    print(text_table(HEADERS, [row(report)]))
    print("\n--- markdown for benchmarks/RESULTS.md ---")
    print(markdown_block(report))
    return 0


def markdown_block(report: dict[str, Any]) -> str:
    """A RESULTS.md section: command, machine, date, table."""
    return "\n".join([
        f"### Engine soak: {report['clients']} concurrent clients for {fmt(report['minutes'])} minutes ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: `{report['model']}` on {report['device']}; every "
        f"{report['disconnect_every']}th client disconnects early. Machine: {machine_line(report['machine'])}.",
        "",
        markdown_table(HEADERS, [row(report)]),
        "",
        f"Server alive at the end: {report['server_alive_at_end']}; exit code after SIGTERM: "
        f"{report['server_exit_code_after_sigterm']}; requests the server counted as cancelled: "
        f"{fmt(report['server_cancelled_requests'], 0)}.",
        "",
        f"Plot: `{report['plot']}`.",
    ])


if __name__ == "__main__":
    sys.exit(main())

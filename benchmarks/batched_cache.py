"""The engine server's batched denoising: slotted static KV cache vs restacking per membership change.

In one process, on one loaded model, the batch scheduler of ``dg-lsp engine-serve`` is run in
two ways, interleaved per user count so outside load falls on both alike:

- ``static``: every request's prompt states copied once into a slot of a preallocated
  :class:`~dg_lsp.engine.batched_cache.BatchedStaticKV`; joining or leaving moves nothing else;
- ``restack``: each request keeps its own prompt cache, and the batch's caches are left-padded
  and concatenated again whenever the set of canvases in a forward changes (the path before).

Part 1, closed-loop users (threads, as the server's clients would be) sending the fixture holes as
``benchmarks/engine_server.py`` does (16 steps, greedy, context budget 1024, the server's canvas
batching for the device): per mode and user count, the decoder forward time per step, per
canvas-step, the time and KV bytes spent laying out batches after membership changes, the copy
into slots at admission, filler rows, requests/s, and whether both modes gave the same answers.

Part 2, the cost of one membership change at a fixed context, isolated: with ``B`` canvases in
the batch, one leaves and another joins. ``restack`` re-stacks all ``B`` caches; ``static`` copies
the joiner's prompt into the freed slot and rebuilds the masks.

    python benchmarks/batched_cache.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    command_line,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    text_table,
    utc_now,
    write_json,
)
from benchmarks.engine_server import Hole, workload  # noqa: E402
from dg_lsp.engine.batched_cache import BatchedStaticKV  # noqa: E402
from dg_lsp.engine.batching import batch_logits, batch_prompts, slot_layout, slot_logits  # noqa: E402
from dg_lsp.engine.denoiser import CanvasRow, CanvasSpec  # noqa: E402
from dg_lsp.engine.engine import Engine, InfillRequest  # noqa: E402
from dg_lsp.engine.fast_path import FastPathSettings  # noqa: E402
from dg_lsp.engine.prompt_cache import PromptCache, cache_layers, layer_tensors  # noqa: E402
from dg_lsp.engine.sampler import SamplerSettings  # noqa: E402
from dg_lsp.engine.scheduler import BatchScheduler, StepReport  # noqa: E402
from dg_lsp.engine.wire import CompletionRequest  # noqa: E402
from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, load_model  # noqa: E402

MODES = ("static", "restack")


@dataclass
class Run:
    """One (mode, users) measurement."""

    mode: str
    users: int
    requests: int = 0
    wall_s: float = 0.0
    forward_ms: list[float] = field(default_factory=list)
    forward_cpu_ms: list[float] = field(default_factory=list)
    canvases: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    layout_ms: list[float] = field(default_factory=list)
    layout_bytes: int = 0
    join_ms: float = 0.0
    join_bytes: int = 0
    joins: int = 0
    moves: int = 0
    move_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        steps = sum(self.canvases)
        return {
            "mode": self.mode,
            "users": self.users,
            "requests": self.requests,
            "req_per_s": self.requests / self.wall_s if self.wall_s else 0.0,
            "forwards": len(self.forward_ms),
            "canvases_per_forward": steps / len(self.forward_ms) if self.forward_ms else 0.0,
            "filler_rows_per_forward": (sum(self.rows) - steps) / len(self.forward_ms) if self.forward_ms else 0.0,
            "forward_ms_p50": statistics.median(self.forward_ms) if self.forward_ms else 0.0,
            "forward_ms_mean": statistics.fmean(self.forward_ms) if self.forward_ms else 0.0,
            "forward_cpu_ms_p50": statistics.median(self.forward_cpu_ms) if self.forward_cpu_ms else 0.0,
            "cpu_ms_per_canvas_step": sum(self.forward_cpu_ms) / steps if steps else 0.0,
            "ms_per_canvas_step": sum(self.forward_ms) / steps if steps else 0.0,
            "layout_changes": len(self.layout_ms),
            "layout_ms_per_change": statistics.fmean(self.layout_ms) if self.layout_ms else 0.0,
            "layout_share_of_forward_time": sum(self.layout_ms) / sum(self.forward_ms) if self.forward_ms else 0.0,
            "layout_mib": self.layout_bytes / 2**20,
            "joins": self.joins,
            "join_ms_per_request": self.join_ms / self.joins if self.joins else 0.0,
            "join_mib": self.join_bytes / 2**20,
            "moves": self.moves,
            "move_mib": self.move_bytes / 2**20,
            "latency_ms_p50": statistics.median(self.latencies_ms) if self.latencies_ms else 0.0,
        }


def infill_request(engine: Engine, hole: Hole, steps: int) -> InfillRequest:
    """What ``benchmarks/engine_server.py`` sends for ``hole``, as the server turns it into a request."""
    body = CompletionRequest.model_validate(
        {
            "prompt": hole.prefix, "suffix": hole.suffix, "max_tokens": 256, "temperature": 0.0, "seed": 0,
            "dg": {"kind": hole.kind, "language": hole.language, "max_context_tokens": 1024,
                   "sampler": {"max_steps": steps}},
        }
    )
    return body.infill_request(engine.sampler_defaults)


def measure(engine: Engine, mode: str, users: int, holes: list[Hole], per_user: int, steps: int, max_batch: int) -> Run:
    """``users`` closed-loop threads, ``per_user`` requests each, on a fresh scheduler in ``mode``."""
    run = Run(mode=mode, users=users, requests=users * per_user)

    def on_step(report: StepReport) -> None:
        run.forward_ms.append(report.forward_ms)
        run.forward_cpu_ms.append(report.forward_cpu_ms)
        run.canvases.append(report.canvases)
        run.rows.append(report.rows or report.canvases)
        if report.layout_ms:
            run.layout_ms.append(report.layout_ms)
            run.layout_bytes += report.layout_bytes

    scheduler = BatchScheduler(engine, max_batch=max_batch, max_queue=64, on_step=on_step, static_cache=mode == "static")
    kinds = {hole.kind: hole for hole in reversed(holes)}
    for hole in kinds.values():  # one request per hole kind: every canvas length's slot buffers allocated
        scheduler.infill(infill_request(engine, hole, 2))
    for samples in (run.forward_ms, run.forward_cpu_ms, run.canvases, run.rows, run.layout_ms):
        samples.clear()
    run.layout_bytes = 0
    before = asdict(scheduler.counters)
    spread = max(len(holes) // max(users, 1), 1)
    lock = threading.Lock()

    def user(first: int) -> None:
        for i in range(per_user):
            hole = holes[(first + i) % len(holes)]
            started = time.perf_counter()
            result = scheduler.infill(infill_request(engine, hole, steps))
            with lock:
                run.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                run.answers[f"{hole.name}@{first + i}"] = result.text

    threads = [threading.Thread(target=user, args=(u * spread,)) for u in range(users)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - started
    after = asdict(scheduler.counters)
    run.joins = after["joins"] - before["joins"]
    run.join_ms = after["join_ms"] - before["join_ms"]
    run.join_bytes = after["join_bytes"] - before["join_bytes"]
    run.moves = after["moves"] - before["moves"]
    run.move_bytes = after["move_bytes"] - before["move_bytes"]
    scheduler.close()
    return run


def membership_change(engine: Engine, context: int, batch: int, reps: int) -> dict[str, Any]:
    """Time of one leave + one join with ``batch`` canvases of ``context``-token prompts (median of ``reps``)."""
    model = engine.loaded.model
    generator = torch.Generator().manual_seed(0)
    vocab = int(engine.loaded.tokenizer.get_vocab_size())
    caches, rows = [], []
    for i in range(batch + 1):
        cache = PromptCache(model)
        cache.encode(torch.randint(10, vocab, (context - i,), generator=generator).tolist())
        caches.append(cache)
        rows.append(CanvasRow.start(model, cache.cache, len(cache.ids), CanvasSpec(length=64), SamplerSettings(), i))
    # restack: the batch after the change is rows 1..batch (row 0 left, row batch joined)
    restack = []
    for _ in range(reps):
        started = time.perf_counter()
        stacked = batch_prompts(model, rows[1:]) if batch > 1 else None
        restack.append((time.perf_counter() - started) * 1000.0)
    restack_bytes = 0
    if stacked is not None:
        for layer in cache_layers(stacked.cache):
            keys, values = layer_tensors(layer)
            restack_bytes += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    kv = BatchedStaticKV(model, max(batch, 1), context)
    slot_rows = [CanvasRow.start(model, None, len(c.ids), CanvasSpec(length=64), SamplerSettings(), i)
                 for i, c in enumerate(caches)]
    for slot in range(batch):
        kv.fill(slot, caches[slot], [])
    static, static_bytes = [], 0
    for _ in range(reps):
        kv.forget(0)  # row 0 leaves; the joiner (a different prompt cache) takes its slot
        started = time.perf_counter()
        copy = kv.fill(0, caches[batch], [])
        slot_layout(model, kv, [(0, slot_rows[batch]), *((s, slot_rows[s]) for s in range(1, batch))])
        static.append((time.perf_counter() - started) * 1000.0)
        static_bytes = copy.bytes
    return {
        "context": context, "batch": batch,
        "restack_ms": statistics.median(restack), "restack_mib": restack_bytes / 2**20,
        "static_ms": statistics.median(static), "static_mib": static_bytes / 2**20,
        "slot_buffers_mib": kv.nbytes / 2**20,
    }


def step_time(engine: Engine, batch: int, canvas: int, reps: int) -> dict[str, Any]:
    """One decoder forward with ``batch`` canvases after prompts of 200-1000 tokens, each way, alternating.

    ``restack``: the stacked caches built once (as between membership changes); ``static``: the slots
    filled once. Medians of wall and thread CPU time over ``reps`` forwards each.
    """
    model = engine.loaded.model
    generator = torch.Generator().manual_seed(1)
    vocab = int(engine.loaded.tokenizer.get_vocab_size())
    lengths = [200 + (800 * i) // max(batch - 1, 1) for i in range(batch)]
    caches, rows, slot_rows = [], [], []
    kv = BatchedStaticKV(model, 8, max(lengths))
    for i, n in enumerate(lengths):
        cache = PromptCache(model)
        cache.encode(torch.randint(10, vocab, (n,), generator=generator).tolist())
        caches.append(cache)
        rows.append(CanvasRow.start(model, cache.cache, n, CanvasSpec(length=canvas), SamplerSettings(), i))
        slot_rows.append(CanvasRow.start(model, None, n, CanvasSpec(length=canvas), SamplerSettings(), i))
        kv.fill(i, cache, [])
    members = list(enumerate(slot_rows))
    _, prompts = batch_logits(model, rows)
    _, layout = slot_logits(model, kv, members)
    times: dict[str, list[tuple[float, float]]] = {"restack": [], "static": []}
    for rep in range(reps):
        for mode in (MODES if rep % 2 else tuple(reversed(MODES))):
            wall, cpu = time.perf_counter(), time.thread_time()
            if mode == "static":
                slot_logits(model, kv, members, layout)
            else:
                batch_logits(model, rows, prompts)
            times[mode].append(((time.perf_counter() - wall) * 1000.0, (time.thread_time() - cpu) * 1000.0))
    out: dict[str, Any] = {"batch": batch, "canvas": canvas, "prompt_tokens": lengths}
    for mode, samples in times.items():
        out[f"{mode}_ms"] = statistics.median(w for w, _ in samples)
        out[f"{mode}_cpu_ms"] = statistics.median(c for _, c in samples)
    return out


STEP_HEADERS = ["canvases", "canvas", "restack ms", "static ms", "restack CPU ms", "static CPU ms", "static / restack (CPU)"]
RUN_HEADERS = ["users", "mode", "requests", "req/s", "forward p50 ms", "ms / canvas-step", "CPU ms / canvas-step", "canvases/forward",
               "filler rows/forward", "layout changes", "ms / change", "KV MiB copied at changes",
               "share of forward time", "slot copy ms / request", "slot copy MiB", "slot moves (MiB)"]
CHANGE_HEADERS = ["canvases in batch", "context", "restack ms", "restack MiB copied", "static ms (slot copy + masks)",
                  "static MiB copied", "slot buffers MiB"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--users", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement, spread over the users")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens for part 2")
    parser.add_argument("--reps", type=int, default=20, help="repetitions per point of part 2")
    parser.add_argument("--changes", default="1,2,4,8", help="canvases in the batch for part 2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "batched_cache.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device, torch.get_num_threads())
    loaded = load_model(args.model or EMBEDDED_MODEL_DIR, args.device, "float32", "none", canvases=args.max_batch)
    engine = Engine(loaded, fast_path=FastPathSettings(compile="off"))
    holes = workload()
    users_list = [int(u) for u in args.users.split(",")]
    runs: list[Run] = []
    for users in users_list:
        per_user = max(1, args.requests // users)
        order = MODES if users % 2 else tuple(reversed(MODES))
        for mode in order:
            run = measure(engine, mode, users, holes, per_user, args.steps, args.max_batch)
            runs.append(run)
            s = run.summary()
            print(f"{users} users {mode}: forward p50 {s['forward_ms_p50']:.1f} ms, {s['ms_per_canvas_step']:.2f} ms/canvas-step "
                  f"({s['cpu_ms_per_canvas_step']:.2f} CPU), "
                  f"{s['layout_changes']} changes x {s['layout_ms_per_change']:.2f} ms", flush=True)
    same = all(
        a.answers == b.answers for a in runs for b in runs if a.users == b.users and a.mode != b.mode
    )
    steps_alone = [step_time(engine, batch, 64, args.reps) for batch in map(int, args.changes.split(","))]
    step_rows = [[c["batch"], c["canvas"], fmt(c["restack_ms"]), fmt(c["static_ms"]), fmt(c["restack_cpu_ms"]),
                  fmt(c["static_cpu_ms"]), fmt(c["static_cpu_ms"] / c["restack_cpu_ms"], 2)] for c in steps_alone]
    changes = [membership_change(engine, args.context, batch, args.reps) for batch in map(int, args.changes.split(","))]
    summaries = [r.summary() for r in sorted(runs, key=lambda r: (r.users, r.mode))]
    run_rows = [[s["users"], s["mode"], s["requests"], fmt(s["req_per_s"], 2), fmt(s["forward_ms_p50"]),
                 fmt(s["ms_per_canvas_step"], 2), fmt(s["cpu_ms_per_canvas_step"], 2), fmt(s["canvases_per_forward"], 2), fmt(s["filler_rows_per_forward"], 2),
                 s["layout_changes"], fmt(s["layout_ms_per_change"], 2), fmt(s["layout_mib"], 1),
                 f"{100 * s['layout_share_of_forward_time']:.1f}%", fmt(s["join_ms_per_request"], 3), fmt(s["join_mib"], 1),
                 f"{s['moves']} ({fmt(s['move_mib'], 1)})"]
                for s in summaries]
    change_rows = [[c["batch"], c["context"], fmt(c["restack_ms"], 3), fmt(c["restack_mib"], 1), fmt(c["static_ms"], 3),
                    fmt(c["static_mib"], 2), fmt(c["slot_buffers_mib"], 1)] for c in changes]
    print(text_table(RUN_HEADERS, run_rows))
    print(text_table(CHANGE_HEADERS, change_rows))
    print(text_table(STEP_HEADERS, step_rows))
    print(f"same answers in both modes: {'yes' if same else 'NO'}")
    print(markdown_table(RUN_HEADERS, run_rows))
    print(markdown_table(CHANGE_HEADERS, change_rows))
    print(markdown_table(STEP_HEADERS, step_rows))
    print(machine_line(info))
    write_json(args.json, {
        "command": command_line(__file__, argv), "date": utc_now(), "machine": info, "model": loaded.name,
        "runs": summaries, "same_answers": same, "membership_change": changes, "step": steps_alone,
        "answers": {f"{r.mode}/{r.users}": r.answers for r in runs},
    })
    print(f"wrote {args.json}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

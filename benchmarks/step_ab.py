"""This checkout's compiled step against a git revision's, interleaved request by request.

One warm worker process per side (``benchmarks/cpu_compile_variants.py``'s worker, run from each
side's own tree: the baseline is ``git archive``d into a temporary directory), each with its own
inductor cache, the embedded model in bfloat16 with the compiled step and dg-lsp's default
options; then one cached single-line completion (``fixtures/python/shapes.py`` line 34: 8 steps of
a 32-token canvas) from each side in turn, ``--reps`` times. This machine's speed drifts by up to
2x within an hour, so a change to the step is judged by the paired ratio (this tree's time over
the baseline's in the same round), not by times taken at different moments.

    python benchmarks/step_ab.py --baseline 419c9d9 --json benchmarks/results/step_ab.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, ROOT, command_line, machine_info, pyplot, summarize, utc_now, write_json  # noqa: E402
from benchmarks.cpu_compile_variants import HOLES, _start, hole_label, stop_workers, time_interleaved  # noqa: E402

#: The worker variant both sides run: dg-lsp's own CPU compile options.
VARIANT = "dg-lsp default (wrapper)"


def export_revision(revision: str, into: Path) -> str:
    """Write ``revision``'s tree into ``into``; returns its full commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = into.with_suffix(".tar")
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. HEAD~1, a commit id)")
    parser.add_argument("--reps", type=int, default=40, help="completions per side, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between completions")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "step_ab.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: the JSON path with .png)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="the model's dtype (default: the workers' own, bfloat16; needs a baseline whose worker takes --dtype)")
    parser.add_argument("--hole", choices=HOLES, default=None,
                        help="which completion is timed (default: the single line; needs a baseline whose worker takes --hole)")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    start_s: dict[str, float] = {}
    workers: dict[str, subprocess.Popen[str]] = {}
    with tempfile.TemporaryDirectory(prefix="dg-lsp-ab-") as tmp:
        baseline_root = Path(tmp) / "baseline"
        baseline_root.mkdir()
        commit = export_revision(args.baseline, baseline_root)
        roots = {"baseline": baseline_root, "this tree": ROOT}
        try:
            for index, (side, root) in enumerate(tqdm(roots.items(), desc="compile", unit="side")):
                workers[side], start_s[side] = _start(VARIANT, args.threads, Path(tmp) / f"inductor{index}", "on", root,
                                                          dtype=args.dtype, hole=args.hole)
            times = time_interleaved(workers, args.reps, args.gap)
        finally:
            stop_workers(workers)
    ratios = sorted(new / old for new, old in zip(times["this tree"], times["baseline"]))
    summary = {side: {**summarize(values), "start_s": start_s[side]} for side, values in times.items()}
    paired = {"p50": ratios[len(ratios) // 2], "p25": ratios[len(ratios) // 4], "p75": ratios[(3 * len(ratios)) // 4]}
    for side, row in summary.items():
        print(f"{side:10s} p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f}  start {row['start_s']:.0f} s")
    print(f"paired ratio this tree / baseline: p50 {paired['p50']:.3f} (p25 {paired['p25']:.3f}, p75 {paired['p75']:.3f})")
    payload = {
        "benchmark": "step_ab", "date": utc_now(), "command": command_line(__file__, argv),
        "machine": machine_info("cpu", args.threads), "baseline": commit, "reps": args.reps,
        "dtype": args.dtype or "bfloat16",
        "hole": hole_label(args.hole), "summary_ms": summary, "paired_ratio": paired, "samples_ms": times,
    }
    write_json(args.json, payload)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.boxplot([times["baseline"], times["this tree"]], showfliers=False)
        ax.set_xticks([1, 2], [f"baseline {commit[:8]}", "this tree"])
        ax.set_ylabel(f"{args.hole or 'single-line'} completion, ms (cached prompt)")
        ax.set_title(f"Compiled step A/B, interleaved; paired ratio p50 {paired['p50']:.3f}")
        fig.tight_layout()
        fig.savefig(args.plot or args.json.with_suffix(".png"), dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())

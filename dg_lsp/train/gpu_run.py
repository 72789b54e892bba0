"""One GPU training run, prepared here and run on a lent GPU machine (device tool) in one call.

Three steps; only ``device`` runs on the GPU machine, and it imports nothing but the standard
library until it has installed what it carries:

``pack`` (here)
    writes ``.work/gpu/`` (ignored by git; the run carries it): ``corpus.jsonl.gz`` (the
    training files of the chosen languages, held-out files removed, ≤ 40 MB), ``pack.json``
    (where the weights to continue from are: the checkout's own path when git tracks them, as
    the shipped model, which travels with the checkout anyway; else a copy in ``init/``),
    ``wheels/`` (transformers 5.23, tree-sitter, lsprotocol and their needs for CPython 3.12,
    which the GPU image lacks: :data:`WHEELS`) and ``grammars.tar.xz`` (the tree-sitter grammars
    of those languages only, copied from this environment; abi3 builds). It refuses a pack that,
    with the checkout, would exceed what one device call sends (64 MiB).
``device`` (there, ≤ 9 minutes)
    installs the wheels into ``/tmp/site``, unpacks the grammars into ``/tmp/grammars``, trains with
    ``--device cuda`` (bf16 autocast, example making in worker processes) for ``--minutes``, and writes the bf16 weights to ``$OUT`` as
    safetensors shards of ≤ 15 MiB (the device returns ≤ 8 files of ≤ 16 MiB), with config,
    tokenizer, training facts, history and summary.
``unpack`` (here)
    merges the returned shards into one ``model.safetensors`` in a model directory.

Commands::

    python -m dg_lsp.train.gpu_run pack
    # device tool: run(command="PYTHONUNBUFFERED=1 python3 -m dg_lsp.train.gpu_run device --minutes 8",
    #                  carry=[".work/gpu"], timeout_s=600)
    python -m dg_lsp.train.gpu_run unpack /work/.device/<files_at> --out .work/gpu-model
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PACK = Path(".work/gpu")
#: Top-level modules the lent GPU's image provides that the training run may import at module level
#: (``/work/.library/device/KINDS.md``, the image as read on 2026-11-17).
IMAGE_MODULES = ("torch", "numpy", "tokenizers", "safetensors", "huggingface_hub", "tqdm", "yaml", "packaging")
#: Top-level modules the pack carries (:data:`WHEELS` and the grammars in :data:`GRAMMARS`).
CARRIED_MODULES = ("transformers", "tree_sitter", "regex", "lsprotocol", "cattrs", "attrs", "attr", "tree_sitter_language_pack")
#: Languages trained on the GPU (their grammars travel; Python first: HumanEval is Python).
GPU_LANGUAGES = ("python", "javascript", "typescript", "tsx")
#: What the GPU image lacks (its transformers is older than DiffusionGemma's; no tree-sitter, no lsprotocol,
#: which the trainer's hole picker imports through ``dg_lsp.syntax``), with the versions pyproject pins, and
#: what those need newer than the image may have: transformers 5.23 checks ``regex>=2025.10.22`` at import;
#: lsprotocol needs cattrs (not in the image) and attrs. Rehearsed in a Python 3.12 / torch 2.11 environment
#: holding only the image's other packages (``benchmarks/RESULTS.md``, session 23).
WHEELS = (
    "transformers==5.23.0", "tree-sitter==0.26.1", "regex==2026.11.19", "lsprotocol==2025.0.0", "cattrs==26.2.1",
    "attrs==26.1.0",
)
#: File-name prefixes of :data:`WHEELS`' wheels (a pack missing one downloads them all again).
WHEEL_PREFIXES = tuple(wheel.split("==")[0].replace("-", "_") + "-" for wheel in WHEELS)
#: Grammar packages imported by tree_sitter_language_pack's __init__.
GRAMMAR_PACKAGES = ("tree_sitter_c_sharp", "tree_sitter_embedded_template", "tree_sitter_yaml")
MAX_CORPUS_BYTES = 40 * 1024 * 1024
MAX_SHARD = "15MB"
SPECIAL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# -- pack (here) --------------------------------------------------------------------------------
def pack_corpus(corpus: Path, out: Path, languages: tuple[str, ...], held_out_every: int) -> dict[str, int]:
    """Gzip the training files of ``languages`` (every ``held_out_every``-th file stays behind)."""
    kept = skipped = 0
    with open(corpus, encoding="utf-8") as src, gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as dst:
        for index, line in enumerate(src):
            record = json.loads(line)
            if index % held_out_every == 0 or record["language"] not in languages:
                skipped += 1
                continue
            dst.write(json.dumps({"text": record["text"], "language": record["language"]}) + "\n")
            kept += 1
    size = out.stat().st_size
    if size > MAX_CORPUS_BYTES:
        raise SystemExit(f"gpu_run: {out} is {size / 1e6:.1f} MB, over the 40 MB budget; pass fewer --languages")
    return {"files": kept, "skipped": skipped, "bytes": size}


def pack_grammars(site: Path, languages: tuple[str, ...]) -> None:
    """Copy tree_sitter_language_pack with only ``languages``' grammars, and the packages it imports."""
    import tree_sitter_language_pack

    source = Path(tree_sitter_language_pack.__file__).parent
    target = site / "tree_sitter_language_pack"
    shutil.rmtree(target, ignore_errors=True)
    (target / "bindings").mkdir(parents=True)
    for name in ("__init__.py", "py.typed"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    shutil.copy(source / "bindings" / "__init__.py", target / "bindings" / "__init__.py")
    for language in languages:
        for binding in (source / "bindings").glob(f"{language}.*so"):
            shutil.copy(binding, target / "bindings" / binding.name)
    for package in GRAMMAR_PACKAGES:
        location = __import__(package).__file__
        if location is None:
            raise SystemExit(f"gpu_run: cannot locate the {package} package")
        shutil.rmtree(site / package, ignore_errors=True)
        shutil.copytree(Path(location).parent, site / package, ignore=shutil.ignore_patterns("__pycache__"))


#: What one device call may send: the working tree (tracked and untracked-not-ignored files) plus carried paths.
DEVICE_TREE_LIMIT = 64 * 2**20
#: Kept free under :data:`DEVICE_TREE_LIMIT` (results and notes committed between packing and running).
DEVICE_TREE_MARGIN = 2 * 2**20
#: The pack's description: where the run's initial weights and tokenizer are (``init``, relative to the checkout).
MANIFEST = "pack.json"
#: The grammars, compressed (10 MB of shared objects as files, ~0.6 MB as xz), unpacked on the machine.
GRAMMARS = "grammars.tar.xz"


def tree_bytes(root: Path = Path(".")) -> int:
    """Bytes of the files a device call sends besides carried paths: tracked plus untracked-not-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode("utf-8", "surrogateescape")
    total = 0
    for name in filter(None, listed.split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def is_tracked_directory(path: Path, root: Path = Path(".")) -> bool:
    """Whether every file of the model directory ``path`` is tracked by git in ``root`` (so it travels anyway)."""
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    files = sorted(p.relative_to(root.resolve()).as_posix() for p in path.resolve().iterdir() if p.is_file())
    tracked = subprocess.run(
        ["git", "ls-files", "--", relative.as_posix()], cwd=root, capture_output=True, text=True, check=False
    ).stdout.split()
    return bool(files) and set(files) <= set(tracked)


def pack_init(init: Path, out: Path) -> str:
    """The initial weights: the checkout's own path when git tracks them (no second copy travels), else copied into ``out/init``."""
    target = out / "init"
    shutil.rmtree(target, ignore_errors=True)
    if is_tracked_directory(init):
        return init.resolve().relative_to(Path(".").resolve()).as_posix()
    target.mkdir()
    for item in init.iterdir():
        if item.is_file() and item.name != "MODEL_CARD.md":
            shutil.copy(item, target / item.name)
    return target.as_posix()


def pack(args: argparse.Namespace) -> int:
    """Build ``.work/gpu`` for one device run, and check that it travels within the device's limit."""
    import tempfile

    from dg_lsp.train.trainer import HELD_OUT_EVERY

    out: Path = args.pack
    out.mkdir(parents=True, exist_ok=True)
    languages = tuple(args.languages.split(","))
    stats = pack_corpus(args.corpus, out / "corpus.jsonl.gz", languages, HELD_OUT_EVERY)
    init = pack_init(Path(args.init), out)
    (out / MANIFEST).write_text(json.dumps({"init": init}) + "\n")
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    if not all(any(wheels.glob(f"{prefix}*.whl")) for prefix in WHEEL_PREFIXES):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
             "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(wheels), *WHEELS],
            check=True,
        )
    shutil.rmtree(out / "site", ignore_errors=True)  # an older pack's uncompressed grammars
    with tempfile.TemporaryDirectory() as scratch:
        pack_grammars(Path(scratch), languages)
        with tarfile.open(out / GRAMMARS, "w:xz") as archive:
            for item in sorted(Path(scratch).iterdir()):
                archive.add(item, arcname=item.name)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    tree = tree_bytes()
    print(json.dumps({"pack": str(out), "corpus": stats, "languages": languages, "init": init, "total_bytes": total,
                      "tree_bytes": tree}))
    error = travel_error(tree, total)
    if error is not None:
        raise SystemExit(f"gpu_run: {error}")
    return 0


def travel_error(tree: int, pack_bytes: int) -> str | None:
    """Why a checkout of ``tree`` bytes with a pack of ``pack_bytes`` cannot go in one device call (None: it can)."""
    if tree + pack_bytes <= DEVICE_TREE_LIMIT - DEVICE_TREE_MARGIN:
        return None
    return (
        f"the checkout ({tree / 2**20:.1f} MiB) and the pack ({pack_bytes / 2**20:.1f} MiB) would send "
        f"{(tree + pack_bytes) / 2**20:.1f} MiB; a device call takes at most {DEVICE_TREE_LIMIT / 2**20:.0f} MiB "
        f"(keep {DEVICE_TREE_MARGIN / 2**20:.0f} MiB free): start from tracked weights (--init "
        "dg_lsp/models/dg-code-small), or pass fewer --languages"
    )


def packed_init(pack_dir: Path) -> Path:
    """Where the packed run's initial weights and tokenizer are (the manifest's ``init``)."""
    manifest = pack_dir / MANIFEST
    if not manifest.exists():
        raise SystemExit(f"gpu_run: {manifest} is missing: run `python -m dg_lsp.train.gpu_run pack` first")
    return Path(json.loads(manifest.read_text())["init"])


# -- device (there) -----------------------------------------------------------------------------
def trainer_command(args: argparse.Namespace, pack_dir: Path, init: Path, train_dir: Path) -> list[str]:
    """The trainer's command line on the GPU machine: a warm start from ``init``, or (``--from-scratch``) its tokenizer only."""
    start = [] if args.from_scratch else ["--init-from", str(init)]
    return [
        sys.executable, "-m", "dg_lsp.train.trainer",
        "--corpus", str(pack_dir / "corpus.jsonl.gz"), "--tokenizer", str(init), *start, "--geometry", args.geometry,
        "--out", str(train_dir), "--device", args.device, "--bf16",
        "--minutes", str(args.minutes), "--time-schedule", "--total-steps", str(args.total_steps), "--warmup-steps", "100",
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--context-tokens", str(args.context_tokens),
        "--max-canvas", "128", "--workers", str(args.workers), "--eval-every", "200", "--save-minutes", "1000",
        "--no-progress", "--languages", ",".join(GPU_LANGUAGES),
    ]


def device(args: argparse.Namespace) -> int:
    """Install the carried wheels, train on CUDA, write sharded bf16 weights to $OUT."""
    if args.geometry != "small" and not args.from_scratch:
        raise SystemExit("gpu_run: the packed weights are the small geometry; another --geometry needs --from-scratch")
    out = Path(args.out or os.environ.get("OUT") or "/tmp/gpu-out")
    out.mkdir(parents=True, exist_ok=True)
    pack_dir: Path = args.pack
    site = Path("/tmp/site")
    started = time.time()
    if not args.no_install:
        wheels = sorted(str(w) for w in (pack_dir / "wheels").glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], check=True)
    grammars = Path(args.grammars_dir)
    with tarfile.open(pack_dir / GRAMMARS, "r:xz") as archive:
        archive.extractall(grammars, filter="data")
    init = packed_init(pack_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(grammars.resolve()), str(Path.cwd())])
    env["PYTHONUNBUFFERED"] = "1"
    train_dir = Path(args.train_dir)
    command = trainer_command(args, pack_dir, init, train_dir)
    print("+", " ".join(command), flush=True)
    code = subprocess.run(command, env=env).returncode
    export = train_dir / "model"
    if code != 0 or not (export / "config.json").exists():
        print(f"gpu_run: training failed (exit {code})", flush=True)
        return code or 1
    shard = [sys.executable, "-c", _SHARD_SCRIPT, str(export), str(out), MAX_SHARD]
    subprocess.run(shard, env=env, check=True)
    for name in ("history.jsonl", "train-summary.json"):
        if (train_dir / name).exists():
            shutil.copy(train_dir / name, out / name)
    print(json.dumps({"seconds": round(time.time() - started), "files": sorted(p.name for p in out.iterdir())}))
    return 0


#: Runs with the installed transformers: re-save the exported bf16 model in shards plus its training facts
#: (with the history and summary: 7 files; the tokenizer is the packed one and stays here).
_SHARD_SCRIPT = """
import shutil, sys
from pathlib import Path
import torch
from transformers import DiffusionGemmaForBlockDiffusion
src, dst, shard = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(src), dtype=torch.bfloat16)
model.save_pretrained(str(dst), max_shard_size=shard, safe_serialization=True)
(dst / "generation_config.json").unlink(missing_ok=True)  # 8 files come back at most; unpack rewrites it
shutil.copy(src / "dg_lsp.json", dst / "dg_lsp.json")
"""


# -- unpack (here) ------------------------------------------------------------------------------
def unpack(args: argparse.Namespace) -> int:
    """Merge the returned shards into one ``model.safetensors`` (bf16) in ``--out``, with the packed tokenizer."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    source: Path = args.files
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(source), dtype=torch.bfloat16)
    model.save_pretrained(str(out), max_shard_size="1GB", safe_serialization=True)
    for name in ("dg_lsp.json", "history.jsonl", "train-summary.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    tokenizer: Path = args.tokenizer if args.tokenizer is not None else packed_init(PACK)
    for name in SPECIAL_FILES:
        shutil.copy(tokenizer / name, out / name)
    print(f"unpacked into {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build .work/gpu here")
    p.add_argument("--corpus", type=Path, default=Path(".work/corpus/corpus.jsonl"))
    p.add_argument("--init", type=Path, default=Path("dg_lsp/models/dg-code-small"), help="weights to continue from")
    p.add_argument("--languages", default=",".join(GPU_LANGUAGES))
    p.add_argument("--pack", type=Path, default=PACK)
    d = sub.add_parser("device", help="train on the GPU machine")
    d.add_argument("--pack", type=Path, default=PACK)
    d.add_argument("--out", type=Path, default=None, help="default: $OUT")
    d.add_argument("--minutes", type=float, default=8.0)
    d.add_argument("--total-steps", type=int, default=6000, help="hard stop; the rate decays by time (--time-schedule)")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--context-tokens", type=int, default=256)
    d.add_argument("--workers", type=int, default=14)
    d.add_argument("--device", default="cuda", help="torch device (cpu only for a local smoke test)")
    d.add_argument("--train-dir", default="/tmp/gpu-train", help="checkpoint directory on the machine")
    d.add_argument("--no-install", action="store_true", help="use this environment's packages (local smoke test)")
    d.add_argument("--grammars-dir", default="/tmp/grammars", help="where the packed grammars are unpacked")
    d.add_argument("--geometry", default="small", help="model geometry (dg_lsp.model.geometry; not small: --from-scratch)")
    d.add_argument("--from-scratch", action="store_true", help="new weights (the packed model's tokenizer only)")
    u = sub.add_parser("unpack", help="merge returned shards into one model directory")
    u.add_argument("files", type=Path)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--tokenizer", type=Path, default=None, help="directory with the tokenizer files (default: the pack's init)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    handler = {"pack": pack, "device": device, "unpack": unpack}[args.command]
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())

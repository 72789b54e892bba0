"""The packed GPU training run (``dg_lsp.train.gpu_run``) fits one device call and runs in the GPU image.

Imports: a rehearsal in a Python 3.12 / torch 2.11 environment with only the image's packages found the
trainer importing ``lsprotocol`` (through ``dg_lsp.syntax``), which the image lacks: the device run
would have failed at once. This checks the module-level imports of every ``dg_lsp`` module the
trainer loads, in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dg_lsp.train import gpu_run

REPO = Path(__file__).resolve().parents[2]
EMBEDDED = REPO / "dg_lsp" / "models" / "dg-code-small"

_LIST_IMPORTS = """
import ast, json, sys
import dg_lsp.train.trainer, dg_lsp.train.gpu_run
names = {}
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if not name.startswith("dg_lsp") or not path:
        continue
    with open(path, encoding="utf-8") as source:
        body = ast.parse(source.read()).body
    for node in body:  # module level only: imports inside functions, try or if TYPE_CHECKING are optional
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops = [node.module.split(".")[0]]
        else:
            continue
        for top in tops:
            if top != "dg_lsp" and top not in sys.stdlib_module_names:
                names.setdefault(top, []).append(name)
print(json.dumps(names))
"""


def module_level_imports() -> dict[str, list[str]]:
    """Third-party top-level modules the trainer's ``dg_lsp`` modules import, with who imports them."""
    done = subprocess.run([sys.executable, "-c", _LIST_IMPORTS], capture_output=True, text=True, check=True)
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_training_run_imports_only_the_image_or_the_pack() -> None:
    imports = module_level_imports()
    assert "transformers" in imports and "lsprotocol" in imports  # the check sees the trainer's imports
    allowed = set(gpu_run.IMAGE_MODULES) | set(gpu_run.CARRIED_MODULES)
    missing = {top: users for top, users in imports.items() if top not in allowed}
    assert not missing, f"not in the GPU image and not carried by gpu_run pack: {missing}"


def test_every_carried_module_has_its_wheel_or_grammar_copy() -> None:
    wheel_prefixes = {prefix.rstrip("-").replace("-", "_") for prefix in gpu_run.WHEEL_PREFIXES}
    assert len(gpu_run.WHEELS) == len(gpu_run.WHEEL_PREFIXES)
    for wheel, prefix in zip(gpu_run.WHEELS, gpu_run.WHEEL_PREFIXES):
        assert wheel.split("==")[0].replace("-", "_") == prefix.rstrip("-"), (wheel, prefix)
    carried_by_wheels = set(gpu_run.CARRIED_MODULES) - {"tree_sitter_language_pack", "attr"}
    assert carried_by_wheels <= wheel_prefixes


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_tree_bytes_count_tracked_and_untracked_files_but_not_ignored_ones(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "tracked.txt").write_bytes(b"a" * 1000)
    _git(tmp_path, "add", ".gitignore", "tracked.txt")
    (tmp_path / "untracked.txt").write_bytes(b"b" * 300)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"c" * 100_000)
    assert gpu_run.tree_bytes(tmp_path) == len("ignored/\n") + 1000 + 300


def test_tracked_weights_are_named_not_copied_and_others_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert gpu_run.is_tracked_directory(EMBEDDED)
    out = tmp_path / "pack"
    out.mkdir()
    assert gpu_run.pack_init(EMBEDDED, out) == "dg_lsp/models/dg-code-small"
    assert not (out / "init").exists()  # the checkout carries them already
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    for name in ("config.json", "tokenizer.json", "MODEL_CARD.md"):
        (elsewhere / name).write_text("{}")
    assert not gpu_run.is_tracked_directory(elsewhere)
    assert gpu_run.pack_init(elsewhere, out) == (out / "init").as_posix()
    assert sorted(p.name for p in (out / "init").iterdir()) == ["config.json", "tokenizer.json"]
    (out / gpu_run.MANIFEST).write_text(json.dumps({"init": "dg_lsp/models/dg-code-small"}))
    assert gpu_run.packed_init(out) == Path("dg_lsp/models/dg-code-small")


def test_the_checkout_and_the_pack_must_fit_one_device_call() -> None:
    mib = 2**20
    assert gpu_run.travel_error(32 * mib, 24 * mib) is None  # the shipped checkout with its pack (session 23)
    error = gpu_run.travel_error(32 * mib, 42 * mib)  # the same pack with a copy of the weights
    assert error is not None and "64 MiB" in error and "--init" in error


def test_the_grammars_travel_compressed_and_import_after_unpacking(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    gpu_run.pack_grammars(site, ("python",))
    archive = tmp_path / gpu_run.GRAMMARS
    with tarfile.open(archive, "w:xz") as packed:
        for item in sorted(site.iterdir()):
            packed.add(item, arcname=item.name)
    unpacked = tmp_path / "grammars"
    with tarfile.open(archive, "r:xz") as packed:
        packed.extractall(unpacked, filter="data")
    code = "import tree_sitter_language_pack as p; print(p.get_parser('python').parse(b'x = 1\\n').root_node.type)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "module"
    loaded = subprocess.run([sys.executable, "-c", "import tree_sitter_language_pack as p; print(p.__file__)"],
                            env={"PYTHONPATH": str(unpacked)}, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip().startswith(str(unpacked))


def _device_args(*argv: str) -> argparse.Namespace:
    return gpu_run.build_parser().parse_args(["device", *argv])


def test_the_device_run_warm_starts_the_packed_weights_or_starts_a_geometry_from_scratch() -> None:
    init, pack, train = Path("dg_lsp/models/dg-code-small"), Path(".work/gpu"), Path("/tmp/gpu-train")
    warm = gpu_run.trainer_command(_device_args(), pack, init, train)
    assert warm[warm.index("--init-from") + 1] == str(init) and warm[warm.index("--geometry") + 1] == "small"
    assert "--time-schedule" in warm and warm[warm.index("--tokenizer") + 1] == str(init)
    fresh = gpu_run.trainer_command(_device_args("--geometry", "medium", "--from-scratch"), pack, init, train)
    assert "--init-from" not in fresh and fresh[fresh.index("--geometry") + 1] == "medium"
    assert fresh[fresh.index("--tokenizer") + 1] == str(init)  # the same vocabulary either way
    with pytest.raises(SystemExit, match="--from-scratch"):
        gpu_run.device(_device_args("--geometry", "medium"))


def test_the_medium_geometry_is_a_bigger_model_with_the_same_vocabulary() -> None:
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    from dg_lsp.model.geometry import GEOMETRIES

    medium, small = GEOMETRIES["medium"], GEOMETRIES["small"]
    assert medium.vocab_size == small.vocab_size and medium.canvas_length == small.canvas_length
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(medium.to_config())
    parameters = sum(p.numel() for name, p in model.named_parameters() if "vision" not in name)
    assert 20e6 < parameters < 25e6

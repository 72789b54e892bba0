"""The packed GPU training run imports only what the lent machine's image has or the pack carries.

A rehearsal in a Python 3.12 / torch 2.11 environment with only the image's packages found the
trainer importing ``lsprotocol`` (through ``dg_lsp.syntax``), which the image lacks: the device run
would have failed at once. This checks the module-level imports of every ``dg_lsp`` module the
trainer loads, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

from dg_lsp.train import gpu_run

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

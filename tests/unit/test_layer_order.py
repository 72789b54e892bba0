"""Compile-cache keys repeat across processes: transformers' per-layer-type loop runs in one order whatever the hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dg_lsp.model.layer_order import stable_layer_type_order
from dg_lsp.model.loader import load_model

# Runs in a fresh interpreter (the hash seed is fixed at start): records which layer type each
# rotary-embedding call computes, through the encoder and one eager decoder step.
_RECORD = """
import json, sys
from pathlib import Path
from dg_lsp.model.layer_order import stable_layer_type_order
from dg_lsp.engine.denoiser import CanvasSpec, denoise
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import load_model

model = load_model(Path(sys.argv[1]), "cpu", "float32").model
set_order = list(model.model.decoder.unique_layer_types)
if sys.argv[2] == "fixed":
    stable_layer_type_order(model)
calls = []
for module in model.modules():
    if type(module).__name__ == "DiffusionGemmaTextRotaryEmbedding":
        module.register_forward_pre_hook(lambda _module, args: calls.append(args[2]))
ids = [(7 + 13 * i) % 500 + 8 for i in range(20)]
cache = PromptCache(model)
cache.encode(ids)
denoise(model, cache.cache, len(ids), CanvasSpec(length=32), SamplerSettings(max_steps=1), 0)
print(json.dumps({"set_order": set_order, "calls": calls}))
"""


def _record(model_dir: Path, mode: str, seed: int) -> dict[str, list[str]]:
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    done = subprocess.run([sys.executable, "-c", _RECORD, str(model_dir), mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_layer_types_become_a_sorted_list(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, "cpu", "float32").model
    stable_layer_type_order(model)
    orders = [getattr(module, "unique_layer_types") for module in model.modules() if hasattr(module, "unique_layer_types")]
    assert len(orders) == 2  # the encoder's text model and the decoder
    assert all(order == sorted(order) and isinstance(order, list) and len(order) == 2 for order in orders)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotary_embeddings_run_in_one_order_whatever_the_hash_seed(tiny_model_dir: Path, seed: int) -> None:
    unfixed = _record(tiny_model_dir, "as-loaded", seed)
    assert unfixed["calls"] == unfixed["set_order"] * 2  # transformers follows the set's (seed-dependent) order
    fixed = _record(tiny_model_dir, "fixed", seed)
    assert fixed["calls"] == sorted(fixed["set_order"]) * 2  # the same order in every process

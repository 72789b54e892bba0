"""One iteration order for transformers' per-layer-type loops, so compiled graphs repeat from process to process."""

from __future__ import annotations

import torch


def stable_layer_type_order(model: torch.nn.Module) -> None:
    """Make transformers iterate ``unique_layer_types`` in one order in every process, so compile-cache keys repeat.

    DiffusionGemma's encoder and decoder keep their layer types in a ``set`` and compute one
    rotary embedding per type in its iteration order, which for strings follows the process's
    hash seed (``PYTHONHASHSEED``): the traced graph, and so inductor's FX graph cache key,
    then differs from one start to the next about half the time, and a warm start recompiles.
    A sorted list holds the same types.
    """
    for module in model.modules():
        types = getattr(module, "unique_layer_types", None)
        if isinstance(types, (set, frozenset)):
            setattr(module, "unique_layer_types", sorted(types))

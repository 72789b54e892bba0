"""Keep a loaded model's weights in process memory, not in memory-mapped checkpoint files.

On CPU, ``from_pretrained`` can leave tensors backed by a memory map of the safetensors file.
If that file is then truncated or rewritten while the server runs (a re-download, a disk
cleanup), the next forward reads a page that no longer exists and the process dies with
SIGBUS, or silently computes with changed weights. Copying the mapped tensors once after
loading makes the resident model independent of the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAPS = Path("/proc/self/maps")


def _file_mappings(directory: Path) -> list[tuple[int, int]]:
    """Address ranges this process maps from files under ``directory`` (empty if unknown)."""
    try:
        lines = MAPS.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    root = str(directory.resolve())
    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(root):
            low, high = parts[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def make_resident(model: torch.nn.Module, directory: Path) -> int:
    """Copy every parameter and buffer that lives in a memory map of a file under ``directory``.

    Returns the number of bytes copied (0 when nothing was mapped, e.g. on a GPU).
    """
    mapped = _file_mappings(directory) if MAPS.exists() else None
    copied = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type != "cpu" or tensor.numel() == 0:
                continue
            if type(tensor.data) is not torch.Tensor:  # quantized (a tensor subclass): computed at load, not mapped
                continue
            start = tensor.untyped_storage().data_ptr()
            if mapped is not None and not any(low <= start < high for low, high in mapped):
                continue
            tensor.data = tensor.data.clone()
            copied += tensor.nbytes
    if copied:
        log.info("copied %.1f MiB of memory-mapped weights into process memory", copied / 2**20)
    return copied

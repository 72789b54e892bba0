"""``dtype: "auto"`` on a CPU: bfloat16 where the CPU computes it natively and it measures faster, else float32.

Decided once per process, before any weight is read, so a model keeps one dtype for its
whole session (the prompt cache, the uncompiled step and the compiled step swapped in later
all run in it). Native bfloat16 means the ``avx512_bf16`` or ``amx_bf16`` CPU flags (oneDNN
then runs bfloat16 matmuls in hardware); without them bfloat16 is emulated and slower than
float32, so it is never chosen. With them, a ~50 ms matmul probe at a small model's shapes
confirms it: bfloat16 is chosen only if it takes at most :data:`FASTER` of float32's time.

``$DG_LSP_CPU_DTYPE`` (``float32`` or ``bfloat16``) skips the decision.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Overrides the decision: ``float32`` or ``bfloat16``.
CPU_DTYPE_ENV = "DG_LSP_CPU_DTYPE"

#: bfloat16 must take at most this share of float32's time in the probe.
FASTER = 0.8

#: CPU flags (``/proc/cpuinfo``) that mean bfloat16 matmuls in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic in hardware (AVX512-BF16 or AMX-BF16)."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in NATIVE_BF16_FLAGS)


def _best_seconds(run: Callable[[], object], reps: int) -> float:
    run()  # first call: allocation, kernel selection
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def probe_ratio(rows: int = 256, hidden: int = 256, vocab: int = 4096, reps: int = 3) -> float:
    """bfloat16 time / float32 time of a ``rows x hidden @ hidden x vocab`` linear (an LM head at a canvas)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=generator)
    w = torch.randn(vocab, hidden, generator=generator)
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    with torch.inference_mode():
        fp32 = _best_seconds(lambda: torch.nn.functional.linear(x, w), reps)
        bf16 = _best_seconds(lambda: torch.nn.functional.linear(xb, wb), reps)
    return bf16 / max(fp32, 1e-9)


def choose_cpu_dtype(native: bool, ratio: Callable[[], float]) -> tuple[torch.dtype, str]:
    """The dtype and the reason: bfloat16 if ``native`` and ``ratio()`` <= :data:`FASTER`, else float32."""
    if not native:
        return torch.float32, "no native bfloat16 on this CPU"
    measured = ratio()
    if measured <= FASTER:
        return torch.bfloat16, f"native bfloat16, {measured:.2f}x float32's matmul time"
    return torch.float32, f"native bfloat16 but {measured:.2f}x float32's matmul time (not faster)"


@functools.lru_cache(maxsize=1)
def auto_cpu_dtype() -> torch.dtype:
    """What ``dtype: "auto"`` means on this CPU (decided once per process; see the module doc)."""
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip().lower()
    if forced in ("float32", "bfloat16"):
        log.info("CPU dtype %s (from $%s)", forced, CPU_DTYPE_ENV)
        return torch.float32 if forced == "float32" else torch.bfloat16
    dtype, why = choose_cpu_dtype(native_bf16(), probe_ratio)
    log.info("dtype auto on CPU: %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype

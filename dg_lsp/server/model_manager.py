"""The resident model: loaded once, warmed up, swappable by configuration, never fatal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, ModelLoadError, load_model

log = logging.getLogger(__name__)

#: (message, percentage) progress callback.
Progress = Callable[[str, int], None]


class ModelStatus(str, Enum):
    """Where the resident model stands."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, and how."""

    path: Path
    device: str
    dtype: str
    reuse_prompt_cache: bool = True


def model_spec(model: str | None, device: str, dtype: str, reuse_prompt_cache: bool = True) -> ModelSpec:
    """The spec for a configured model path (None → the embedded default)."""
    path = Path(model).expanduser() if model else EMBEDDED_MODEL_DIR
    return ModelSpec(path=path, device=device, dtype=dtype, reuse_prompt_cache=reuse_prompt_cache)


class ModelManager:
    """Holds the current engine; a failed load keeps the previous engine (if any)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.spec: ModelSpec | None = None
        self.status = ModelStatus.LOADING
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None

    def load(self, spec: ModelSpec, progress: Progress | None = None) -> None:
        """Load and warm up ``spec`` (blocking; run it on the engine thread)."""
        report = progress or (lambda message, percent: None)
        self.status = ModelStatus.LOADING
        started = time.perf_counter()
        report(f"loading {spec.path.name}", 5)
        try:
            loaded = load_model(spec.path, spec.device, spec.dtype)
        except ModelLoadError as exc:
            self.error = str(exc)
            self.status = ModelStatus.READY if self.engine is not None else ModelStatus.FAILED
            log.error("model load failed: %s", exc)
            raise
        self.load_seconds = time.perf_counter() - started
        report(f"warming up {spec.path.name} on {loaded.device}", 70)
        engine = Engine(loaded, reuse_prompt_cache=spec.reuse_prompt_cache)
        started = time.perf_counter()
        for kind in (HoleKind.REST_OF_LINE, HoleKind.LINE):
            engine.infill(
                InfillRequest(
                    prefix="def f(x):\n    ",
                    suffix="\n",
                    language="python",
                    kind=kind,
                    settings=SamplerSettings(max_steps=2),
                )
            )
        self.warmup_seconds = time.perf_counter() - started
        self.engine, self.spec, self.error = engine, spec, None
        self.status = ModelStatus.READY
        report("ready", 100)
        log.info("model ready: %s (load %.1fs, warm-up %.1fs)", spec.path, self.load_seconds, self.warmup_seconds)

"""The backend behind the server: a resident model (loaded once, warmed up) or a remote engine server.

Swappable by configuration, never fatal: a failed load keeps the previous backend; an engine
server that cannot be reached yet is kept, so that later requests try it again.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dg_lsp.config import EngineOptions
from dg_lsp.engine.backend import InfillBackend
from dg_lsp.engine.engine import Engine, warmup_requests
from dg_lsp.engine.fast_path import FastPathSettings
from dg_lsp.engine.remote import RemoteBackend, RemoteEngineError, RemoteSettings
from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, ModelLoadError, load_model
from dg_lsp.model.resident import make_resident

log = logging.getLogger(__name__)

#: (message, percentage) progress callback.
Progress = Callable[[str, int], None]


class ModelStatus(str, Enum):
    """Where the resident model stands."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    #: Remote engine configured but not answering yet; each request tries again.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, and how."""

    path: Path
    device: str
    dtype: str
    reuse_prompt_cache: bool = True
    #: auto | fim | chat (see :class:`~dg_lsp.engine.engine.Engine`).
    prompt_format: str = "auto"
    #: Weight quantization: none | fp8 | int8 (see :mod:`dg_lsp.model.quantize`).
    quantize: str = "none"
    #: The engine's fast path and whether its step is compiled (see :mod:`dg_lsp.engine.fast_path`).
    fast_path: bool = True
    compile: str = "auto"


#: Environment variable: the quantization used when neither settings nor the command line give one.
QUANTIZE_ENV = "DG_LSP_QUANTIZE"

#: What to run: a local model, or a remote engine server.
BackendSpec = ModelSpec | RemoteSettings


def model_spec(
    model: str | None,
    device: str,
    dtype: str,
    reuse_prompt_cache: bool = True,
    prompt_format: str = "auto",
    quantize: str | None = None,
    fast_path: bool = True,
    compile: str = "auto",
) -> ModelSpec:
    """The spec for a configured model directory or hub id (None → the embedded default).

    ``quantize`` None → ``$DG_LSP_QUANTIZE``, else ``none``.
    """
    path = Path(model).expanduser() if model else EMBEDDED_MODEL_DIR
    return ModelSpec(
        path=path,
        device=device,
        dtype=dtype,
        reuse_prompt_cache=reuse_prompt_cache,
        prompt_format=prompt_format,
        quantize=quantize or os.environ.get(QUANTIZE_ENV) or "none",
        fast_path=fast_path,
        compile=compile,
    )


def remote_settings(options: EngineOptions) -> RemoteSettings:
    """The remote backend settings for ``engine`` options of kind ``remote``."""
    if options.url is None:
        raise ValueError("a remote engine needs a url")
    return RemoteSettings(
        url=options.url,
        token_file=options.token_file,
        dialect=options.dialect,
        model=options.model,
        timeout_s=options.timeout_ms / 1000.0,
        connect_timeout_s=options.connect_timeout_ms / 1000.0,
        retries=options.retries,
        fim_template=options.fim_template,
    )


def engine_facts(spec: BackendSpec | None) -> dict[str, object]:
    """``dg.info``'s ``engine`` entry: local, or remote with its URL and dialect."""
    if isinstance(spec, RemoteSettings):
        return {"kind": "remote", "url": spec.base_url, "dialect": spec.dialect}
    return {"kind": "local"}


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


class ModelManager:
    """Holds the current backend; a failed load keeps the previous one (if any)."""

    def __init__(self) -> None:
        self.backend: InfillBackend | None = None
        self.spec: BackendSpec | None = None
        self.status = ModelStatus.LOADING
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None

    def load(self, spec: BackendSpec, progress: Progress | None = None) -> None:
        """Switch to ``spec`` (blocking; run it on the engine thread).

        Raises :class:`ModelLoadError` (local) or :class:`RemoteEngineError` (remote) after
        recording the error; an unreachable server is still adopted (status ``unreachable``).
        """
        report = progress or (lambda message, percent: None)
        before = self.status
        try:
            if isinstance(spec, RemoteSettings):
                self._connect(spec, report)
            else:
                self._load_local(spec, report)
        except (ModelLoadError, RemoteEngineError):
            if self.status is ModelStatus.LOADING:  # nothing new adopted: the previous backend stays
                self.status = before if self.backend is not None else ModelStatus.FAILED
            raise
        except MemoryError as exc:  # anywhere in loading (mapping a shard, allocating weights, warming up)
            where = spec.base_url if isinstance(spec, RemoteSettings) else spec.path
            self.error = f"out of memory while loading {where}: {exc}"
            log.error("model load failed: %s", self.error)
            self.status = before if self.backend is not None else ModelStatus.FAILED
            gc.collect()  # give back what the failed load allocated
            raise ModelLoadError(self.error) from exc

    def note_success(self) -> None:
        """A request went through: an engine server that was unreachable (or refusing) works now."""
        if self.status in (ModelStatus.UNREACHABLE, ModelStatus.FAILED) and self.backend is not None:
            self.status, self.error = ModelStatus.READY, None

    def note_failure(self, exc: RemoteEngineError) -> None:
        """A remote request failed: remember why (``dg.info`` shows it)."""
        self.error = str(exc)
        if exc.unreachable and self.status is ModelStatus.READY:
            self.status = ModelStatus.UNREACHABLE

    def runtime_failure(self, exc: BaseException) -> str:
        """The model failed while running (device lost, driver error, out of memory): say what happens now.

        Out of memory keeps the model (the next, smaller request may fit); anything else drops
        it: completions are off until a configuration change loads a model again.
        """
        if _out_of_memory(exc):
            message = f"out of memory while completing ({type(exc).__name__}: {exc}); this request answers empty"
            log.error("%s", message)
            return message
        message = (
            f"the model failed while running ({type(exc).__name__}: {exc}); completions are off until the "
            "model is loaded again (change any setting, e.g. the model or device)"
        )
        log.error("%s", message)
        self._adopt(None, self.spec)
        self.status, self.error = ModelStatus.FAILED, message
        return message

    def close(self) -> None:
        """Release the backend (closes a remote backend's connections)."""
        self._adopt(None, None)

    def _adopt(self, backend: InfillBackend | None, spec: BackendSpec | None) -> None:
        old = self.backend
        self.backend, self.spec = backend, spec
        if isinstance(old, RemoteBackend) and old is not backend:
            old.close()
        if isinstance(old, Engine) and old is not backend and old.fast is not None and old.fast.background is not None:
            old.fast.background.cancel()  # a replaced model's step is never swapped in

    def _connect(self, settings: RemoteSettings, report: Progress) -> None:
        self.status = ModelStatus.LOADING
        report(f"connecting to {settings.base_url}", 10)
        started = time.perf_counter()
        try:
            backend = RemoteBackend(settings)  # reads the token file
        except RemoteEngineError as exc:
            self.error = str(exc)
            raise
        self._adopt(backend, settings)
        self.warmup_seconds = None
        try:
            facts = backend.connect()
        except RemoteEngineError as exc:  # kept: each request tries again
            self.error = str(exc)
            self.status = ModelStatus.UNREACHABLE if exc.unreachable else ModelStatus.FAILED
            log.warning("engine server not available: %s", exc)
            raise
        self.load_seconds = time.perf_counter() - started
        self.status, self.error = ModelStatus.READY, None
        report("ready", 100)
        log.info("engine server %s ready: %s", settings.base_url, facts.get("model"))

    def _load_local(self, spec: ModelSpec, report: Progress) -> None:
        self.status = ModelStatus.LOADING
        started = time.perf_counter()
        report(f"loading {spec.path.name}", 5)
        try:
            loaded = load_model(spec.path, spec.device, spec.dtype, spec.quantize)
            make_resident(loaded.model, loaded.path)  # a shard rewritten later cannot crash the server
            engine = Engine(
                loaded,
                reuse_prompt_cache=spec.reuse_prompt_cache,
                prompt_format=spec.prompt_format,
                fast_path=FastPathSettings(enabled=spec.fast_path, compile=spec.compile),
            )
        except ModelLoadError as exc:
            self.error = str(exc)
            log.error("model load failed: %s", exc)
            raise
        self.load_seconds = time.perf_counter() - started
        compiling = (
            " (compiling the denoising step)" if engine.fast is not None and engine.fast.compiled
            else " (capturing CUDA graphs of the denoising step)" if engine.fast is not None and engine.fast.graphs is not None
            else ""
        )
        started = time.perf_counter()
        requests = warmup_requests()
        for index, request in enumerate(requests):
            report(f"warming up {spec.path.name} on {loaded.device}{compiling}: {index + 1}/{len(requests)}",
                   70 + 25 * index // len(requests))
            engine.infill(request)
        self.warmup_seconds = time.perf_counter() - started
        self._adopt(engine, spec)
        self.error = None
        self.status = ModelStatus.READY
        report("ready", 100)
        log.info("model ready: %s (load %.1fs, warm-up %.1fs)", spec.path, self.load_seconds, self.warmup_seconds)

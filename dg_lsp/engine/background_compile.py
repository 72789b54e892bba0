"""Compile the denoising step in a background thread and swap it in between requests.

With ``compile: "auto"`` on a CPU the server is ready as soon as the model is loaded and
serves with the uncompiled fast path; meanwhile a low-priority thread builds the compiled
step and runs it once per fixed canvas length (on a private prompt cache and private KV
buffers, so nothing the serving thread uses is touched). When every shape has run, the
compiled step is handed to the :class:`~dg_lsp.engine.fast_path.FastDenoiser`, which swaps
it in atomically between two requests (never inside one). A failure is logged once and the
uncompiled step stays; a cancelled compile (the model was replaced) swaps nothing.

The thread only runs the functions it is given (``build``, ``warm``, ``swap``), so the
state machine is tested without a real compile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

#: Set to ``0`` / ``off`` / ``false`` to never compile in the background (``compile: "auto"`` then
#: stays uncompiled on CPU, the behaviour before background compiling; the test suite sets it).
BACKGROUND_COMPILE_ENV = "DG_LSP_BACKGROUND_COMPILE"

#: Nice value of the compiling thread (Linux: per thread; the compile workers it starts inherit it).
COMPILE_NICE = 19


def background_compile_enabled() -> bool:
    """Whether ``$DG_LSP_BACKGROUND_COMPILE`` allows compiling in the background (default yes)."""
    return os.environ.get(BACKGROUND_COMPILE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


class CompileState(str, Enum):
    """Where the compiled denoising step stands (``dg.info``'s ``compile.state``)."""

    #: Never compiled (``compile: "off"``, the eager path, or background compiling disabled).
    OFF = "off"
    #: To be compiled in the background; not started yet.
    PENDING = "pending"
    #: The background thread is compiling; requests run the uncompiled step meanwhile.
    COMPILING = "compiling"
    #: Requests run the compiled step.
    READY = "ready"
    #: Compiling failed (or the compiled step failed at run time); requests run the uncompiled step.
    FAILED = "failed"


def lower_thread_priority(nice: int | None = COMPILE_NICE) -> None:
    """Give the calling thread this nice value (None: leave it), where the OS allows one per thread."""
    if nice is None or not hasattr(os, "setpriority"):
        return
    try:  # Linux: PRIO_PROCESS with a thread id sets that thread's nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:  # not allowed, or not per thread here: compile at normal priority
        log.debug("could not lower the compiling thread's priority", exc_info=True)


#: (message, done shapes, total shapes) progress callback; called from the compiling thread.
CompileProgress = Callable[[str, int, int], None]

S = TypeVar("S")


class BackgroundCompile(Generic[S]):
    """One background compile: ``build()`` the compiled step, ``warm(step, shape)`` each shape, then ``swap(step)``.

    ``state`` moves pending → compiling → ready (or failed); :meth:`cancel` stops it before the
    next shape and before the swap. Progress and the final state are reported through
    ``progress`` and ``on_done`` (both called on the compiling thread).
    """

    def __init__(
        self,
        build: Callable[[], S],
        warm: Callable[[S, int], None],
        swap: Callable[[S], None],
        shapes: Sequence[int],
        nice: int | None = COMPILE_NICE,
    ) -> None:
        self._build, self._warm, self._swap = build, warm, swap
        self.shapes = tuple(shapes)
        self.nice = nice
        self.state = CompileState.PENDING
        self.error: str | None = None
        #: Shapes compiled and run so far.
        self.done = 0
        self.seconds: float | None = None
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def start(
        self, progress: CompileProgress | None = None, on_done: Callable[[BackgroundCompile[S]], None] | None = None
    ) -> threading.Thread:
        """Start the compiling thread (a daemon: it never holds the process up at exit)."""
        if self._thread is not None:
            raise RuntimeError("this compile has already been started")
        self.state = CompileState.COMPILING
        self._thread = threading.Thread(
            target=self._run, args=(progress, on_done), name="dg-compile", daemon=True
        )
        self._thread.start()
        return self._thread

    def cancel(self) -> None:
        """Stop before the next shape and never swap (the model is being replaced)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the thread has finished (ready, failed or cancelled); False on timeout."""
        return self._finished.wait(timeout)

    def facts(self) -> dict[str, object]:
        """``dg.info``'s view: state, shapes done of total, seconds taken, error."""
        return {
            "state": self.state.value,
            "shapes": list(self.shapes),
            "done": self.done,
            "seconds": round(self.seconds, 1) if self.seconds is not None else None,
            "error": self.error,
        }

    def _lower_priority(self) -> None:
        lower_thread_priority(self.nice)

    def _run(
        self, progress: CompileProgress | None, on_done: Callable[[BackgroundCompile[S]], None] | None
    ) -> None:
        report = progress or (lambda message, done, total: None)
        started = time.perf_counter()
        total = len(self.shapes)
        try:
            self._lower_priority()
            step = self._build()
            for index, shape in enumerate(self.shapes):
                if self.cancelled:
                    break
                report(f"compiling the denoising step: {shape}-token canvas ({index + 1}/{total})", index, total)
                self._warm(step, shape)
                self.done = index + 1
            if not self.cancelled:
                self._swap(step)
                self.state = CompileState.READY
                self.seconds = time.perf_counter() - started
                report("compiled denoising step in use", total, total)
                log.info("compiled denoising step in use after %.1fs (%d shapes)", self.seconds, total)
        except Exception as exc:  # never fatal: the uncompiled step keeps serving
            self.seconds = time.perf_counter() - started
            self.error = f"{type(exc).__name__}: {exc}"[:2000]
            self.state = CompileState.FAILED
            log.warning("compiling the denoising step failed; the uncompiled step stays in use: %s", self.error,
                        exc_info=True)
            report(f"compiling failed ({type(exc).__name__}); the uncompiled step stays in use", total, total)
        finally:
            if self.cancelled and self.state is CompileState.COMPILING:
                self.state = CompileState.PENDING
            self._finished.set()
            if on_done is not None:
                try:
                    on_done(self)
                except Exception:  # a reporting failure must not hide the compile's own outcome
                    log.exception("compile completion callback failed")

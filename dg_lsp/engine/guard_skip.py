"""Compiled calls that skip dynamo's guard checks when that is safe.

Before each call of a compiled function dynamo checks its guards (the inputs' shapes, dtypes,
the Python constants it specialised on): ~0.1 ms per call on a CPU, one call per greedy denoising
step (two per sampled one). Inside one request every step after the first passes the step functions inputs with the
same metadata as the first step's (shapes, dtypes, constants; only tensor values change),
so once the first step ran with the checks, the later ones can skip them with
``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` (dynamo then runs only the guards that
tell its cached graphs apart).

That stance is process-wide, not per thread. :class:`CompiledCalls` therefore grants the skip
only to a call that runs alone: while a call skips, other compiled calls wait for it (one
step, milliseconds); while any other compiled call runs (a background compile takes minutes),
a call that could skip checks its guards instead of waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class CompiledCalls:
    """Counts the compiled calls in progress and hands out the guard skip to one call that runs alone."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._active = 0
        self._skipping = False
        #: Calls that skipped their guard checks (for tests and benchmarks).
        self.skipped = 0

    @contextmanager
    def call(self, skip_guards: bool = False) -> Iterator[bool]:
        """Around one compiled call; yields whether it skips dynamo's guard checks.

        ``skip_guards`` asks for the skip: granted when no other compiled call is in progress.
        A call that does not skip waits only while another call is skipping.
        """
        with self._changed:
            while self._skipping:
                self._changed.wait()
            granted = skip_guards and self._active == 0
            self._active += 1
            self._skipping = granted
        try:
            if granted:
                self.skipped += 1
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    yield True
            else:
                yield False
        finally:
            with self._changed:
                self._active -= 1
                if granted:
                    self._skipping = False
                self._changed.notify_all()


#: The process's compiled calls (dynamo's stance is one per process).
COMPILED_CALLS = CompiledCalls()

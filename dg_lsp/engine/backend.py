"""What the language server needs from an engine, local or remote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dg_lsp.engine.engine import DraftCallback, InfillRequest, InfillResult
from dg_lsp.engine.sampler import SamplerSettings


class InfillBackend(Protocol):
    """Fills holes: the resident :class:`~dg_lsp.engine.engine.Engine` or a remote engine server."""

    @property
    def context_tokens(self) -> int | None:
        """The prefix + suffix token budget the model was trained with (None: unknown)."""

    @property
    def prompt_format(self) -> str:
        """``fim`` (the text is the middle itself) or ``chat`` (an answer to clean: fences, thinking, echoes)."""

    @property
    def sampler_defaults(self) -> SamplerSettings:
        """The model's own sampler (its ``generation_config.json``), used where the settings leave a value unset."""

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (used to cut context to a budget)."""

    def infill(
        self,
        request: InfillRequest,
        on_draft: DraftCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> InfillResult:
        """Fill one hole; raises :class:`~dg_lsp.engine.denoiser.Cancelled` when ``cancelled()`` turns true."""

    @property
    def prefetches(self) -> bool:
        """Whether :meth:`prefetch` does anything (the resident engine: yes; an engine server: no)."""

    def prefetch(self, request: InfillRequest) -> bool:
        """Encode ``request``'s prompt ahead of the request itself; False when this backend cannot."""

    def describe(self) -> dict[str, Any]:
        """Model facts for ``dg.info``: model, modelPath, device, dtype, parameters, canvasLength, ..."""

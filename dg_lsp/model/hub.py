"""Resolve ``--model`` to a directory: a local path, or a Hugging Face hub id read from the local cache.

dg-lsp never downloads weights itself (a 50 GB download must not start from an editor): a hub id
such as ``google/diffusiongemma-26B-A4B-it`` is looked up in the huggingface_hub cache
(``HF_HOME`` / ``HF_HUB_CACHE`` honoured, works with ``HF_HUB_OFFLINE=1``), and when it is not
there the error says the exact command that downloads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]  # public, not in __all__


class HubModelNotFound(Exception):
    """A hub id that is not in the local cache; the message says how to download it."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and what to call it."""

    path: Path
    #: The hub id the user gave (None: a local directory).
    repo_id: str | None = None

    @property
    def name(self) -> str:
        """The name shown in ``info``: the hub id, else the directory's name."""
        return self.repo_id or self.path.name


def download_command(repo_id: str) -> str:
    """The shell command that puts ``repo_id`` into the cache."""
    return f"hf download {repo_id}"


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` with hub-valid characters (and not a path such as ``./x/y`` or ``~/m``)."""
    if text.count("/") != 1 or text.startswith((".", "~", "/")):
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model(model: str | Path, cache_dir: Path | None = None) -> ResolvedModel:
    """A local directory as given; else a hub id's cached snapshot; raises :class:`HubModelNotFound`.

    An existing path always wins over a hub id of the same spelling.
    """
    text = str(model)
    local = Path(text).expanduser()
    if local.exists() or not looks_like_repo_id(text):
        return ResolvedModel(path=local)
    try:
        snapshot = snapshot_download(text, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        raise HubModelNotFound(
            f"{text} is neither a local directory nor in the Hugging Face cache "
            f"({cache_dir or constants.HF_HUB_CACHE}); dg-lsp does not download models: "
            f"run `{download_command(text)}` (huggingface_hub < 1.0: `huggingface-cli download {text}`) "
            "and start again"
        ) from exc
    return ResolvedModel(path=Path(str(snapshot)), repo_id=text)

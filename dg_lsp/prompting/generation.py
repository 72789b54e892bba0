"""A checkpoint's own sampler: the diffusion fields of ``generation_config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class CheckpointSampling:
    """What ``generation_config.json`` says about sampling (None: the file does not set it)."""

    max_steps: int | None = None
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    #: Ids that end the answer (``eos_token_id``, a number or a list); empty when absent.
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    max_new_tokens: int | None = None

    def sampler_fields(self) -> dict[str, Any]:
        """The fields that map onto the engine's sampler settings, those the file sets only."""
        keys = ("max_steps", "entropy_bound", "t_min", "t_max", "stability_threshold", "confidence_threshold")
        return {key: value for key, value in asdict(self).items() if key in keys and value is not None}


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, bool):
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def config_eos_ids(config: dict[str, Any]) -> tuple[int, ...]:
    """Eos ids in ``config.json`` (top level, else ``text_config``)."""
    found = _ids(config.get("eos_token_id"))
    text = config.get("text_config")
    if not found and isinstance(text, dict):
        found = _ids(text.get("eos_token_id"))
    return found


def read_generation_config(path: Path) -> CheckpointSampling:
    """Read ``path/generation_config.json`` with transformers' DiffusionGemma generation config.

    A missing file is an empty :class:`CheckpointSampling`; an invalid one raises ``ValueError``
    with the reason.
    """
    file = path / GENERATION_CONFIG
    if not file.is_file():
        return CheckpointSampling()
    try:
        json.loads(file.read_text(encoding="utf-8"))
        config = cast(
            DiffusionGemmaGenerationConfig,
            DiffusionGemmaGenerationConfig.from_pretrained(str(path), local_files_only=True),
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{file} is not a valid DiffusionGemma generation config: {exc}") from exc
    sampler = config.sampler_config
    return CheckpointSampling(
        max_steps=config.max_denoising_steps,
        entropy_bound=float(sampler.entropy_bound) if sampler is not None else None,
        t_min=float(config.t_min) if config.t_min is not None else None,
        t_max=float(config.t_max) if config.t_max is not None else None,
        stability_threshold=config.stability_threshold,
        confidence_threshold=float(config.confidence_threshold) if config.confidence_threshold is not None else None,
        eos_ids=_ids(config.eos_token_id),
        pad_id=config.pad_token_id if isinstance(config.pad_token_id, int) else None,
        max_new_tokens=config.max_new_tokens,
    )

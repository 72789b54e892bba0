"""Load a DiffusionGemma-architecture checkpoint directory (config, safetensors, tokenizer).

Every way a directory can be unusable becomes a :class:`ModelLoadError` with a sentence a
user can act on; nothing here is allowed to take the server down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Tokenizer
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.canvas import LayoutTokens
from dg_lsp.model.typing import vocab_size
from dg_lsp.prompting.checkpoint import PromptFacts, read_prompt_facts

log = logging.getLogger(__name__)

#: The embedded default model shipped inside the package.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "dg-code-small"


class ModelLoadError(Exception):
    """A model directory could not be loaded; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A resident model with its tokenizer and layout tokens."""

    model: DiffusionGemmaForBlockDiffusion
    tokenizer: Tokenizer
    #: How the checkpoint can be prompted: FIM markers, chat template, eos ids, its sampler.
    prompting: PromptFacts
    path: Path
    name: str
    device: torch.device
    dtype: torch.dtype
    parameters: int
    #: Largest prefix + suffix token budget the model was trained with (None: unknown).
    context_tokens: int | None = None

    @property
    def layout(self) -> LayoutTokens | None:
        """The FIM layout's marker ids (None: the vocabulary has no FIM markers)."""
        return self.prompting.layout

    @property
    def vocab_size(self) -> int:
        """Size of the model's output vocabulary."""
        return vocab_size(self.model)

    @property
    def canvas_length(self) -> int:
        """The checkpoint's maximum canvas length."""
        return int(self.model.config.canvas_length or 256)


def resolve_device(requested: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given (validated)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} was requested but CUDA is not available")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on GPU, float32 on CPU."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in table:
        raise ModelLoadError(f"unknown dtype {requested!r} (use auto, float32, bfloat16 or float16)")
    return table[requested]


def check_model_dir(path: Path) -> dict[str, Any]:
    """Validate a checkpoint directory's files and return its config.json contents."""
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("model_type") != "diffusion_gemma":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ModelLoadError(f"{path} holds a {kind!r} model; dg-lsp needs a DiffusionGemma checkpoint")
    if not list(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path} has no tokenizer.json")
    return config


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def load_model(path: Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a checkpoint directory onto a device; raises :class:`ModelLoadError` on any failure."""
    path = path.expanduser().resolve()
    config = check_model_dir(path)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ModelLoadError(f"could not read {path / 'tokenizer.json'}: {exc}") from exc
    try:
        prompting = read_prompt_facts(path, tokenizer.get_vocab(with_added_tokens=True), config)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    try:
        loaded, info = cast(
            tuple[DiffusionGemmaForBlockDiffusion, dict[str, list[str]]],
            DiffusionGemmaForBlockDiffusion.from_pretrained(
                str(path), dtype=torch_dtype, output_loading_info=True, local_files_only=True
            ),
        )
        missing = [key for key in info.get("missing_keys", []) if "vision" not in key]
        if missing:
            raise ModelLoadError(f"{path}: weights are incomplete ({len(missing)} tensors missing, e.g. {missing[0]})")
        mismatched = info.get("mismatched_keys", [])
        if mismatched:
            raise ModelLoadError(f"{path}: weights do not match config.json (e.g. {mismatched[0]})")
        model = loaded.to(target)  # type: ignore[arg-type]
        model.train(False)
    except ModelLoadError:
        raise
    except Exception as exc:  # torch/safetensors/transformers raise many kinds; all mean "unusable"
        if _is_out_of_memory(exc):
            raise ModelLoadError(f"out of memory while loading {path} on {target}: {exc}") from exc
        raise ModelLoadError(f"could not load {path}: {type(exc).__name__}: {exc}") from exc
    if vocab_size(model) < tokenizer.get_vocab_size(with_added_tokens=True):
        raise ModelLoadError(f"{path}: tokenizer has more tokens than the model's vocabulary")
    parameters = sum(p.numel() for name, p in model.named_parameters() if "vision" not in name)
    context_tokens = _trained_context(path)
    log.info("loaded %s: %.1fM parameters on %s (%s)", path, parameters / 1e6, target, torch_dtype)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        prompting=prompting,
        path=path,
        name=path.name,
        device=target,
        dtype=torch_dtype,
        parameters=parameters,
        context_tokens=context_tokens,
    )


#: Optional file written by dg_lsp.train next to config.json: facts about how the model was trained.
TRAINING_FACTS = "dg_lsp.json"


def _trained_context(path: Path) -> int | None:
    """The context budget recorded in ``dg_lsp.json`` (absent or unreadable: None)."""
    try:
        facts = json.loads((path / TRAINING_FACTS).read_text(encoding="utf-8"))
        value = facts.get("context_tokens")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None

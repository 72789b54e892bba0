"""Load a DiffusionGemma-architecture checkpoint directory (config, safetensors, tokenizer).

Every way a directory can be unusable becomes a :class:`ModelLoadError` with a sentence a
user can act on; nothing here is allowed to take the server down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.canvas import LayoutTokens
from dg_lsp.model.errors import ModelLoadError as ModelLoadError  # re-exported: callers import it from here
from dg_lsp.model.hub import HubModelNotFound, download_command, resolve_model
from dg_lsp.model.memory import check_fits, load_config
from dg_lsp.model.quantize import QuantizeError, check_mode
from dg_lsp.model.typing import vocab_size
from dg_lsp.model.weights import load_weights, weight_files
from dg_lsp.prompting.checkpoint import PromptFacts, read_prompt_facts

log = logging.getLogger(__name__)

#: The embedded default model shipped inside the package.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "dg-code-small"


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
    #: Weight quantization: none, fp8 or int8.
    quantize: str = "none"
    #: The absorbing noise token the model was trained with (None: DiffusionGemma's uniform random tokens).
    noise_id: int | None = None

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
    """``auto`` → bfloat16 on GPU; on CPU bfloat16 where it is native and faster, else float32 (:mod:`.cpu_dtype`)."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        from dg_lsp.model.cpu_dtype import auto_cpu_dtype

        return auto_cpu_dtype()
    if requested not in table:
        raise ModelLoadError(f"unknown dtype {requested!r} (use auto, float32, bfloat16 or float16)")
    return table[requested]


def check_model_dir(path: Path, fix: str = "") -> dict[str, Any]:
    """Validate a checkpoint directory's files and return its config.json contents.

    ``fix`` is added to a missing or corrupt weight file's message (how to get it again).
    """
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
    weight_files(path, fix)
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path} has no tokenizer.json")
    return config


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def load_model(
    path: Path | str,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    keep_vision: bool = False,
    canvases: int = 1,
) -> LoadedModel:
    """Load a checkpoint directory or cached hub id onto a device; raises :class:`ModelLoadError` on any failure.

    Refuses, before reading any weight, a model whose estimated memory (running ``canvases``
    canvases at once, e.g. an engine server's batch) exceeds what is free.
    """
    try:
        resolved = resolve_model(path)
    except HubModelNotFound as exc:
        raise ModelLoadError(str(exc)) from exc
    path = resolved.path.expanduser().resolve()
    fix = f"run `{download_command(resolved.repo_id)}` again to fetch it" if resolved.repo_id else ""
    config = check_model_dir(path, fix)
    name = resolved.repo_id or path.name
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        mode = check_mode(quantize)
    except QuantizeError as exc:
        raise ModelLoadError(str(exc)) from exc
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ModelLoadError(f"could not read {path / 'tokenizer.json'}: {exc}") from exc
    try:
        prompting = read_prompt_facts(path, tokenizer.get_vocab(with_added_tokens=True), config)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    noise_id = _noise_token_id(path, tokenizer)
    try:
        model_config = load_config(path)
    except Exception as exc:  # transformers validates fields with many exception types
        raise ModelLoadError(f"{path / 'config.json'} is not a usable DiffusionGemma config: {exc}") from exc
    need = check_fits(model_config, name, target, torch_dtype, mode, canvases)
    log.info("%s needs about %.1f GiB on %s", name, need.total / 2**30, target)
    try:
        model = load_weights(path, target, torch_dtype, mode, keep_vision)
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
    log.info("loaded %s: %.1fM parameters on %s (%s, quantize %s)", path, parameters / 1e6, target, torch_dtype, mode)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        prompting=prompting,
        path=path,
        name=name,
        device=target,
        dtype=torch_dtype,
        parameters=parameters,
        context_tokens=context_tokens,
        quantize=mode,
        noise_id=noise_id,
    )


#: Optional file written by dg_lsp.train next to config.json: facts about how the model was trained.
TRAINING_FACTS = "dg_lsp.json"


def training_facts(path: Path) -> dict[str, Any]:
    """``dg_lsp.json`` as a dict (absent or unreadable: empty)."""
    try:
        facts = json.loads((path / TRAINING_FACTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _trained_context(path: Path) -> int | None:
    """The context budget recorded in ``dg_lsp.json`` (absent or unreadable: None)."""
    value = training_facts(path).get("context_tokens")
    return int(value) if isinstance(value, int) and value > 0 else None


def noise_token_id(tokenizer: Tokenizer, name: object) -> int | None:
    """The id of the absorbing noise token ``name`` (None: uniform noise); raises ValueError if the vocabulary lacks it."""
    if name is None:
        return None
    token_id = tokenizer.token_to_id(name) if isinstance(name, str) else None
    if token_id is None:
        raise ValueError(f"{name!r} is not a token of the tokenizer")
    return int(token_id)


def _noise_token_id(path: Path, tokenizer: Tokenizer) -> int | None:
    """The id of ``dg_lsp.json``'s ``noise_token`` (absent: None, uniform noise); raises :class:`ModelLoadError` if unusable."""
    try:
        return noise_token_id(tokenizer, training_facts(path).get("noise_token"))
    except ValueError as exc:
        raise ModelLoadError(f"{path / TRAINING_FACTS}: noise_token {exc} ({path / 'tokenizer.json'})") from exc

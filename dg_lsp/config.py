"""Server options: frozen dataclasses read from ``initializationOptions`` / ``didChangeConfiguration``.

Keys are camelCase in JSON (``completion.maxSteps``) and snake_case here. Every invalid value
is reported as a message and replaced by its default; unknown keys are reported too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from dg_lsp.engine.sampler import SamplerSettings


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: low <= value <= high


@dataclass(frozen=True)
class CompletionOptions:
    """Inline completion."""

    enabled: bool = True
    #: None: the model's own (its generation_config.json, else :class:`SamplerSettings`' default).
    max_steps: int | None = field(default=None, metadata={"check": _in_range(1, 256)})
    context_tokens: int = field(default=1024, metadata={"check": _in_range(16, 131072)})
    max_canvas: int = field(default=256, metadata={"check": _in_range(8, 4096)})
    draft_interval_ms: int = field(default=30, metadata={"check": _in_range(0, 10000)})
    parse_check: bool = True
    greedy: bool = True
    #: None: the model's own, like ``max_steps``.
    entropy_bound: float | None = field(default=None, metadata={"check": _in_range(1e-6, 1e6)})
    seed: int = 0
    cache_size: int = field(default=64, metadata={"check": _in_range(0, 100000)})
    #: Encode the prompt at the cursor after each edit, while the editor waits to ask (local engine only).
    prefetch: bool = True
    #: With ``prefetch``: denoise the whole completion there too, so the editor's request is answered from it
    #: (the model works after every pause in typing, asked or not).
    speculate: bool = False

    def sampler(self, defaults: SamplerSettings = SamplerSettings()) -> SamplerSettings:
        """Sampler settings for completions: the model's ``defaults`` with what the user set."""
        return dataclasses.replace(
            defaults,
            max_steps=self.max_steps if self.max_steps is not None else defaults.max_steps,
            entropy_bound=self.entropy_bound if self.entropy_bound is not None else defaults.entropy_bound,
            greedy=self.greedy,
        )


#: Fewest steps a rewrite gets by default (it re-denoises a whole selection).
REWRITE_MIN_STEPS = 24


@dataclass(frozen=True)
class RewriteOptions:
    """The rewrite-selection command."""

    #: None: the model's own step count, at least :data:`REWRITE_MIN_STEPS`.
    max_steps: int | None = field(default=None, metadata={"check": _in_range(1, 256)})
    noise: float = field(default=0.5, metadata={"check": _in_range(0.0, 1.0)})
    greedy: bool = True

    def sampler(self, entropy_bound: float | None, defaults: SamplerSettings = SamplerSettings()) -> SamplerSettings:
        """Sampler settings for rewrites: the model's ``defaults`` with what the user set."""
        steps = self.max_steps if self.max_steps is not None else max(defaults.max_steps, REWRITE_MIN_STEPS)
        return dataclasses.replace(
            defaults,
            max_steps=steps,
            entropy_bound=entropy_bound if entropy_bound is not None else defaults.entropy_bound,
            greedy=self.greedy,
        )


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and len(value) > len("https://")


@dataclass(frozen=True)
class EngineOptions:
    """Where holes are filled: the resident model (``local``) or an engine server (``remote``)."""

    kind: Literal["local", "remote"] = "local"
    #: The server's base URL, e.g. ``http://gpu-box:8765`` (a trailing ``/v1`` is accepted).
    url: str | None = field(default=None, metadata={"check": _is_url, "expect": "an http:// or https:// URL"})
    #: A file holding the bearer token (one line).
    token_file: str | None = None
    #: ``dg``: dg-lsp's engine server (drafts, rewrites); ``openai``: any OpenAI-compatible server (vLLM);
    #: ``chat``: an OpenAI-compatible ``/v1/chat/completions`` serving an instruction-tuned model.
    dialect: Literal["dg", "openai", "chat"] = "dg"
    #: Model name sent in requests (None: the first one the server lists).
    model: str | None = None
    timeout_ms: int = field(default=30000, metadata={"check": _in_range(100, 600000)})
    connect_timeout_ms: int = field(default=3000, metadata={"check": _in_range(10, 60000)})
    retries: int = field(default=2, metadata={"check": _in_range(0, 10)})
    #: openai dialect: a prompt template with ``{prefix}`` and ``{suffix}``, for servers that reject ``suffix``.
    fim_template: str | None = field(
        default=None, metadata={"check": lambda v: "{prefix}" in v, "expect": "a template containing {prefix}"}
    )

    def checked(self, path: str) -> tuple[EngineOptions, list[str]]:
        """Cross-field check: ``kind: "remote"`` needs a ``url`` (else the local model is used)."""
        if self.kind == "remote" and self.url is None:
            return dataclasses.replace(self, kind="local"), [f'{path}kind: "remote" needs {path}url; using the local model']
        return self, []


@dataclass(frozen=True)
class ServerOptions:
    """All options; ``model`` None means the embedded default model."""

    model: str | None = None
    device: str = field(default="auto", metadata={"check": lambda v: v in ("auto", "cpu") or v.startswith("cuda")})
    #: auto: bfloat16 on CUDA; on a CPU bfloat16 where native and faster, else float32 (dg_lsp.model.cpu_dtype).
    dtype: str = field(default="auto", metadata={"check": lambda v: v in ("auto", "float32", "bfloat16", "float16")})
    #: auto: FIM when the tokenizer has the layout's markers, else the checkpoint's chat template.
    prompt_format: Literal["auto", "fim", "chat"] = "auto"
    #: Weight quantization (none | fp8 | int8); null: ``--quantize`` / ``$DG_LSP_QUANTIZE``, else none.
    quantize: Literal["none", "fp8", "int8"] | None = None
    reuse_prompt_cache: bool = True
    #: Static prompt KV, fixed shapes and a denoising step with no host sync (false: transformers' eager path).
    fast_path: bool = True
    #: Compile the denoising step: auto (CPU: in a background thread after the server is ready,
    #: swapped in between requests; CUDA: not yet, see compile_plan), on (before ready), off (never),
    #: graphs (CUDA: greedy steps uncompiled, captured as CUDA graphs; dg_lsp.engine.step_graphs).
    compile: Literal["auto", "on", "off", "graphs"] = "auto"
    completion: CompletionOptions = CompletionOptions()
    rewrite: RewriteOptions = RewriteOptions()
    engine: EngineOptions = EngineOptions()


T = TypeVar("T")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _coerce(value: Any, annotation: Any) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints accepted for floats), else raise TypeError."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
        if value is None:
            return None
        (inner,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _coerce(value, inner)
    elif get_origin(annotation) is Literal:
        if isinstance(value, str) and value in get_args(annotation):
            return value
    raise TypeError


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "choice (" + " | ".join(str(arg) for arg in get_args(annotation)) + ")"
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in get_args(annotation))
    return str(getattr(annotation, "__name__", annotation))


def parse_options(cls: type[T], raw: Any, path: str = "") -> tuple[T, list[str]]:
    """Build ``cls`` from a JSON object; returns the options and a list of problems found."""
    problems: list[str] = []
    if raw is None:
        return cls(), problems
    if not isinstance(raw, Mapping):
        return cls(), [f"{path.rstrip('.') or 'options'}: expected an object, got {type(raw).__name__}; using defaults"]
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _snake(str(key))
        where = f"{path}{key}"
        if name not in fields:
            problems.append(f"{where}: unknown option, ignored")
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name], nested = parse_options(annotation, value, f"{where}.")  # type: ignore[arg-type]
            problems.extend(nested)
            continue
        try:
            coerced = _coerce(value, annotation)
        except TypeError:
            problems.append(f"{where}: {value!r} is not a valid {_type_name(annotation)}; using the default")
            continue
        check = fields[name].metadata.get("check")
        if check is not None and coerced is not None and not check(coerced):
            expect = fields[name].metadata.get("expect")
            problems.append(f"{where}: {value!r} is {f'not {expect}' if expect else 'out of range'}; using the default")
            continue
        values[name] = coerced
    options = cls(**values)
    checked = getattr(options, "checked", None)
    if callable(checked):  # options with rules across fields
        options, more = checked(path)
        problems.extend(more)
    return options, problems


def options_to_json(options: Any) -> dict[str, Any]:
    """camelCase JSON form of an options dataclass (for ``dg.info`` and docs)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        out[_camel(f.name)] = options_to_json(value) if dataclasses.is_dataclass(value) else value
    return out

"""Stock transformers DiffusionGemma ``generate`` against dg-lsp's engine, in one process.

Both paths run on the same model object, the same prompt ids and the same fixed number of
denoising steps (adaptive stopping made impossible: stock gets a ``stability_threshold`` longer
than the run, the engine a negative ``confidence_threshold``; the step counts actually run are
checked). Measured:

* ms per denoising step: ``(t(S steps) - t(1 step)) / (S - 1)`` from whole calls (prompt ids ->
  final canvas), the same for every path, so prefill and per-call setup cancel out;
* ms for one canvas at S steps (whole call, prefill of ``--context`` tokens included) and the
  tokens/s that gives (canvas tokens / that time);
* prefill ms per context size (stock: the encoder call ``generate`` makes; engine:
  ``PromptCache.encode`` on an empty cache);
* warm-up: seconds of each path's first call (on CUDA with ``static``: the compile);
* a typing simulation through ``Engine.infill``: a ~2k-token file, one character typed at the
  cursor per keystroke, latency per keystroke with the prompt cache reused and not.

The model is a random-weight one of a named geometry (``--geometry``; encoder and decoder
weights tied, as in a checkpoint; built on the meta device first so that 26b-a4b fits one GPU)
or a checkpoint (``--model DIR``). Headline: engine ms/step over stock ms/step.

    python benchmarks/engine_bench.py --geometry tiny                 # CPU, well under a minute
    python benchmarks/engine_bench.py --geometry 26b-a4b --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    RESULTS_DIR,
    command_line,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    pyplot,
    summarize,
    text_table,
    utc_now,
    write_json,
)

DEFAULT_TYPED = "result = compute_total(items, discount=0.25)"


# -- the model ---------------------------------------------------------------------------------


@dataclass
class Subject:
    """The model under test, with what the engine path needs around it."""

    loaded: Any  # dg_lsp.model.loader.LoadedModel
    label: str
    source: str
    geometry: dict[str, Any] | None

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.loaded.device  # type: ignore[no-any-return]

    @property
    def max_positions(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.text_config.vocab_size)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is moved to the meta device (buffers stay real).

    Parameters that are already on meta are registered as they are, so weight tying (which
    re-registers the source parameter under the tied name) keeps sharing one object.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _materialize(model: nn.Module, device: torch.device, dtype: torch.dtype, std: float, seed: int) -> None:
    """Give every distinct meta parameter real storage on ``device`` (tied ones stay shared).

    Random init as transformers does it for this architecture: matrices and expert tensors
    ~ N(0, std), vectors (RMSNorm weights, router scales) = 1.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            real = made.get(id(param))
            if real is None:
                data = torch.empty(param.shape, dtype=dtype, device=device)
                if data.ndim >= 2:
                    data.normal_(0.0, std, generator=generator)
                else:
                    data.fill_(1.0)
                real = made[id(param)] = nn.Parameter(data, requires_grad=False)
            module._parameters[name] = real
    model.to(device)  # the buffers


def random_model(geometry_name: str, device: torch.device, dtype: torch.dtype, seed: int) -> Subject:
    """A random-weight model of a named geometry, with the tiny test tokenizer for the engine path."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dg_lsp import special_tokens as st
    from dg_lsp.canvas import resolve_layout_tokens
    from dg_lsp.prompting.checkpoint import PromptFacts
    from dg_lsp.model.geometry import GEOMETRIES
    from dg_lsp.model.loader import LoadedModel
    from dg_lsp.model.typing import text_config
    from dg_lsp.testing import tiny_tokenizer

    geometry = GEOMETRIES[geometry_name]
    tokenizer = tiny_tokenizer(min(512, geometry.vocab_size))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    config = geometry.to_config(pad_id=vocab[st.PAD], eos_id=vocab[st.EOS], bos_id=vocab[st.BOS])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with _parameters_on_meta():
            model = DiffusionGemmaForBlockDiffusion(config)
    finally:
        torch.set_default_dtype(previous)
    _materialize(model, device, dtype, float(text_config(model).initializer_range), seed)
    model.train(False)
    parameters = sum(p.numel() for name, p in model.named_parameters() if "vision" not in name)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        prompting=PromptFacts.for_layout(resolve_layout_tokens(vocab)),
        path=Path(f"<random {geometry_name}>"),
        name=f"random-{geometry_name}",
        device=device,
        dtype=dtype,
        parameters=parameters,
    )
    return Subject(loaded, geometry_name, f"random weights, geometry {geometry_name}", geometry.as_dict())


def load_subject(args: argparse.Namespace) -> Subject:
    """The model the options ask for."""
    from dg_lsp.model.loader import ModelLoadError, load_model, resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        if args.model:
            loaded = load_model(Path(args.model), args.device, args.dtype)
            return Subject(loaded, Path(args.model).name, f"checkpoint {args.model}", None)
    except ModelLoadError as exc:
        raise SystemExit(f"engine_bench: {exc}") from exc
    return random_model(args.geometry, device, dtype, args.seed)


def set_experts(model: Any, wanted: str) -> str:
    """Use ``wanted`` experts kernels when this build supports them; returns what is in effect."""
    if wanted != "default":
        try:
            model.set_experts_implementation(wanted)
        except (ValueError, ImportError, RuntimeError, NotImplementedError) as exc:
            print(f"note: experts implementation {wanted!r} unavailable here ({exc}); keeping the default", file=sys.stderr)
    return str(model.config._experts_implementation)


def random_ids(subject: Subject, length: int, seed: int) -> torch.Tensor:
    """``(1, length)`` random prompt ids on the CPU, avoiding the special ids at both ends of the vocabulary.

    Ids 0-2 (pad, eos, bos) and the multimodal markers (image/boi/eoi/... ids, at the top of the
    real vocabulary) are left out, so neither path takes a special branch.
    """
    config = subject.model.config
    markers = [int(v) for k, v in config.to_dict().items() if k.endswith("_token_id") and isinstance(v, int) and v > 2]
    high = min([subject.vocab_size, *markers])
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(4, high), (1, length), generator=generator)


# -- timing ------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Run ``fn`` once; its result and wall milliseconds (GPU work included)."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, (time.perf_counter() - started) * 1000.0


@dataclass
class PathResult:
    """One generation path's measurements."""

    name: str
    warmup_s: float = math.nan
    full_ms: list[float] | None = None  # whole calls at S steps
    one_ms: list[float] | None = None  # whole calls at 1 step
    steps_run: int | None = None
    loop_step_ms: list[float] | None = None  # engine only: its own per-step timings
    skipped: str | None = None

    def step_ms(self, steps: int) -> float:
        if not self.full_ms or not self.one_ms:
            return math.nan
        return (median(self.full_ms) - median(self.one_ms)) / (steps - 1)

    def canvas_ms(self) -> float:
        return median(self.full_ms) if self.full_ms else math.nan

    def as_dict(self, steps: int, canvas: int) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        canvas_ms = self.canvas_ms()
        return {
            "ms_per_step": self.step_ms(steps),
            "canvas_ms": canvas_ms,
            "tokens_per_s": canvas * 1000.0 / canvas_ms if canvas_ms > 0 else math.nan,
            "one_step_call_ms": median(self.one_ms) if self.one_ms else math.nan,
            "warmup_s": self.warmup_s,
            "steps_run": self.steps_run,
            "loop_step_ms_median": median(self.loop_step_ms) if self.loop_step_ms else None,
            "full_call_ms_samples": self.full_ms,
            "one_step_call_ms_samples": self.one_ms,
        }


def measure_path(name: str, call: Callable[[int], int | None], steps: int, reps: int, device: torch.device) -> PathResult:
    """Cold call (warm-up), then ``reps`` interleaved calls at ``steps`` and at 1 step.

    ``call(k)`` runs one whole generation with ``k`` denoising steps and returns the number of
    steps it actually ran (None when it cannot tell).
    """
    result = PathResult(name, full_ms=[], one_ms=[])
    ran, cold_ms = timed(lambda: call(steps), device)
    result.warmup_s = cold_ms / 1000.0
    result.steps_run = ran
    if ran is not None and ran != steps:
        raise RuntimeError(f"{name}: ran {ran} denoising steps instead of {steps}; adaptive stopping was not disabled")
    timed(lambda: call(1), device)  # the 1-step call may have its own first-call costs
    for _ in range(reps):
        ran, ms = timed(lambda: call(steps), device)
        if ran is not None and ran != steps:
            raise RuntimeError(f"{name}: ran {ran} denoising steps instead of {steps}")
        assert result.full_ms is not None and result.one_ms is not None
        result.full_ms.append(ms)
        result.one_ms.append(timed(lambda: call(1), device)[1])
    return result


def interleaved_ratio(calls: dict[str, Callable[[int], int | None]], steps: int, rounds: int, device: torch.device) -> dict[str, Any]:
    """Per-step ms of already warm paths measured round by round, and each path's paired ratio to the first.

    Each round times every path at ``steps`` and at 1 step, one path after another (the order
    rotates), so slow and fast moments of the machine hit all paths alike; per round and path,
    ms/step = (t(steps) - t(1)) / (steps - 1). The ratio is the median over rounds of a path's
    ms/step over the first path's in the same round.
    """
    names = list(calls)
    per_step: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            full = timed(lambda: calls[name](steps), device)[1]
            one = timed(lambda: calls[name](1), device)[1]
            per_step[name].append((full - one) / (steps - 1))
    base = per_step[names[0]]
    return {
        "rounds": rounds,
        "ms_per_step_median": {name: median(values) for name, values in per_step.items()},
        "paired_ratio_to_first": {
            name: median([value / reference for value, reference in zip(values, base)]) for name, values in per_step.items()
        },
        "ms_per_step_samples": per_step,
    }


# -- the paths ---------------------------------------------------------------------------------


def stock_call(model: Any, ids: torch.Tensor, canvas: int, never_stable: int, static: bool) -> Callable[[int], int | None]:
    """Stock ``model.generate`` for one canvas with ``k`` denoising steps, no adaptive stopping."""
    pad = model.generation_config.pad_token_id

    def call(k: int) -> int | None:
        kwargs: dict[str, Any] = {
            "max_new_tokens": canvas,
            "max_denoising_steps": k,
            # the argmax canvas must repeat for more steps than the run has: never stable
            "stability_threshold": never_stable,
            "return_dict_in_generate": True,
        }
        if static:
            kwargs["cache_implementation"] = "static"
        out = model.generate(ids, **kwargs)
        # decoder passes = valid new tokens / tokens_per_forward (what generate reports)
        new = out.sequences[:, ids.shape[1] :]
        valid = int((new != pad).sum()) if pad is not None else int(new.numel())
        per_forward = float(out.tokens_per_forward.float().mean()) if out.tokens_per_forward is not None else 0.0
        return round(valid / per_forward) if per_forward > 0 and valid > 0 else None

    return call


def engine_call(model: Any, prompt: list[int], canvas: int, greedy: bool, seed: int, loop_ms: list[float]) -> Callable[[int], int | None]:
    """dg-lsp: ``PromptCache.encode`` on an empty cache, then ``denoise``, as ``Engine.infill`` does."""
    from dg_lsp.engine.denoiser import CanvasSpec, Draft, denoise
    from dg_lsp.engine.prompt_cache import PromptCache
    from dg_lsp.engine.sampler import SamplerSettings

    def on_draft(draft: Draft) -> None:  # the server always streams drafts; keep that cost
        pass

    def call(k: int) -> int | None:
        cache = PromptCache(model, reuse=False)
        cache.encode(prompt)
        settings = SamplerSettings(max_steps=k, confidence_threshold=-1.0, greedy=greedy)
        outcome = denoise(model, cache.cache, len(prompt), CanvasSpec(length=canvas), settings, seed, on_draft=on_draft)
        if k > 1:
            loop_ms.extend(outcome.step_ms)
        return outcome.steps

    return call


def fast_call(fast: Any, model: Any, prompt: list[int], canvas: int, greedy: bool, seed: int, loop_ms: list[float]) -> Callable[[int], int | None]:
    """dg-lsp's fast path: ``PromptCache.encode`` on an empty cache, then ``FastDenoiser.denoise`` (static KV, fixed shapes)."""
    from dg_lsp.engine.denoiser import CanvasSpec, Draft
    from dg_lsp.engine.prompt_cache import PromptCache
    from dg_lsp.engine.sampler import SamplerSettings

    def on_draft(draft: Draft) -> None:  # the server always streams drafts; keep that cost
        pass

    def call(k: int) -> int | None:
        cache = PromptCache(model, reuse=False)
        cache.encode(prompt)
        settings = SamplerSettings(max_steps=k, confidence_threshold=-1.0, greedy=greedy)
        outcome = fast.denoise(cache, CanvasSpec(length=canvas), settings, seed, on_draft=on_draft)
        if k > 1:
            loop_ms.extend(outcome.step_ms)
        return int(outcome.steps)

    return call


def prefill_times(subject: Subject, contexts: list[int], reps: int, seed: int) -> dict[str, dict[str, Any]]:
    """Encoder prefill of ``c`` random tokens: stock encoder call vs ``PromptCache.encode``."""
    from transformers import DynamicCache

    from dg_lsp.engine.prompt_cache import PromptCache

    model, device = subject.model, subject.device
    out: dict[str, dict[str, Any]] = {}
    for context in contexts:
        if context > subject.max_positions:
            out[str(context)] = {"skipped": f"beyond max_position_embeddings {subject.max_positions}"}
            continue
        ids = random_ids(subject, context, seed + context)
        ids_device = ids.to(device)
        prompt = ids[0].tolist()

        def stock() -> None:
            with torch.no_grad():
                cache = DynamicCache(config=model.config.get_text_config(decoder=True))
                model.model.encoder(input_ids=ids_device, past_key_values=cache, use_cache=True)

        def engine() -> None:
            PromptCache(model, reuse=False).encode(prompt)

        row: dict[str, Any] = {}
        for name, fn in (("stock", stock), ("engine", engine)):
            timed(fn, device)  # first call at this length
            row[name] = median([timed(fn, device)[1] for _ in range(reps)])
        out[str(context)] = row
    return out


# -- typing simulation -------------------------------------------------------------------------


def typing_document(tokenizer: Any, target_tokens: int) -> tuple[str, int]:
    """Code of about ``target_tokens`` tokens (fixture files, repeated as needed) and a cursor offset.

    The cursor is at the start of an empty line inserted two thirds of the way through.
    """
    sources = sorted(p for p in FIXTURES_DIR.rglob("*") if p.is_file() and p.name != "cursors.json")
    pieces = [p.read_text(encoding="utf-8") for p in sources]

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    lines: list[str] = []
    while count("".join(lines)) < target_tokens:
        for piece in pieces:
            lines.extend(piece.splitlines(keepends=True))
    lo, hi = 1, len(lines)  # most lines whose text stays within the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count("".join(lines[:mid])) <= target_tokens:
            lo = mid
        else:
            hi = mid - 1
    lines = lines[:lo]
    split = max(1, (2 * len(lines)) // 3)
    head, tail = "".join(lines[:split]), "".join(lines[split:])
    return head + "\n" + tail, len(head)


def typing_simulation(subject: Subject, args: argparse.Namespace) -> dict[str, Any]:
    """``--keystrokes`` characters typed at the cursor, one ``Engine.infill`` per keystroke."""
    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest, steps_for_canvas
    from dg_lsp.engine.sampler import SamplerSettings

    text, cursor = typing_document(subject.loaded.tokenizer, args.typing_tokens)
    typed = (args.typed_text * (1 + args.keystrokes // max(1, len(args.typed_text))))[: args.keystrokes]
    file_tokens = len(subject.loaded.tokenizer.encode(text, add_special_tokens=False).ids)
    budget = args.typing_context or (file_tokens + len(typed) + 64)
    steps = args.typing_steps or args.steps
    kind = HoleKind[args.typing_kind.upper()]
    settings = SamplerSettings(max_steps=steps, confidence_threshold=-1.0)  # greedy, as the server
    from dg_lsp.engine.fast_path import FastPathSettings

    fast_path = FastPathSettings(compile=args.typing_compile)
    engines = {
        "reuse": Engine(subject.loaded, reuse_prompt_cache=True, fast_path=fast_path),
        "no_reuse": Engine(subject.loaded, reuse_prompt_cache=False, fast_path=fast_path),
    }
    device = subject.device

    def request(prefix: str) -> Any:
        return InfillRequest(
            prefix=prefix,
            suffix=text[cursor:],
            language="python",
            kind=kind,
            settings=settings,
            max_canvas=args.canvas,
            max_context_tokens=budget,
        )

    records: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    canvas_length = None
    for engine in engines.values():  # the file as opened, before typing: fills the cache
        engine.infill(request(text[:cursor]))
    for i in range(1, len(typed) + 1):
        prefix = text[:cursor] + typed[:i]
        for name, engine in engines.items():  # interleaved, so background load hits both alike
            result, ms = timed(lambda: engine.infill(request(prefix)), device)
            canvas_length = result.canvas_length
            expected = steps_for_canvas(settings, result.canvas_length, subject.loaded.canvas_length).max_steps
            if result.steps != expected:  # the engine scales the step budget with the canvas
                raise RuntimeError(f"typing: ran {result.steps} steps instead of {expected}")
            records[name].append(
                {
                    "ms": ms,
                    "encode_ms": result.encode_ms,
                    "denoise_ms": result.denoise_ms,
                    "prompt_tokens": result.encode.prompt_tokens,
                    "reused_tokens": result.encode.reused_tokens,
                    "encoded_tokens": result.encode.encoded_tokens,
                }
            )
    out: dict[str, Any] = {
        "file_tokens": file_tokens,
        "keystrokes": len(typed),
        "context_budget": budget,
        "kind": kind.name,
        "compile": args.typing_compile,
        "canvas": canvas_length,
        "steps": steps,
    }
    for name, rows in records.items():
        out[name] = {
            "latency_ms": summarize([r["ms"] for r in rows]),
            "encode_ms_p50": median([r["encode_ms"] for r in rows]),
            "denoise_ms_p50": median([r["denoise_ms"] for r in rows]),
            "prompt_tokens_mean": sum(r["prompt_tokens"] for r in rows) / len(rows),
            "reused_tokens_mean": sum(r["reused_tokens"] for r in rows) / len(rows),
            "encoded_tokens_mean": sum(r["encoded_tokens"] for r in rows) / len(rows),
            "per_keystroke": rows,
        }
    return out


# -- run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    built = time.perf_counter()
    subject = load_subject(args)
    build_s = time.perf_counter() - built
    model, device = subject.model, subject.device
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # what Engine does; set before any path runs, so all run alike
    experts = set_experts(model, args.experts)
    config_canvas = int(model.config.canvas_length or 256)
    canvas = min(args.canvas, config_canvas)
    model.config.canvas_length = canvas  # stock generate's canvas is the config's
    steps = args.steps
    context = min(args.context, subject.max_positions - canvas)
    prompt_ids = random_ids(subject, context, args.seed)
    prompt_device = prompt_ids.to(device)
    prompt_list = prompt_ids[0].tolist()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    log(
        f"{subject.source}: {subject.loaded.parameters / 1e6:,.1f}M parameters on {device}/{str(subject.loaded.dtype).removeprefix('torch.')} "
        f"(built in {build_s:.1f} s), experts {experts}, attention {model.config._attn_implementation}; "
        f"canvas {canvas}, {steps} steps, context {context}"
    )

    # One encoder and one decoder pass before anything is timed: one-off process costs (kernel
    # selection, allocator growth) should not land on whichever path happens to go first.
    from transformers import DynamicCache

    def process_warmup() -> None:
        with torch.inference_mode():
            cache = DynamicCache(config=model.config.get_text_config(decoder=True))
            model.model.encoder(input_ids=prompt_device[:, :16], past_key_values=cache, use_cache=True)
            width = min(16, prompt_device.shape[1])
            positions = torch.arange(width, width + canvas, device=device)[None, :]
            canvas_ids = torch.randint(0, subject.vocab_size, (1, canvas), device=device)
            model(decoder_input_ids=canvas_ids, past_key_values=cache, decoder_position_ids=positions)

    _, warm_ms = timed(process_warmup, device)

    def done(result: PathResult) -> PathResult:
        """Log a finished path at once (a run cut short by a time limit keeps what it measured)."""
        if result.skipped is None:
            log(f"  {result.name}: {result.step_ms(steps):.2f} ms/step, {result.canvas_ms():.1f} ms per {steps}-step canvas, first call {result.warmup_s:.1f} s")
        return result

    paths: dict[str, PathResult] = {}
    never_stable = steps + 1
    log("timing stock generate (dynamic cache)")
    paths["stock_dynamic"] = done(measure_path("stock generate, dynamic cache", stock_call(model, prompt_device, canvas, never_stable, static=False), steps, args.reps, device))
    skip = {key.strip() for key in (args.skip or "").split(",") if key.strip()}
    for key, greedy, label in (("engine_sampled", False, "sampled, as stock"), ("engine_greedy", True, "greedy, as the server")):
        if key in skip:
            paths[key] = PathResult(f"dg-lsp engine, {label}", skipped="--skip")
            continue
        loop: list[float] = []
        log(f"timing engine ({label})")
        paths[key] = done(measure_path(f"dg-lsp engine, {label}", engine_call(model, prompt_list, canvas, greedy, args.seed, loop), steps, args.reps, device))
        paths[key].loop_step_ms = loop
    from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings

    eager_fast = FastDenoiser(model, FastPathSettings(compile="off"))
    for key, greedy in (("fast_sampled", False), ("fast_greedy", True)):
        if key in skip:
            paths[key] = PathResult(f"dg-lsp fast path, {key}", skipped="--skip")
            continue
        loop = []
        log(f"timing engine fast path ({key})")
        paths[key] = done(measure_path(f"dg-lsp fast path, {key}", fast_call(eager_fast, model, prompt_list, canvas, greedy, args.seed, loop), steps, args.reps, device))
        paths[key].loop_step_ms = loop
    def accelerated(key: str, label: str, compile_setting: str, skipped: str | None, note: str) -> Any:
        """Time a greedy fast path with ``compile_setting``; returns its denoiser (None if skipped or failed)."""
        if skipped is not None:
            paths[key] = PathResult(f"fast path, {label}", skipped=skipped)
            return None
        log(f"timing engine fast path, {label} ({note})")
        try:
            denoiser = FastDenoiser(model, FastPathSettings(compile=compile_setting))
            loop: list[float] = []
            paths[key] = done(measure_path(f"dg-lsp fast path, {label}", fast_call(denoiser, model, prompt_list, canvas, True, args.seed, loop), steps, args.reps, device))
            paths[key].loop_step_ms = loop
            return denoiser
        except Exception as exc:  # a compile or capture failure is a result, not a crash
            paths[key] = PathResult(f"fast path, {label}", skipped=f"failed: {type(exc).__name__}: {exc}"[:500])
            return None

    graphs = accelerated("fast_graphs", "CUDA graphs", "graphs", None if device.type == "cuda" else "CUDA only",
                         "of the uncompiled step; the first call of a shape captures")
    compiled = accelerated("fast_compiled", "compiled", "on", "--no-compile" if args.no_compile else None,
                           "the first call compiles")

    interleaved: dict[str, Any] | None = None
    faster = {key: denoiser for key, denoiser in (("fast_graphs", graphs), ("fast_compiled", compiled)) if denoiser is not None and paths[key].skipped is None}
    if args.interleave > 0 and faster:
        log(f"stock vs fast path vs {', '.join(faster)}, {args.interleave} interleaved rounds")
        interleaved = interleaved_ratio(
            {
                "stock_dynamic": stock_call(model, prompt_device, canvas, never_stable, static=False),
                "fast_greedy": fast_call(eager_fast, model, prompt_list, canvas, True, args.seed, []),
                **{key: fast_call(denoiser, model, prompt_list, canvas, True, args.seed, []) for key, denoiser in faster.items()},
            },
            steps, args.interleave, device,
        )
        log(f"  interleaved ms/step {interleaved['ms_per_step_median']}, paired ratio to stock {interleaved['paired_ratio_to_first']}")

    contexts = [int(c) for c in (args.contexts or ("512,2048,8192" if device.type == "cuda" else "512,2048")).split(",") if c.strip()]
    log(f"timing prefill at {contexts}")
    prefill = prefill_times(subject, contexts, max(1, min(args.reps, 3)), args.seed)
    log(f"  prefill ms: {prefill}")

    typing: dict[str, Any] | None = None
    if args.keystrokes > 0:
        log(f"typing simulation: {args.keystrokes} keystrokes into a ~{args.typing_tokens}-token file")
        typing = typing_simulation(subject, args)
        log(f"  keystroke to final: {typing['reuse']['latency_ms']} (prompt reuse); {typing['no_reuse']['latency_ms']} (none)")

    if device.type != "cuda":
        paths["stock_static"] = PathResult("stock generate, static cache", skipped="CUDA only")
    elif args.no_static:
        paths["stock_static"] = PathResult("stock generate, static cache", skipped="--no-static")
    else:  # last: it compiles (and captures CUDA graphs) on the model
        log("timing stock generate (static cache, compiled; the first call compiles)")
        try:
            paths["stock_static"] = done(measure_path("stock generate, static cache", stock_call(model, prompt_device, canvas, never_stable, static=True), steps, args.reps, device))
        except Exception as exc:  # a compile failure is a result, not a crash
            paths["stock_static"] = PathResult("stock generate, static cache", skipped=f"failed: {type(exc).__name__}: {exc}"[:500])

    stock_step = paths["stock_dynamic"].step_ms(steps)
    headline = {
        "engine_sampled_over_stock_dynamic_per_step": paths["engine_sampled"].step_ms(steps) / stock_step,
        "engine_greedy_over_stock_dynamic_per_step": paths["engine_greedy"].step_ms(steps) / stock_step,
        "fast_sampled_over_stock_dynamic_per_step": paths["fast_sampled"].step_ms(steps) / stock_step,
        "fast_greedy_over_stock_dynamic_per_step": paths["fast_greedy"].step_ms(steps) / stock_step,
    }
    graphs_step = paths["fast_graphs"].step_ms(steps)
    if not math.isnan(graphs_step):
        headline["fast_graphs_over_stock_dynamic_per_step"] = graphs_step / stock_step
    compiled_step = paths["fast_compiled"].step_ms(steps)
    if not math.isnan(compiled_step):
        headline["fast_compiled_over_stock_dynamic_per_step"] = compiled_step / stock_step
    static_step = paths["stock_static"].step_ms(steps)
    if not math.isnan(static_step):
        headline["engine_greedy_over_stock_static_per_step"] = paths["engine_greedy"].step_ms(steps) / static_step
    machine = machine_info(device=str(device), torch_threads=torch.get_num_threads())
    machine["dtype"] = str(subject.loaded.dtype).removeprefix("torch.")
    return {
        "benchmark": "engine_bench",
        "date": utc_now(),
        "command": command_line(__file__, args.argv),
        "machine": machine,
        "model": {
            "label": subject.label,
            "source": subject.source,
            "parameters": subject.loaded.parameters,
            "geometry": subject.geometry,
            "dtype": machine["dtype"],
            "experts_implementation": experts,
            "attn_implementation": model.config._attn_implementation,
            "config_canvas_length": config_canvas,
            "max_position_embeddings": subject.max_positions,
            "build_s": build_s,
        },
        "settings": {
            "canvas": canvas,
            "steps": steps,
            "context": context,
            "reps": args.reps,
            "seed": args.seed,
            "adaptive_stopping": f"disabled (stock stability_threshold={never_stable}; engine confidence_threshold=-1)",
        },
        "process_warmup_s": warm_ms / 1000.0,
        "paths": {key: path.as_dict(steps, canvas) for key, path in paths.items()},
        "headline": headline,
        "interleaved": interleaved,
        "prefill_ms": prefill,
        "typing": typing,
    }


# -- output ------------------------------------------------------------------------------------

PATH_LABELS = {
    "stock_dynamic": "stock generate (dynamic cache)",
    "stock_static": "stock generate (static cache, compiled)",
    "engine_sampled": "engine eager path, sampled (same work as stock)",
    "engine_greedy": "engine eager path, greedy",
    "fast_sampled": "engine fast path, sampled",
    "fast_greedy": "engine fast path, greedy (server default)",
    "fast_graphs": "engine fast path, greedy, CUDA graphs of the uncompiled step",
    "fast_compiled": "engine fast path, greedy, compiled",
}


def _path_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, label in PATH_LABELS.items():
        path = report["paths"].get(key)
        if path is None:
            continue
        if "skipped" in path:
            rows.append([label, "skipped: " + path["skipped"], "", "", "", ""])
            continue
        rows.append([label, path["ms_per_step"], path["canvas_ms"], path["tokens_per_s"], path["warmup_s"], path["steps_run"]])
    return rows


def _prefill_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for context, row in report["prefill_ms"].items():
        if "skipped" in row:
            rows.append([f"{int(context):,}", "skipped: " + row["skipped"], ""])
        else:
            rows.append([f"{int(context):,}", row["stock"], row["engine"]])
    return rows


def _typing_rows(report: dict[str, Any]) -> list[list[Any]]:
    typing = report["typing"]
    rows = []
    for key, label in (("reuse", "PromptCache reuse=True"), ("no_reuse", "PromptCache reuse=False")):
        t = typing[key]
        rows.append(
            [label, t["latency_ms"]["p50"], t["latency_ms"]["p95"], t["latency_ms"]["mean"], t["encode_ms_p50"], t["denoise_ms_p50"], t["reused_tokens_mean"], t["encoded_tokens_mean"]]
        )
    return rows


TYPING_HEADERS = ["variant", "p50 ms", "p95 ms", "mean ms", "encode p50 ms", "denoise p50 ms", "reused tok", "encoded tok"]
PATH_HEADERS = ["path", "ms/step", "canvas ms", "tokens/s", "warm-up s", "steps"]


def print_report(report: dict[str, Any]) -> None:
    """Tables, headline and the RESULTS.md block."""
    settings, model = report["settings"], report["model"]
    print()
    print(
        f"{model['source']} ({model['parameters'] / 1e6:,.1f}M parameters), {report['machine']['device']}/{model['dtype']}, "
        f"experts {model['experts_implementation']}: canvas {settings['canvas']}, {settings['steps']} steps, "
        f"context {settings['context']}, median of {settings['reps']}"
    )
    print(text_table(PATH_HEADERS, _path_rows(report)))
    for key, ratio in report["headline"].items():
        print(f"{key}: {ratio:.3f}")
    if report.get("interleaved"):
        print(interleaved_line(report["interleaved"]))
    print("\nprefill (ms)")
    print(text_table(["context", "stock encoder", "engine PromptCache.encode"], _prefill_rows(report)))
    if report["typing"]:
        t = report["typing"]
        print(
            f"\ntyping: {t['keystrokes']} keystrokes into a {t['file_tokens']:,}-token file, {t['kind']} canvas {t['canvas']}, "
            f"{t['steps']} steps, context budget {t['context_budget']:,} (ms per Engine.infill)"
        )
        print(text_table(TYPING_HEADERS, _typing_rows(report)))
        if t["reuse"]["reused_tokens_mean"] == 0:
            print("note: reuse=True reused nothing (a sliding-window layer shorter than the prompt disables reuse)")
    print("\n--- markdown for benchmarks/RESULTS.md ---")
    print(markdown_block(report))
    print("--- end ---")


def interleaved_line(interleaved: dict[str, Any]) -> str:
    """The interleaved measurement in one sentence."""
    ms, ratio = interleaved["ms_per_step_median"], interleaved["paired_ratio_to_first"]
    names = {"stock_dynamic": "stock", "fast_greedy": "fast path", "fast_graphs": "CUDA graphs", "fast_compiled": "compiled"}
    faster = [key for key in ("fast_graphs", "fast_compiled") if key in ms]
    return (
        f"Interleaved ({interleaved['rounds']} rounds, paths alternating): ms/step "
        + ", ".join(f"{names.get(key, key)} {value:.2f}" for key, value in ms.items())
        + "; "
        + ", ".join(f"**{names[key]} / stock paired {ratio[key]:.3f} ({1.0 / ratio[key]:.2f}x)**" for key in faster)
        + f", fast path / stock {ratio['fast_greedy']:.3f}."
    )


def markdown_block(report: dict[str, Any]) -> str:
    """A RESULTS.md section: command, machine, date, tables, headline."""
    settings, model = report["settings"], report["model"]
    head = report["headline"]
    lines = [
        f"### Engine vs stock `generate`: {model['label']} ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: {model['source']}, {model['parameters'] / 1e6:,.1f}M parameters, "
        f"{model['dtype']}, experts `{model['experts_implementation']}`, attention `{model['attn_implementation']}`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Canvas {settings['canvas']} tokens, {settings['steps']} fixed denoising steps ({settings['adaptive_stopping']}), "
        f"context {settings['context']} random tokens, median of {settings['reps']} calls. ms/step = "
        f"(t({settings['steps']} steps) - t(1 step)) / {settings['steps'] - 1} over whole calls; canvas ms = one whole call "
        f"(prefill included); tokens/s = canvas / canvas ms; warm-up = the path's first call.",
        "",
        markdown_table(PATH_HEADERS, _path_rows(report)),
        "",
        f"**Engine / stock per step: {head['engine_greedy_over_stock_dynamic_per_step']:.2f} (greedy), "
        f"{head['engine_sampled_over_stock_dynamic_per_step']:.2f} (sampled)**"
        + (
            f"; engine greedy / stock static: {head['engine_greedy_over_stock_static_per_step']:.2f}"
            if "engine_greedy_over_stock_static_per_step" in head
            else ""
        )
        + "".join(
            f"; {label}: {head[key]:.2f}"
            for key, label in (
                ("fast_greedy_over_stock_dynamic_per_step", "fast path / stock (greedy)"),
                ("fast_sampled_over_stock_dynamic_per_step", "fast path / stock (sampled)"),
                ("fast_graphs_over_stock_dynamic_per_step", "fast path CUDA graphs / stock"),
                ("fast_compiled_over_stock_dynamic_per_step", "fast path compiled / stock"),
            )
            if key in head
        )
        + f". One-off process warm-up before timing: {report['process_warmup_s']:.2f} s.",
        "",
        *([interleaved_line(report["interleaved"]), ""] if report.get("interleaved") else []),
        markdown_table(["context", "stock encoder ms", "engine PromptCache.encode ms"], _prefill_rows(report)),
    ]
    if report["typing"]:
        t = report["typing"]
        lines += [
            "",
            f"Typing: {t['keystrokes']} characters typed at a cursor two thirds into a {t['file_tokens']:,}-token file, "
            f"one `Engine.infill` per keystroke ({t['kind']}, canvas {t['canvas']}, {t['steps']} steps, greedy):",
            "",
            markdown_table(TYPING_HEADERS, _typing_rows(report)),
        ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of ms/step per path, prefill vs context, typing latency per keystroke."""
    plt = pyplot()
    panels = 3 if report["typing"] else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.5))
    ax = axes[0]
    names, values = [], []
    for key, label in PATH_LABELS.items():
        path_data = report["paths"].get(key, {})
        if "ms_per_step" in path_data:
            names.append(label.replace(" (", "\n("))
            values.append(path_data["ms_per_step"])
    bars = ax.bar(range(len(values)), values, color=["#888888", "#bbbbbb", "#4c72b0", "#55a868", "#c44e52", "#dd8452", "#8172b3"][: len(values)])
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), names, fontsize=6, rotation=15)
    ax.set_ylabel("ms per denoising step")
    ax.set_title(f"canvas {report['settings']['canvas']}, {report['settings']['steps']} steps", fontsize=9)
    ax = axes[1]
    done = [(int(c), r) for c, r in report["prefill_ms"].items() if "skipped" not in r]
    if done:
        ax.plot([c for c, _ in done], [r["stock"] for _, r in done], "o-", label="stock encoder")
        ax.plot([c for c, _ in done], [r["engine"] for _, r in done], "s--", label="engine PromptCache.encode")
        ax.set_xscale("log", base=2)
        ax.set_xticks([c for c, _ in done], [f"{c:,}" for c, _ in done])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    ax.set_xlabel("context tokens")
    ax.set_ylabel("prefill ms")
    ax.set_title("prefill", fontsize=9)
    if report["typing"]:
        ax = axes[2]
        t = report["typing"]
        for key, label in (("reuse", "prompt cache reused"), ("no_reuse", "no reuse")):
            series = [r["ms"] for r in t[key]["per_keystroke"]]
            ax.plot(range(1, len(series) + 1), series, "o-", markersize=3, label=f"{label}: p50 {median(series):,.0f} ms")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("keystroke")
        ax.set_ylabel("Engine.infill ms")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.set_title(f"typing into a {t['file_tokens']:,}-token file", fontsize=9)
    model = report["model"]
    fig.suptitle(
        f"{model['source']} on {report['machine']['device']}/{model['dtype']} "
        f"({report['machine'].get('gpu') or report['machine']['cpu']}), {report['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    from dg_lsp.model.geometry import GEOMETRIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--geometry", choices=sorted(GEOMETRIES), default="tiny", help="random-weight model of this shape")
    source.add_argument("--model", default=None, help="checkpoint directory instead of a random geometry")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA; on CPU what dg-lsp picks: bfloat16 where native and faster, else float32), float32, bfloat16, float16")
    parser.add_argument("--experts", default="grouped_mm", help="experts implementation for both paths ('default' = leave)")
    parser.add_argument("--steps", type=int, default=16, help="fixed denoising steps (>= 2)")
    parser.add_argument("--canvas", type=int, default=256, help="canvas tokens (capped by the model's canvas_length)")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens for the per-step timings")
    parser.add_argument("--contexts", default=None, help="prefill sizes (default 512,2048,8192 on CUDA; 512,2048 on CPU)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per measurement (medians)")
    parser.add_argument("--no-compile", action="store_true", help="skip the engine's compiled fast path")
    parser.add_argument("--no-static", action="store_true", help="skip stock's static-cache (compiled) path on CUDA")
    parser.add_argument("--skip", default=None, metavar="PATHS",
                        help="comma-separated uncompiled paths not to time: engine_sampled, engine_greedy, fast_sampled (e.g. when measured before)")
    parser.add_argument("--typing-tokens", type=int, default=2048, help="size of the typing simulation's file")
    parser.add_argument("--keystrokes", type=int, default=20, help="characters typed (0 = no typing simulation)")
    parser.add_argument("--typed-text", default=DEFAULT_TYPED, help="what is typed, repeated as needed")
    parser.add_argument("--typing-kind", default="rest_of_line", choices=["rest_of_line", "line", "block"])
    parser.add_argument("--typing-steps", type=int, default=None, help="steps per keystroke (default --steps)")
    parser.add_argument("--typing-context", type=int, default=None, help="context token budget (default: the whole file)")
    parser.add_argument("--typing-compile", default="auto", choices=["auto", "on", "off", "graphs"], help="the engines' compile setting")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="also time stock, the fast path and the compiled fast path round by round (paired ratios; 0 = off)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="report path (default benchmarks/results/engine_bench_<model>_<device>.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default next to the JSON)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.steps < 2:
        raise SystemExit("engine_bench: --steps must be at least 2 (ms/step is a difference of 1-step and S-step runs)")
    if args.reps < 1 or args.canvas < 1 or args.context < 1:
        raise SystemExit("engine_bench: --reps, --canvas and --context must be positive")
    report = run(args)
    print_report(report)
    stem = f"engine_bench_{report['model']['label']}_{report['machine']['device'].split(':')[0]}"
    json_path = args.json or RESULTS_DIR / f"{stem}.json"
    write_json(json_path, report)
    print(f"\nwrote {json_path}")
    if not args.no_plot:
        png = args.plot or json_path.with_suffix(".png")
        plot(report, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

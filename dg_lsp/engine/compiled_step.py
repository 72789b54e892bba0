"""One denoising step as pure tensor functions, optionally compiled with ``torch.compile``.

``forward_stats`` runs transformers' decoder and LM head (with its logit soft-capping) on
fixed shapes, and turns the logits into what the sampler needs: the entropy, argmax and
probabilities of the temperature-scaled distribution, and the next step's self-conditioning
logits. ``accept_and_stop`` does the entropy-bound acceptance, renoising and the
stable-and-confident stopping rule. A sampled step draws its proposal between the two; a greedy
step (the server's default) is both in one function (:func:`make_greedy_step`), one graph. The
halves are compiled only once a sampled request asks for them, in the background
(:meth:`StepFunctions.start_sampled_compile`); that request and those until then run them uncompiled. Neither reads anything back to the host, so on a GPU
the whole step is queued without a sync (and with CUDA graphs, replayed as one launch).

The arithmetic is the eager path's (:mod:`dg_lsp.engine.sampler`, transformers'
``DiffusionGemmaDecoderModel.forward``) operation for operation; only where it runs differs,
and, compiled on a CPU, the form of two operations inductor handles slowly there (the soft-cap's
``tanh`` and the argmax: :func:`exp_tanh`, :func:`first_argmax`). From a request's second step on,
the compiled calls skip dynamo's guard checks (:mod:`dg_lsp.engine.guard_skip`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.engine.background_compile import lower_thread_priority
from dg_lsp.engine.guard_skip import COMPILED_CALLS
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import NEVER, completion_floor, decided_pins, entropy_bound_accept, softmax_entropy
from dg_lsp.engine.static_cache import StepCache
from dg_lsp.model.layer_order import stable_layer_type_order
from dg_lsp.model.typing import text_config

log = logging.getLogger(__name__)

#: Values of the ``compile`` setting.
COMPILE_MODES = ("auto", "on", "off", "graphs")

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Accepted = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def compile_cache_dir() -> Path:
    """Where compiled kernels are kept between starts: ``$XDG_CACHE_HOME/dg-lsp/torchinductor`` (or ``~/.cache``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dg-lsp" / "torchinductor"


def enable_compile_cache() -> Path:
    """Point inductor's on-disk caches (FX graph cache and AOTAutograd cache) at :func:`compile_cache_dir`.

    A ``TORCHINDUCTOR_CACHE_DIR`` the user set is kept; torch's own default (a temporary
    directory, which it writes into the environment once used) and an empty value are replaced.
    """
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or None  # empty: unset (not the working directory)
    if current is None or Path(current).resolve() == Path(default_cache_dir()).resolve():
        current = os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())
    path = Path(current)
    path.mkdir(parents=True, exist_ok=True)
    inductor_config.fx_graph_cache = True
    return path


def specialize_floats() -> None:
    """Make dynamo trace the Python floats a compiled function reads as constants (process-wide).

    By default (``torch._dynamo.config.specialize_float`` false) every float the step or the encoder
    reads is traced as a symbolic input, the model's own included (norm epsilons, attention and rotary
    scaling); once an operation needs a concrete value (``scaled_dot_product_attention``'s ``scale``)
    the whole trace restarts with those floats specialized, so each graph was traced twice. The
    model's floats never change, and the step's own float settings (entropy bound, confidence) are
    passed as tensors (:class:`~dg_lsp.engine.fast_path.FastDenoiser`), so a new setting recompiles
    nothing. Measured in ``benchmarks/RESULTS.md`` (issue 12, session 31).
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.specialize_float = True


#: CPU compile options: ``wrapper`` (default), ``max`` or ``off`` (see :func:`cpu_inductor_options`).
CPU_TUNING_ENV = "DG_LSP_CPU_COMPILE_TUNING"
CPU_TUNINGS = ("wrapper", "max", "off")

#: Inductor options for a CPU compile: C++ host code instead of a Python wrapper around the kernels.
CPU_WRAPPER_OPTIONS: dict[str, Any] = {"cpp_wrapper": True}
#: More for ``max``, small models only: weights frozen into the graph (prepacked) and matmuls
#: autotuned between C++ GEMM templates (AMX / AVX-512 micro-kernels) and ATen.
CPU_GEMM_OPTIONS: dict[str, Any] = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "freezing": True}
#: Largest weights (bytes) that :data:`CPU_GEMM_OPTIONS` apply to: freezing keeps a prepacked copy of them.
CPU_GEMM_MAX_WEIGHT_BYTES = 1 << 30


def cpu_compile_tuning() -> str:
    """``$DG_LSP_CPU_COMPILE_TUNING`` as one of :data:`CPU_TUNINGS` (``0`` / ``false`` / ``no`` mean off; unknown: the default, logged)."""
    raw = os.environ.get(CPU_TUNING_ENV, "").strip().lower()
    if raw in ("", "wrapper"):
        return "wrapper"
    if raw in ("0", "off", "false", "no"):
        return "off"
    if raw == "max":
        return "max"
    log.warning("$%s=%r is not one of %s; using wrapper", CPU_TUNING_ENV, raw, "|".join(CPU_TUNINGS))
    return "wrapper"


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the loaded model's parameters (tied ones once; :func:`dg_lsp.model.memory.weight_bytes` estimates from a config)."""
    return sum(p.nbytes for p in model.parameters())


def cpu_inductor_options(model: DiffusionGemmaForBlockDiffusion) -> dict[str, Any]:
    """Inductor options for compiling ``model``'s step and encoder; empty: inductor's defaults.

    On a CPU, for an unquantized model, by ``$DG_LSP_CPU_COMPILE_TUNING``: ``wrapper`` (default)
    :data:`CPU_WRAPPER_OPTIONS`; ``max`` adds :data:`CPU_GEMM_OPTIONS` when the weights fit
    :data:`CPU_GEMM_MAX_WEIGHT_BYTES` (freezing would double a large model's weight memory); ``off``
    none. Measured on a 2-core AVX-512 BF16 machine against inductor's defaults, interleaved
    (``benchmarks/cpu_compile_variants.py``, ``benchmarks/RESULTS.md``): ``wrapper`` took 0.76-0.88
    of the step time in different runs and keeps warm starts from the compile cache quick; ``max``
    0.69-0.94, but every start re-traces most of the way (freezing bypasses AOTAutograd's cache). Inductor's defaults on CUDA and for torchao's quantized weights (not
    measured with these options).
    """
    tuning = cpu_compile_tuning()
    if model.device.type != "cpu" or tuning == "off":
        return {}
    if getattr(model.config, "quantization_config", None) is not None:
        return {}
    options = dict(CPU_WRAPPER_OPTIONS)
    if tuning == "max" and parameter_bytes(model) <= CPU_GEMM_MAX_WEIGHT_BYTES:
        options.update(CPU_GEMM_OPTIONS)
    return options


#: When the step is compiled: before the model is ready, in a background thread after it, or never.
COMPILE_WHEN = ("now", "background", "never")


def compile_plan(mode: str, device: torch.device) -> str:
    """When to compile the step (one of :data:`COMPILE_WHEN`).

    ``on``: now (the server is ready once compiled; on CUDA with CUDA graphs); ``off``: never;
    ``auto``: in the background on a CPU (the first compile takes minutes there; the uncompiled
    step serves meanwhile), never on a CPU when ``$DG_LSP_BACKGROUND_COMPILE=0``, and never on
    CUDA for now: on the one GPU run so far (H200, 26B-A4B, ``benchmarks/RESULTS.md``, session 22)
    the cold compile took over 4 minutes and the CUDA-graph equivalence tests failed, while the
    uncompiled fast path ran correctly (110 ms/step against stock's 130).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, not {mode!r}")
    if mode == "on":
        return "now"
    if mode in ("off", "graphs"):  # graphs: CUDA graphs of the uncompiled step (dg_lsp.engine.step_graphs)
        return "never"
    if device.type == "cuda":  # opt in with "on" until the compiled CUDA path is verified
        return "never"
    from dg_lsp.engine.background_compile import background_compile_enabled

    return "background" if background_compile_enabled() else "never"


def should_compile(mode: str, device: torch.device) -> bool:
    """Whether to compile the step before the first request (``on``)."""
    return compile_plan(mode, device) == "now"


def exp_tanh(values: torch.Tensor) -> torch.Tensor:
    """``tanh`` as ``1 - 2 / (exp(2x) + 1)``: what inductor vectorizes well on a CPU.

    Inductor's own CPU ``tanh`` took 2.4x this formula's time over a canvas of logits (275 vs 114 µs
    for 256 x 512, one core); the two differ by at most ~1.5e-7 (±inf saturate to ±1, NaN stays NaN).
    """
    return 1.0 - 2.0 / (torch.exp(2.0 * values) + 1.0)


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(-1)`` (the first of equal maxima) as two vectorized reductions, ``amax`` and ``amin``.

    Inductor's CPU ``argmax`` is a scalar loop (661 vs 144 µs for 256 x 512 on one core). A row
    with a NaN has no position equal to its maximum; it gets the last index rather than one out of range.
    """
    last = values.shape[-1]
    index = torch.arange(last, device=values.device)
    first = torch.where(values == values.amax(dim=-1, keepdim=True), index, last).amin(dim=-1)
    return first.clamp_max(last - 1)


def decoder_logits(
    model: DiffusionGemmaForBlockDiffusion,
    canvas: torch.Tensor,
    conditioning: torch.Tensor | None,
    conditioned: torch.Tensor | None,
    positions: torch.Tensor,
    masks: dict[str, torch.Tensor] | None,
    cache: StepCache,
    tanh: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
) -> torch.Tensor:
    """Soft-capped float32 logits ``(1, length, vocab)`` for ``canvas``: transformers' decoder and LM head.

    ``conditioning`` holds the previous step's temperature-scaled logits in the embedding
    dtype (None at the first step); ``conditioned`` (``(1,)`` bool) false zeroes the signal
    exactly as passing no logits does, so a compiled step can use one graph for every step.
    ``tanh`` is the soft-capping's (:func:`exp_tanh` in a compiled step).
    """
    hidden: torch.Tensor = model.model.decoder(
        decoder_input_ids=canvas,
        self_conditioning_logits=conditioning,
        self_conditioning_mask=conditioned,
        decoder_attention_mask=masks,
        decoder_position_ids=positions,
        past_key_values=cache,
    ).last_hidden_state
    logits: torch.Tensor = model.lm_head(hidden).to(torch.float32)
    cap = model.final_logit_softcapping
    if cap is not None:
        logits = tanh(logits / cap) * cap
    return logits


def make_forward_stats(model: DiffusionGemmaForBlockDiffusion, cpu_kernels: bool = False) -> Callable[..., Stats]:
    """``(canvas, conditioning, conditioned, positions, masks, cache, temperature[, noise token]) -> (probs, entropy, argmax, next conditioning)``.

    ``cpu_kernels``: for ``torch.compile`` on a CPU, with the soft-capping's ``tanh`` and the argmax in
    forms inductor vectorizes there (:func:`exp_tanh`, :func:`first_argmax`; the same argmax, logits
    within ~1e-5 of transformers' own).
    """
    embed_dtype = model.model.decoder.embed_tokens.weight.dtype
    tanh = exp_tanh if cpu_kernels else torch.tanh
    argmax_of: Callable[[torch.Tensor], torch.Tensor] = first_argmax if cpu_kernels else (lambda values: values.argmax(dim=-1))

    def forward_stats(
        canvas: torch.Tensor,
        conditioning: torch.Tensor | None,
        conditioned: torch.Tensor | None,
        positions: torch.Tensor,
        masks: dict[str, torch.Tensor] | None,
        cache: StepCache,
        temperature: torch.Tensor,
        noise_token: torch.Tensor | None = None,
    ) -> Stats:
        raw = decoder_logits(model, canvas, conditioning, conditioned, positions, masks, cache, tanh)
        logits = raw / temperature
        if noise_token is not None:  # absorbing noise: the noise token is never an answer
            logits = logits.index_fill(-1, noise_token.view(1), NEVER)
        probs, entropy = softmax_entropy(logits)
        argmax = argmax_of(logits)
        return probs, entropy, argmax, logits.to(embed_dtype)

    return forward_stats


def accept_and_stop(
    entropy: torch.Tensor,
    argmax: torch.Tensor,
    proposal: torch.Tensor,
    noise: torch.Tensor,
    pinned: torch.Tensor,
    pinned_ids: torch.Tensor,
    previous: torch.Tensor,
    run: torch.Tensor,
    bound: float | torch.Tensor,
    threshold: int,
    confidence: float | torch.Tensor,
    absorbing: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Accepted:
    """``(next canvas, argmax canvas, run, stop)``: acceptance, renoising and the stopping rule, on the device.

    ``run`` counts the consecutive steps whose argmax canvas equalled the one before; the
    canvas is stable once it reaches ``threshold`` (the eager rule's history of that many
    canvases all equal to the current one), and the step stops when it is stable and the
    mean entropy is below ``confidence``. With ``absorbing`` = ``(noise token, the canvas the step
    read, steps left)`` (an absorbing-noise model) the sampler's
    :func:`~dg_lsp.engine.sampler.decided_pins` and :func:`~dg_lsp.engine.sampler.completion_floor`
    apply too, and a canvas with nothing left masked stops.
    """
    if absorbing is not None:
        noise_token, current, remaining = absorbing
        pinned, pinned_ids = decided_pins(current, noise_token, pinned, pinned_ids)
    entropy = torch.where(pinned, torch.zeros_like(entropy), entropy)
    argmax = torch.where(pinned, pinned_ids, argmax)
    proposal = torch.where(pinned, pinned_ids, proposal)
    accepted = entropy_bound_accept(entropy, bound) | pinned
    if absorbing is not None:
        accepted = completion_floor(accepted, entropy, current, noise_token, remaining)
    following = torch.where(accepted, proposal, noise)
    same = torch.eq(argmax, previous).all()
    run = torch.where(same, run + 1, torch.zeros_like(run))
    stop = (run >= threshold) & (entropy.mean() < confidence)
    if absorbing is not None:  # nothing left masked: the answer cannot change
        stop = stop | ~torch.eq(following, noise_token).any()
    return following, argmax, run, stop


#: What a greedy step returns: next canvas, argmax canvas, stable run, stop flag, next conditioning.
StepOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_greedy_step(forward_stats: Callable[..., Stats]) -> Callable[..., StepOutputs]:
    """One greedy step as one function: ``forward_stats`` then :func:`accept_and_stop` with the argmax as the proposal.

    ``(canvas, previous, conditioned, positions, masks, cache, temperature, noise, pinned, pinned_ids,
    previous argmax, run, bound, threshold, confidence[, noise token, steps left]) ->`` :data:`StepOutputs`.
    The renoising tokens ``noise`` are drawn before the call: a greedy step draws nothing else, so the
    random stream is the two-call step's. Compiled, it is one graph (one call, and the probabilities a
    greedy step never reads are not written out).
    """

    def greedy_step(
        canvas: torch.Tensor,
        previous: torch.Tensor | None,
        conditioned: torch.Tensor | None,
        positions: torch.Tensor,
        masks: dict[str, torch.Tensor] | None,
        cache: StepCache,
        temperature: torch.Tensor,
        noise: torch.Tensor,
        pinned: torch.Tensor,
        pinned_ids: torch.Tensor,
        prev_argmax: torch.Tensor,
        run: torch.Tensor,
        bound: float | torch.Tensor,
        threshold: int,
        confidence: float | torch.Tensor,
        noise_token: torch.Tensor | None = None,
        remaining: torch.Tensor | None = None,
    ) -> StepOutputs:
        absorbing = (noise_token, canvas, remaining) if noise_token is not None and remaining is not None else None
        _, entropy, argmax, conditioning = forward_stats(
            canvas, previous, conditioned, positions, masks, cache, temperature, *(absorbing[:1] if absorbing else ()),
        )
        following, argmax, run, stop = accept_and_stop(
            entropy, argmax, argmax, noise, pinned, pinned_ids, prev_argmax, run, bound, threshold, confidence,
            absorbing=absorbing,
        )
        return following, argmax, run, stop, conditioning

    return greedy_step


#: Dynamo's stance for the warm compiled prompt encoder: a size no warm-up saw runs eagerly.
ENCODER_STANCE = "eager_on_recompile"

_SHARED: weakref.WeakKeyDictionary[DiffusionGemmaForBlockDiffusion, dict[bool, StepFunctions]] = weakref.WeakKeyDictionary()


def step_functions(model: DiffusionGemmaForBlockDiffusion, compile_step: bool) -> StepFunctions:
    """The step functions of ``model``, built once per model: engines sharing a model share its compiled graphs."""
    per_model = _SHARED.setdefault(model, {})
    if compile_step not in per_model:
        per_model[compile_step] = StepFunctions(model, compile_step)
    return per_model[compile_step]


class StepFunctions:
    """The step functions (the two halves, and a greedy step as one), compiled or not (``torch.compile``; on CUDA in ``reduce-overhead`` mode = CUDA graphs)."""

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, compile_step: bool) -> None:
        self.compiled = compile_step
        #: The kinds of step (greedy: True, sampled: False) whose second step of a request ran with dynamo's
        #: guard checks (see :meth:`launching`): they are different graphs.
        self.guards_checked_for: set[bool] = set()
        self.cuda_graphs = compile_step and model.device.type == "cuda"
        #: Inductor options the step and the encoder are compiled with (:func:`cpu_inductor_options`).
        self.inductor_options: dict[str, Any] = cpu_inductor_options(model) if compile_step else {}
        # The CPU forms of tanh and argmax only where they were measured (inductor's C++ kernels).
        forward_stats = make_forward_stats(model, cpu_kernels=compile_step and model.device.type == "cpu")
        #: The halves uncompiled: what a sampled step runs until :attr:`sampled_compiled`.
        self.plain_halves: tuple[Callable[..., Stats], Callable[..., Accepted]] = (forward_stats, accept_and_stop)
        #: Whether sampled steps run the compiled halves (other graphs than the greedy step's): set once
        #: :meth:`start_sampled_compile`'s thread has compiled them.
        self.sampled_compiled = not compile_step
        #: That thread, once started; why it failed, if it did.
        self.sampled_compile: threading.Thread | None = None
        self.sampled_error: str | None = None
        self._sampled_lock = threading.Lock()
        if compile_step:
            enable_compile_cache()
            specialize_floats()
            stable_layer_type_order(model)
            # One graph with symbolic sizes serves every (context bucket, canvas) pair, so it
            # compiles once; on CUDA a graph is then recorded per pair at its first use.
            options: dict[str, Any] = {"dynamic": True}
            if self.cuda_graphs:
                options["mode"] = "reduce-overhead"
            elif self.inductor_options:
                options["options"] = self.inductor_options
            self.forward_stats: Callable[..., Stats] = torch.compile(forward_stats, **options)
            self.accept_and_stop: Callable[..., Accepted] = torch.compile(accept_and_stop, **options)
            # A greedy step (the server's default) as one graph: one call per step instead of two.
            self.greedy_step: Callable[..., StepOutputs] = torch.compile(make_greedy_step(forward_stats), **options)
        else:
            self.forward_stats = forward_stats
            self.accept_and_stop = accept_and_stop
            self.greedy_step = make_greedy_step(forward_stats)
        # The prompt encoder too, on a CPU (where its per-layer overhead is most of a short
        # encode); symbolic sizes: a fresh prompt and a reused prefix are one graph each.
        self._model = model
        self._encoder: Callable[..., Any] | None = (
            torch.compile(model.model.encoder, dynamic=True, options=self.inductor_options or None)
            if compile_step and model.device.type == "cpu"
            else None
        )
        #: The compiled encoder under the serving stance, once :meth:`warm_encoder` compiled it.
        self._warm_encoder: Callable[..., Any] | None = None

    def warm_encoder(self) -> None:
        """Compile the prompt encoder's two graphs (a fresh prompt, then one reusing a prefix) on a private cache."""
        encoder = self._encoder
        if encoder is None or self._warm_encoder is not None:
            return
        vocab = int(text_config(self._model).vocab_size)
        first = [(7 + 13 * i) % vocab for i in range(24)]
        cache = PromptCache(self._model)
        cache.encode(first, encoder=encoder)
        cache.encode(first[:16] + [(5 + 11 * i) % vocab for i in range(12)], encoder=encoder)

        def encode(**kwargs: Any) -> Any:
            with COMPILED_CALLS.call(), torch.compiler.set_stance(ENCODER_STANCE):
                return encoder(**kwargs)

        self._warm_encoder = encode

    def prompt_encoder(self) -> Callable[..., Any] | None:
        """The compiled prompt encoder once :meth:`warm_encoder` ran (None: use the model's own).

        It runs under dynamo's ``eager_on_recompile`` stance: a size or state no warm-up saw runs
        eagerly for that request instead of stalling it behind a minutes-long recompile.
        """
        return self._warm_encoder

    def start_sampled_compile(self, warm: Callable[[], None]) -> threading.Thread | None:
        """Compile the halves a sampled step runs: once, in a low-priority daemon thread that runs ``warm``.

        ``warm`` runs sampled steps with ``compile_now`` (:meth:`sampled_halves`) on private buffers;
        once it returns, sampled requests use the compiled halves. None: nothing to start (uncompiled
        step functions, or compiled, compiling or failed already).
        """
        with self._sampled_lock:
            if not self.compiled or self.sampled_compiled or self.sampled_compile is not None:
                return None
            thread = threading.Thread(target=self._compile_sampled, args=(warm,), name="dg-compile-sampled", daemon=True)
            self.sampled_compile = thread
        thread.start()
        return thread

    def _compile_sampled(self, warm: Callable[[], None]) -> None:
        lower_thread_priority()
        started = time.perf_counter()
        try:
            warm()
        except Exception as exc:  # sampled requests go on with the uncompiled halves
            self.sampled_error = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("compiling the sampled step failed; it stays uncompiled: %s", self.sampled_error, exc_info=True)
            return
        self.sampled_compiled = True
        log.info("compiled sampled step in use after %.1fs", time.perf_counter() - started)

    def sampled_state(self) -> str:
        """Where the sampled step's compile stands: ``off``, ``pending`` (until a sampled request), ``compiling``, ``ready``, ``failed``."""
        if not self.compiled:
            return "off"
        if self.sampled_compiled:
            return "ready"
        if self.sampled_error is not None:
            return "failed"
        return "compiling" if self.sampled_compile is not None else "pending"

    def sampled_halves(self, compile_now: bool = False) -> tuple[Callable[..., Stats], Callable[..., Accepted]]:
        """``(forward_stats, accept_and_stop)`` for a sampled step: compiled once :attr:`sampled_compiled` (or ``compile_now``).

        Until then a sampled request runs them uncompiled rather than stall on their compile.
        """
        if self.sampled_compiled or compile_now:
            return self.forward_stats, self.accept_and_stop
        return self.plain_halves

    @property
    def guards_checked(self) -> bool:
        """Whether any kind of step has had its guards checked at a second step (see :meth:`launching`)."""
        return bool(self.guards_checked_for)

    @contextmanager
    def launching(self, number: int, greedy: bool = True, compiled: bool = True) -> Iterator[None]:
        """Around step ``number``'s calls of a request: from the second step on, without dynamo's guard checks.

        A later step's inputs have the first step's metadata (:mod:`dg_lsp.engine.guard_skip`), so
        its guards pass; skipped only once a second step of the same kind (``greedy`` or sampled: the
        one-graph greedy step or the two halves) ran with the checks on these step functions (any graph
        that step needs exists) and no other compiled call is in progress. Uncompiled steps (or ``compiled``
        false: a sampled request on the uncompiled halves): nothing to skip.
        """
        if not self.compiled or not compiled:
            yield
            return
        with COMPILED_CALLS.call(skip_guards=number > 1 and greedy in self.guards_checked_for) as skipped:
            yield
        if number > 1 and not skipped:
            self.guards_checked_for.add(greedy)

    def begin_step(self) -> None:
        """Mark a new step for CUDA graph trees (outputs of earlier replays may be overwritten after this)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]

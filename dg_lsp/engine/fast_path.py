"""The fast denoising loop: static prompt KV, fixed shapes, a (compilable) step with no host sync inside.

The canvas length comes from :data:`dg_lsp.canvas.CANVAS_LENGTHS`. With CUDA graphs the prompt
is padded to a bucket (a multiple of 256 tokens) and the padding masked, so one graph serves
every request of a (bucket, canvas) pair; elsewhere the step reads exactly the prompt's
states with no mask (eager, or compiled with dynamic shapes: one graph for every size).
Everything that lasts a whole request (masks, positions, temperatures) is built once
before the first step. Inside the loop the host only launches
work: the stop flag and the drafts are read back after the step (on a GPU, one step late,
so the check never stalls the next step's launch; a step queued past the stop is discarded).
The answers are the eager path's (:func:`dg_lsp.engine.denoiser.denoise`): same sampler,
same random stream, same stopping rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.canvas import noise_ids
from dg_lsp.engine.background_compile import BackgroundCompile, CompileState
from dg_lsp.engine.compiled_step import StepFunctions, compile_plan, cpu_inductor_options, step_functions
from dg_lsp.engine.denoiser import CanvasSpec, Cancelled, DenoiseOutcome, Draft, _start_canvas, embedding_dtype
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings, temperature
from dg_lsp.engine.static_cache import StaticPromptKV, StepCache, attention_masks, context_bucket
from dg_lsp.engine.step_graphs import GraphKey, GraphRunner, StepGraphs, cuda_runner_factory
from dg_lsp.model.typing import vocab_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathSettings:
    """How the engine runs its denoising steps."""

    #: Static prompt KV + fixed shapes + sync-free step (False: the eager transformers path).
    enabled: bool = True
    #: ``on`` (before the first request), ``off``, ``auto`` (on CUDA: off for now; on a CPU: in the
    #: background once :meth:`FastDenoiser.background_compile`'s compile is started), or ``graphs``
    #: (CUDA only: greedy steps uncompiled but captured as CUDA graphs, :mod:`dg_lsp.engine.step_graphs`).
    compile: str = "auto"
    #: A draft every this many steps (the final canvas is always reported).
    draft_interval: int = 1


@dataclass
class _Step:
    """One launched step: its device results and, where launching is asynchronous, their host copies."""

    number: int
    canvas: torch.Tensor
    argmax: torch.Tensor
    conditioning: torch.Tensor
    run: torch.Tensor
    stop: torch.Tensor
    started: float
    host_stop: torch.Tensor | None = None
    host_argmax: torch.Tensor | None = None
    event: torch.cuda.Event | None = None

    def stopped(self) -> bool:
        """The step's stop flag (waits for this step only, never for steps queued after it)."""
        if self.event is not None and self.host_stop is not None:
            self.event.synchronize()
            return bool(self.host_stop)
        return bool(self.stop)

    def canvas_ids(self) -> list[int]:
        """The argmax canvas as ids."""
        if self.event is not None and self.host_argmax is not None:
            self.event.synchronize()
            ids: list[int] = self.host_argmax[0].tolist()
            return ids
        ids = self.argmax[0].tolist()
        return ids


class FastDenoiser:
    """Denoises one canvas at a time after a :class:`PromptCache`'s prompt, on static buffers."""

    def __init__(
        self,
        model: DiffusionGemmaForBlockDiffusion,
        settings: FastPathSettings = FastPathSettings(),
        steps: StepFunctions | None = None,
        noise_id: int | None = None,
        graph_runners: Callable[[], GraphRunner] | None = None,
        compile_sampled: bool = False,
    ) -> None:
        """``graph_runners``: capture greedy steps with these runners (default: CUDA graphs with ``compile="graphs"`` on CUDA).

        ``compile_sampled``: sampled steps run (and so compile) the compiled halves even before they are
        warm (the sampled compile's own runner; :meth:`StepFunctions.start_sampled_compile`).
        """
        self.model = model
        #: The model's absorbing noise token (None: uniform): the background compile warms that graph.
        self.noise_id = noise_id
        self.settings = settings
        self.device = model.device
        self.kv = StaticPromptKV(model)
        #: When the step is compiled: ``now``, ``background`` or ``never`` (see :func:`compile_plan`).
        self.plan = compile_plan(settings.compile, self.device)
        self.steps = steps if steps is not None else step_functions(model, self.plan == "now")
        self._compile_sampled = compile_sampled
        if self.plan == "now":
            self.steps.warm_encoder()
        #: The background compile, once :meth:`background_compile` made it.
        self.background: BackgroundCompile[StepFunctions] | None = None
        #: Why the step compiled up front (plan ``now``) was dropped for the uncompiled one, if it was.
        self.compile_error: str | None = None
        #: Held for a whole request: a compiled step is swapped in only between requests.
        self._in_use = threading.Lock()
        self._vocab = vocab_size(model)
        self._embed_dtype = embedding_dtype(model)
        self._implementation = str(model.config._attn_implementation)
        #: Steps launched ahead of the oldest unread stop flag: one where launching is asynchronous.
        self._depth = 1 if self.device.type == "cuda" else 0
        self._interval = max(1, settings.draft_interval)
        if graph_runners is None and settings.compile == "graphs":
            if self.device.type == "cuda":
                graph_runners = cuda_runner_factory()
            else:
                log.warning("compile: \"graphs\" needs CUDA; running the uncompiled step on %s", self.device)
        #: The captured greedy steps (``compile: "graphs"``), or None.
        self.graphs = StepGraphs(self.steps, graph_runners) if graph_runners is not None else None
        #: Pad the prompt to its bucket and mask the padding (fixed shapes: what CUDA graphs need).
        self.padded = self.steps.cuda_graphs or self.graphs is not None

    @property
    def compiled(self) -> bool:
        """Whether the step in use is compiled."""
        return self.steps.compiled

    def prompt_encoder(self) -> Callable[..., Any] | None:
        """The compiled prompt encoder of the step in use, once warm (None: the model's own encoder)."""
        return self.steps.prompt_encoder()

    @property
    def compile_state(self) -> CompileState:
        """``ready`` when the step in use is compiled; else off, pending, compiling or failed."""
        if self.background is not None:
            return self.background.state
        if self.compile_error is not None:
            return CompileState.FAILED
        if self.steps.compiled:
            return CompileState.READY
        return CompileState.PENDING if self.plan == "background" else CompileState.OFF

    def compile_facts(self) -> dict[str, object]:
        """``dg.info``'s ``compile`` entry: the setting, when it compiles, and where that stands."""
        facts: dict[str, object] = {"setting": self.settings.compile, "when": self.plan}
        if self.graphs is not None:
            facts["graphs"] = {"captured": len(self.graphs.graphs)}
        if self.plan != "never":  # inductor options it compiles (or compiled) with; {}: inductor's defaults
            facts["options"] = self.steps.inductor_options if self.steps.compiled else cpu_inductor_options(self.model)
        if self.steps.compiled:  # sampled requests (greedy: false): compiled at the first one, in the background
            facts["sampled"] = self.steps.sampled_state()
        if self.background is not None:
            facts.update(self.background.facts())
        elif self.compile_error is not None:
            facts["error"] = self.compile_error
        facts["state"] = self.compile_state.value
        return facts

    def swap_steps(self, steps: StepFunctions) -> None:
        """Use ``steps`` from the next request on (waits for a request in progress to finish)."""
        if steps.cuda_graphs != self.steps.cuda_graphs or (self.graphs is not None and steps.compiled):
            raise ValueError("a step with CUDA graphs needs padded prompts: it cannot replace one without")
        with self._in_use:
            self.steps = steps

    def background_compile(self, shapes: Sequence[int]) -> BackgroundCompile[StepFunctions] | None:
        """The compile to run in the background (plan ``background`` only; None otherwise); start it yourself."""
        if self.plan != "background" or self.steps.compiled:
            return None
        if self.background is None:
            model = self.model
            self.background = BackgroundCompile(
                build=lambda: step_functions(model, True),
                warm=self._warm_shape_factory(),
                swap=self.swap_steps,
                shapes=shapes,
            )
        return self.background

    def _warm_shape_factory(self) -> Callable[[StepFunctions, int], None]:
        """``warm(steps, canvas length)``: two greedy steps of a canvas on private buffers (what compiles it)."""
        model = self.model
        runners: dict[int, tuple[FastDenoiser, PromptCache]] = {}  # one per step functions object

        def warm(steps: StepFunctions, length: int) -> None:
            if id(steps) not in runners:
                steps.warm_encoder()
                runners[id(steps)] = self._warm_runner(steps)
            runner, cache = runners[id(steps)]
            runner.denoise(cache, CanvasSpec(length=length, noise_id=self.noise_id), SamplerSettings(max_steps=2), seed=0)

        return warm

    def _warm_sampled(self, steps: StepFunctions, length: int) -> None:
        """Compile the halves a sampled step runs: two sampled steps of a ``length`` canvas on private buffers.

        Run by :meth:`StepFunctions.start_sampled_compile`'s thread after the first sampled request
        on a compiled step: they are other graphs than the greedy step's (one each, for every canvas
        length), and until they are ready sampled requests run them uncompiled rather than wait.
        """
        runner, cache = self._warm_runner(steps, compile_sampled=True)
        spec = CanvasSpec(length=length, noise_id=self.noise_id)
        runner.denoise(cache, spec, SamplerSettings(max_steps=2, greedy=False), seed=0)

    def _warm_runner(self, steps: StepFunctions, compile_sampled: bool = False) -> tuple[FastDenoiser, PromptCache]:
        """A private fast path on ``steps`` and a short encoded prompt, to compile graphs on."""
        cache = PromptCache(self.model)
        cache.encode([(7 + 13 * i) % self._vocab for i in range(24)])
        runner = FastDenoiser(self.model, FastPathSettings(compile="off"), steps=steps, compile_sampled=compile_sampled)
        return runner, cache

    def denoise(
        self,
        cache: PromptCache,
        spec: CanvasSpec,
        settings: SamplerSettings,
        seed: int,
        on_draft: Callable[[Draft], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> DenoiseOutcome:
        """Denoise one canvas after the prompt ``cache`` holds; raises :class:`Cancelled`.

        A compiled step that fails here (its compile or a run: a backend this machine's compiler
        or driver cannot build, say), whether compiled in the background or up front, or CUDA
        graphs that cannot be captured, are dropped (logged once, ``dg.info`` shows ``failed`` and
        why) and the request runs again on the uncompiled step, as does every later one.
        """
        with self._in_use:
            try:
                return self._denoise(cache, spec, settings, seed, on_draft, cancelled)
            except Cancelled:
                raise
            except Exception as exc:
                if self.graphs is not None:  # e.g. an operation that cannot be captured
                    self.compile_error = f"capturing the step as CUDA graphs failed: {type(exc).__name__}: {exc}"[:2000]
                    self.graphs = None
                    log.warning("%s; back to the uncompiled step", self.compile_error, exc_info=True)
                elif self.steps.compiled:
                    error = f"the compiled step failed: {type(exc).__name__}: {exc}"[:2000]
                    background = self.background
                    if background is not None:
                        background.state, background.error = CompileState.FAILED, error
                    else:
                        self.compile_error = error
                    log.warning("the compiled denoising step failed; back to the uncompiled step: %s", error, exc_info=True)
                    self.steps = step_functions(self.model, False)
                else:
                    raise
        with self._in_use:
            return self._denoise(cache, spec, settings, seed, on_draft, cancelled)

    @torch.inference_mode()
    def _denoise(
        self,
        cache: PromptCache,
        spec: CanvasSpec,
        settings: SamplerSettings,
        seed: int,
        on_draft: Callable[[Draft], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> DenoiseOutcome:
        prompt = cache.ids
        n, length, device = len(prompt), spec.length, self.device
        self.kv.sync(cache.full_cache, prompt, cache.reused_tokens)
        if self.padded:  # fixed shapes: the prompt padded to its bucket, padding masked
            bucket = context_bucket(n)
            step_cache = self.kv.step_cache(bucket)
            masks: dict[str, torch.Tensor] | None = attention_masks(
                self.kv.key_masks(bucket, length), length, self._implementation, self._embed_dtype
            )
        else:  # exact views, no mask: nothing padded to attend over
            step_cache, masks = self.kv.step_cache(), None
        request = _Request(
            cache=step_cache,
            masks=masks,
            positions=torch.arange(n, n + length, device=device)[None, :],
            settings=settings,
            generator=torch.Generator(device=device).manual_seed(seed),
            temperatures=torch.tensor(
                [temperature(settings, settings.max_steps - s + 1) for s in range(1, settings.max_steps + 1)],
                dtype=torch.float32,
                device=device,
            ),
            drafts=on_draft is not None,
            noise_id=spec.noise_id,
            bound=torch.tensor(settings.entropy_bound, dtype=torch.float32, device=device),
            confidence=torch.tensor(settings.confidence_threshold, dtype=torch.float32, device=device),
        )
        if not settings.greedy:  # chosen once: a request never changes graphs (or guard checks) midway
            steps = self.steps
            if steps.compiled and not steps.sampled_compiled and not self._compile_sampled:
                steps.start_sampled_compile(lambda: self._warm_sampled(steps, length))
            request.halves = steps.sampled_halves(self._compile_sampled)
            request.compiled = steps.compiled and request.halves is not steps.plain_halves
        if spec.noise_id is not None:  # the completion floor's inputs, as tensors (no recompiles)
            request.noise_token = torch.tensor(spec.noise_id, device=device)
            request.remaining = torch.arange(settings.max_steps, 0, -1, device=device)
        canvas, pinned, pinned_ids = _start_canvas(spec, self._vocab, request.generator, device)
        request.conditioned = torch.ones(1, dtype=torch.bool, device=device)
        request.unconditioned = torch.zeros(1, dtype=torch.bool, device=device)
        request.pinned = pinned if pinned is not None else torch.zeros((1, length), dtype=torch.bool, device=device)
        request.pinned_ids = (
            pinned_ids if pinned_ids is not None else torch.zeros((1, length), dtype=torch.long, device=device)
        )
        state = _Step(
            number=0,
            canvas=canvas,
            argmax=torch.full((1, length), -1, dtype=torch.long, device=device),
            conditioning=torch.zeros((1, length, self._vocab), dtype=self._embed_dtype, device=device),
            run=torch.zeros((), dtype=torch.long, device=device),
            stop=torch.zeros((), dtype=torch.bool, device=device),
            started=time.perf_counter(),
        )
        total = settings.max_steps
        queue: list[_Step] = []
        step_ms: list[float] = []
        while True:
            if cancelled is not None and cancelled():
                raise Cancelled()
            if state.number < total:
                captured = self.graphs is not None and settings.greedy and request.masks is not None
                state = self._launch_captured(state, request) if captured else self._launch(state, request)
                queue.append(state)
            while queue and (len(queue) > self._depth or state.number >= total):
                step = queue.pop(0)
                stop = step.stopped()
                step_ms.append((time.perf_counter() - step.started) * 1000.0)
                last = stop or step.number >= total
                if on_draft is not None and (last or step.number % self._interval == 0):
                    on_draft(Draft(step=step.number, max_steps=total, canvas=step.canvas_ids(), final=last))
                if last:
                    return DenoiseOutcome(
                        canvas=step.canvas_ids(), steps=step.number, stopped_early=stop and step.number < total,
                        step_ms=step_ms,
                    )

    def _launch(self, state: _Step, request: _Request) -> _Step:
        """Queue one step after ``state`` (no host sync)."""
        settings, generator = request.settings, request.generator
        started = time.perf_counter()
        number = state.number + 1
        self.steps.begin_step()
        if number > 1:
            previous: torch.Tensor | None = state.conditioning
            conditioned: torch.Tensor | None = request.conditioned
        elif self.steps.compiled:  # zeros masked off: the same graph as every later step
            previous, conditioned = state.conditioning, request.unconditioned
        else:  # nothing to condition on: skip the vocab-sized softmax and matmul
            previous = conditioned = None
        absorbing = () if request.noise_token is None or request.remaining is None else (
            request.noise_token, request.remaining[number - 1]
        )
        with self.steps.launching(number, settings.greedy, compiled=request.compiled):
            if settings.greedy:  # one call; the renoising draw is the only one a greedy step makes
                noise = noise_ids(state.canvas.shape, self._vocab, generator, self.device, request.noise_id)
                canvas, argmax, run, stop, conditioning = self.steps.greedy_step(
                    state.canvas, previous, conditioned, request.positions, request.masks, request.cache,
                    request.temperatures[number - 1], noise, request.pinned, request.pinned_ids, state.argmax,
                    state.run, request.bound, settings.stability_threshold, request.confidence, *absorbing,
                )
            else:
                assert request.halves is not None
                forward_stats, accept_and_stop = request.halves
                probs, entropy, argmax, conditioning = forward_stats(
                    state.canvas, previous, conditioned, request.positions, request.masks, request.cache,
                    request.temperatures[number - 1], *(() if request.noise_token is None else (request.noise_token,)),
                )
                # the eager sampler's draw, from the same generator in the same order
                proposal = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(argmax.shape)
                noise = noise_ids(state.canvas.shape, self._vocab, generator, self.device, request.noise_id)
                canvas, argmax, run, stop = accept_and_stop(
                    entropy, argmax, proposal, noise, request.pinned, request.pinned_ids, state.argmax, state.run,
                    request.bound, settings.stability_threshold, request.confidence,
                    absorbing=(
                        (request.noise_token, state.canvas, request.remaining[number - 1])
                        if request.noise_token is not None and request.remaining is not None
                        else None
                    ),
                )
        return self._finish(_Step(number, canvas, argmax, conditioning, run, stop, started), request, self.steps.cuda_graphs)

    def _launch_captured(self, state: _Step, request: _Request) -> _Step:
        """Queue one greedy step after ``state`` as a CUDA graph replay (captured the first time its key is seen)."""
        started = time.perf_counter()
        number = state.number + 1
        settings, cache, masks = request.settings, request.cache, request.masks
        assert self.graphs is not None and masks is not None
        absorbing = request.noise_token is not None and request.remaining is not None
        values = {
            "canvas": state.canvas,
            "previous": state.conditioning,  # zeros masked off at the first step: one graph for every step
            "conditioned": request.conditioned if number > 1 else request.unconditioned,
            "positions": request.positions,
            "temperature": request.temperatures[number - 1],
            "noise": noise_ids(state.canvas.shape, self._vocab, request.generator, self.device, request.noise_id),
            "pinned": request.pinned,
            "pinned_ids": request.pinned_ids,
            "prev_argmax": state.argmax,
            "run": state.run,
        }
        if absorbing:
            assert request.noise_token is not None and request.remaining is not None
            values["noise_token"] = request.noise_token
            values["remaining"] = request.remaining[number - 1]
        key = GraphKey(
            bucket=int(cache.layers[0].keys.shape[-2]) if cache.layers else 0,
            length=int(state.canvas.shape[-1]),
            bound=float(settings.entropy_bound),
            threshold=int(settings.stability_threshold),
            confidence=float(settings.confidence_threshold),
            absorbing=absorbing,
            buffers=self.kv.generation,
        )
        graph = self.graphs.get(key, cache, masks, values)
        canvas, argmax, run, stop, conditioning = graph.run(values, masks)
        return self._finish(_Step(number, canvas, argmax, conditioning, run, stop, started), request, True)

    def _finish(self, step: _Step, request: _Request, replayed: bool) -> _Step:
        """Copy a graph's outputs out of its memory (``replayed``) and queue the host copies of the stop flag and draft."""
        number, argmax = step.number, step.argmax
        if replayed:  # the next replay reuses the graph's output memory
            step.canvas, step.argmax, step.conditioning = step.canvas.clone(), step.argmax.clone(), step.conditioning.clone()
            step.run, step.stop = step.run.clone(), step.stop.clone()
        if self._depth:
            step.host_stop = torch.empty((), dtype=torch.bool, pin_memory=True)
            step.host_stop.copy_(step.stop, non_blocking=True)
            if request.drafts and number % self._interval == 0:
                step.host_argmax = torch.empty(tuple(argmax.shape), dtype=torch.long, pin_memory=True)
                step.host_argmax.copy_(step.argmax, non_blocking=True)
            step.event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            step.event.record()
        return step


@dataclass
class _Request:
    """What stays fixed through one request's steps."""

    cache: StepCache
    masks: dict[str, torch.Tensor] | None
    positions: torch.Tensor
    settings: SamplerSettings
    generator: torch.Generator
    temperatures: torch.Tensor
    drafts: bool
    #: The entropy bound and the confidence threshold as 0-d float32 tensors: runtime inputs of a compiled
    #: step (dynamo specializes Python floats, :func:`~dg_lsp.engine.compiled_step.specialize_floats`).
    bound: torch.Tensor
    confidence: torch.Tensor
    #: The model's absorbing noise token (None: uniform random tokens).
    noise_id: int | None = None
    #: With ``noise_id``: that token as a 0-d tensor, and the steps left at each step (``max_steps`` … 1).
    noise_token: torch.Tensor | None = None
    remaining: torch.Tensor | None = None
    conditioned: torch.Tensor = field(default_factory=lambda: torch.ones(1, dtype=torch.bool))
    unconditioned: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.bool))
    pinned: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    pinned_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    #: A sampled request's ``(forward_stats, accept_and_stop)`` (:meth:`StepFunctions.sampled_halves`).
    halves: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    #: Whether the request's steps run compiled functions (a greedy one does when the step is compiled).
    compiled: bool = True

"""CUDA graphs of the uncompiled greedy step: captured once per shape, replayed as one launch, no ``torch.compile``.

The fast path's step already has what capturing needs: fixed shapes (the prompt padded to its
bucket, the canvas one of the fixed lengths), prompt KV at fixed addresses
(:class:`~dg_lsp.engine.static_cache.StaticPromptKV`) and no host sync between launch and
result. Capturing a shape costs one warm-up run and one captured run of the eager step (seconds),
where compiling the 26B-A4B step took over 4 minutes on an H200 (``benchmarks/RESULTS.md``,
session 22); a replay then launches the step's hundreds of kernels at once. The kernels are
the eager ones (no fusion): this removes launch and Python overhead, not memory traffic.

Greedy steps only (the server's default): a sampled step draws from a ``torch.Generator`` between
the forward pass and the acceptance, and those run uncompiled. Random renoising tokens are
drawn before each replay, outside the graph, in the eager path's order.

:class:`GraphRunner` is the capture/replay seam: :class:`CudaGraphRunner` on a GPU,
:class:`EmulatedGraphRunner` (re-runs the step and writes the static outputs in place) to test
the buffer plumbing on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dg_lsp.engine.compiled_step import StepFunctions, StepOutputs
from dg_lsp.engine.static_cache import StepCache


#: The step's tensor inputs, in the order the captured function takes them.
INPUT_NAMES = (
    "canvas", "previous", "conditioned", "positions", "temperature", "noise", "pinned", "pinned_ids",
    "prev_argmax", "run",
)
#: Extra inputs of an absorbing-noise model's step.
ABSORBING_NAMES = ("noise_token", "remaining")


class GraphRunner(Protocol):
    """Captures a function of static tensors once, then replays it."""

    def capture(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        """Record ``fn`` (after any warm-up); returns its output tensors, valid only after a replay, which overwrites them."""

    def replay(self) -> None:
        """Run the captured work again on the static inputs' current contents."""


class CudaGraphRunner:
    """``torch.cuda.CUDAGraph`` capture (after a warm-up run on a side stream) and replay; graphs share one memory pool."""

    def __init__(self, pool: Any = None) -> None:
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS workspaces, lazy inits: outside the capture
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn()
        self.graph = graph
        return outputs

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()


class EmulatedGraphRunner:
    """A CPU stand-in with a CUDA graph's contract: a replay reads the static inputs and overwrites the static outputs.

    As with a CUDA graph, capturing computes nothing usable: the outputs hold poison (NaN, -7,
    True) until the first replay.
    """

    def __init__(self) -> None:
        self.fn: Callable[[], StepOutputs] | None = None
        self.outputs: StepOutputs | None = None
        self.replays = 0

    def capture(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        self.fn, self.outputs = fn, fn()
        for output in self.outputs:
            output.fill_(True if output.dtype == torch.bool else float("nan") if output.is_floating_point() else -7)
        return self.outputs

    def replay(self) -> None:
        assert self.fn is not None and self.outputs is not None, "replay before capture"
        for static, fresh in zip(self.outputs, self.fn(), strict=True):
            static.copy_(fresh)
        self.replays += 1


@dataclass(frozen=True)
class GraphKey:
    """What a captured step is specific to: its shapes, the constants baked into it, and the prompt buffers it reads."""

    bucket: int
    length: int
    bound: float
    threshold: int
    confidence: float
    absorbing: bool
    #: :attr:`StaticPromptKV.generation`: a graph reads the prompt KV buffers in place, so new buffers need new graphs.
    buffers: int


class CapturedStep:
    """One greedy step captured for one :class:`GraphKey`: static inputs in, :data:`StepOutputs` out."""

    def __init__(
        self,
        steps: StepFunctions,
        key: GraphKey,
        cache: StepCache,
        masks: dict[str, torch.Tensor],
        example: dict[str, torch.Tensor],
        runner: GraphRunner,
    ) -> None:
        self.key = key
        self.runner = runner
        # Static copies of every input; the masks too (a request's masks are new tensors).
        self.inputs = {name: value.clone() for name, value in example.items()}
        self.masks = {name: mask.clone() for name, mask in masks.items()}
        inputs, static_masks = self.inputs, self.masks

        def step() -> StepOutputs:
            return steps.greedy_step(
                inputs["canvas"], inputs["previous"], inputs["conditioned"], inputs["positions"], static_masks, cache,
                inputs["temperature"], inputs["noise"], inputs["pinned"], inputs["pinned_ids"], inputs["prev_argmax"],
                inputs["run"], key.bound, key.threshold, key.confidence,
                *((inputs["noise_token"], inputs["remaining"]) if key.absorbing else ()),
            )

        self.outputs = runner.capture(step)

    def run(self, values: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> StepOutputs:
        """Copy ``values`` and ``masks`` into the static inputs and replay; the outputs are overwritten by the next replay."""
        for name, value in values.items():
            self.inputs[name].copy_(value)
        for name, mask in masks.items():
            self.masks[name].copy_(mask)
        self.runner.replay()
        return self.outputs


class StepGraphs:
    """The captured greedy steps of one fast path, by :class:`GraphKey` (all dropped when the prompt buffers change)."""

    def __init__(self, steps: StepFunctions, runner_factory: Callable[[], GraphRunner]) -> None:
        self.steps = steps
        self.runner_factory = runner_factory
        self.graphs: dict[GraphKey, CapturedStep] = {}
        self.captures = 0

    def get(
        self, key: GraphKey, cache: StepCache, masks: dict[str, torch.Tensor], example: dict[str, torch.Tensor]
    ) -> CapturedStep:
        """The captured step for ``key``, capturing it (with ``example`` inputs) the first time."""
        graph = self.graphs.get(key)
        if graph is None:
            stale = [k for k in self.graphs if k.buffers != key.buffers]
            for old in stale:  # they read prompt buffers that no longer exist
                del self.graphs[old]
            graph = CapturedStep(self.steps, key, cache, masks, example, self.runner_factory())
            self.graphs[key] = graph
            self.captures += 1
        return graph


def cuda_runner_factory() -> Callable[[], GraphRunner]:
    """Runners that share one CUDA graph memory pool."""
    pool = torch.cuda.graph_pool_handle()
    return lambda: CudaGraphRunner(pool)

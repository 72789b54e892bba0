"""Compiled calls skip dynamo's guard checks only alone, and the step's CPU-friendly kernels equal torch's."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dg_lsp.engine.compiled_step import exp_tanh, first_argmax
from dg_lsp.engine.guard_skip import CompiledCalls


def stance_skips() -> bool:
    import torch._dynamo.eval_frame as eval_frame

    return bool(eval_frame._stance.skip_guard_eval_unsafe)


def test_a_call_alone_skips_and_restores_the_stance() -> None:
    calls = CompiledCalls()
    with calls.call(skip_guards=True) as skipped:
        assert skipped and stance_skips()
    assert not stance_skips()
    with calls.call() as skipped:  # not asked for
        assert not skipped and not stance_skips()
    assert calls.skipped == 1


def test_no_skip_while_another_compiled_call_runs() -> None:
    calls = CompiledCalls()
    inside, release = threading.Event(), threading.Event()

    def long_call() -> None:  # a background compile, say
        with calls.call():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=long_call)
    worker.start()
    assert inside.wait(10)
    with calls.call(skip_guards=True) as skipped:  # does not wait for it: checks its guards instead
        assert not skipped and not stance_skips()
    release.set()
    worker.join(10)
    assert calls.skipped == 0


def test_other_calls_wait_while_one_skips() -> None:
    calls = CompiledCalls()
    order: list[str] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        with calls.call() as skipped:
            order.append(f"other skipped={skipped} stance={stance_skips()}")

    with calls.call(skip_guards=True) as skipped:
        assert skipped
        worker = threading.Thread(target=other)
        worker.start()
        assert started.wait(10)
        worker.join(0.2)  # still waiting: the skip is process-wide
        assert worker.is_alive()
        order.append("skipping call done")
    worker.join(10)
    assert order == ["skipping call done", "other skipped=False stance=False"]


def test_an_exception_releases_the_skip() -> None:
    calls = CompiledCalls()
    with pytest.raises(RuntimeError), calls.call(skip_guards=True):
        raise RuntimeError("step failed")
    assert not stance_skips()
    with calls.call(skip_guards=True) as skipped:
        assert skipped


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-300.0, 300.0, width=32, allow_subnormal=False), min_size=1, max_size=40), st.integers(0, 5))
def test_first_argmax_is_torchs_argmax(values: list[float], ties: int) -> None:
    row = torch.tensor(values + values[:ties], dtype=torch.float32)  # repeated values: ties
    assert int(first_argmax(row[None, :])[0]) == int(row.argmax())


def test_first_argmax_stays_in_range_on_nan() -> None:
    assert int(first_argmax(torch.tensor([[1.0, float("nan"), 2.0]]))[0]) in range(3)


def test_exp_tanh_is_tanh() -> None:
    values = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([0.0, -0.0, 1e-6, -1e-6, 50.0, -50.0, float("inf"), -float("inf")])])
    assert torch.allclose(exp_tanh(values), torch.tanh(values), rtol=0, atol=3e-7)
    assert torch.isnan(exp_tanh(torch.tensor(float("nan"))))
    soft_capped = exp_tanh(torch.linspace(-400, 400, 801) / 30.0) * 30.0  # logits as the step caps them
    assert torch.allclose(soft_capped, torch.tanh(torch.linspace(-400, 400, 801) / 30.0) * 30.0, rtol=0, atol=1e-5)

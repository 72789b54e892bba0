"""The server's debug line for an inline completion: where the time went."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

from dg_lsp.server.server import completion_timing


def test_timing_line_splits_the_request_into_its_parts() -> None:
    started = time.perf_counter() - 0.2
    timing = {"queued": started + 0.001, "parsed": started + 0.003, "done": started + 0.103}
    line = completion_timing(started, timing, None)
    assert line.startswith("inline completion: ")
    assert "queue 1.0 + parse 2.0 + complete 100.0 + return " in line
    total = float(line.split(": ", 1)[1].split(" ms", 1)[0])
    assert total >= 200.0  # up to the moment the line is written
    assert "encode" not in line  # no answer: no engine figures to show


def test_timing_line_adds_the_engines_figures_for_an_answer() -> None:
    now = time.perf_counter()
    timing = {"queued": now, "parsed": now, "done": now}
    result = SimpleNamespace(result=SimpleNamespace(encode_ms=25.04, denoise_ms=83.26, steps=8))
    line = completion_timing(now, timing, cast(Any, result))
    assert line.endswith("(encode 25.0, denoise 83.3 ms, 8 steps)")

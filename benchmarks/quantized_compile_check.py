"""Check: the engine's compiled fast path (torch.compile) runs quantized weights and answers as the eager path.

    python benchmarks/quantized_compile_check.py fp8      # or int8; builds the tiny published-layout checkpoint

Prints whether the compiled step's infill equals the uncompiled one and how long compiling took.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dg_lsp.canvas import HoleKind  # noqa: E402
from dg_lsp.engine.engine import Engine, InfillRequest  # noqa: E402
from dg_lsp.engine.fast_path import FastPathSettings  # noqa: E402
from dg_lsp.engine.sampler import SamplerSettings  # noqa: E402
from dg_lsp.model.loader import load_model  # noqa: E402
from dg_lsp.testing_published import build_published_checkpoint  # noqa: E402


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "fp8"
    path = build_published_checkpoint(Path(tempfile.mkdtemp()) / "published", seed=0)
    request = InfillRequest(prefix="def add(a, b):\n    return ", suffix="\n", language="python",
                            kind=HoleKind.REST_OF_LINE, settings=SamplerSettings(max_steps=3), seed=0, file_name="a.py")
    eager = Engine(load_model(path, "cpu", "float32", quantize=mode), fast_path=FastPathSettings(compile="off"))
    expected = eager.infill(request).text
    started = time.perf_counter()
    compiled = Engine(load_model(path, "cpu", "float32", quantize=mode), fast_path=FastPathSettings(compile="on"))
    text = compiled.infill(request).text
    print(f"{mode}: compiled step {'equals' if text == expected else 'DIFFERS FROM'} the eager one "
          f"(first call with compiling {time.perf_counter() - started:.0f} s)")
    return 0 if text == expected else 1


if __name__ == "__main__":
    sys.exit(main())

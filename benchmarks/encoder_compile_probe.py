"""Prompt encoding with and without the compiled prompt encoder, in one process (issue 12).

Loads the embedded model with ``compile: on`` (the decoder step and the prompt encoder are
compiled and warmed before the first request), then completes every single-line cursor of
``fixtures/cursors.json`` three times alternately with the model's own (eager) encoder and the
compiled one, the prompt cache cleared before each request (a full encode every time). Prints
the p50 of ``complete()`` and of the engine's ``encode_ms`` for each.

    python benchmarks/encoder_compile_probe.py
"""

import json, time, statistics, torch
from pathlib import Path
from dg_lsp.model.loader import load_model
from dg_lsp.engine.engine import Engine
from dg_lsp.engine.fast_path import FastPathSettings
from dg_lsp.infill import complete
from dg_lsp.config import CompletionOptions
from dg_lsp.languages import get_parser
torch.set_num_threads(1)
t = time.time()
eng = Engine(load_model("dg_lsp/models/dg-code-small", "cpu", "bfloat16"), fast_path=FastPathSettings(compile="on"))
print("engine with compile on ready in %.0f s" % (time.time() - t), flush=True)
cur = json.loads(Path("fixtures/cursors.json").read_text())
cases = []
for f, cs in cur.items():
    src = Path("fixtures", f).read_text()
    lang = {"py": "python", "js": "javascript", "ts": "typescript", "rs": "rust", "go": "go"}.get(f.rsplit(".", 1)[1])
    for c in cs:
        if c["kind"] not in ("LINE", "REST_OF_LINE"):
            continue
        lines = src.splitlines(keepends=True)
        off = sum(len(l) for l in lines[:c["line"]]) + c["character"]
        cases.append((src[:off] + src[off + len(c["expected"]):], lang, off))
opts = CompletionOptions()
fast = eng.fast
assert fast is not None, "the fast path is off"
compiled_encoder = fast.prompt_encoder
res: dict[str, list[tuple[float, float, float]]] = {"eager": [], "compiled": []}
for rep in range(3):
    for mode in ("eager", "compiled"):
        setattr(fast, "prompt_encoder", (lambda: None) if mode == "eager" else compiled_encoder)
        for text, lang, off in cases:
            eng._cache.clear()
            tree = get_parser(lang).parse(text.encode()) if lang else None
            s = time.perf_counter()
            r = complete(eng, text, tree, lang, off, opts)
            total = (time.perf_counter() - s) * 1000
            if r is not None:
                res[mode].append((total, r.result.encode_ms, r.result.denoise_ms))
            else:
                res[mode].append((total, float("nan"), float("nan")))
for mode, rows in res.items():  # p50 over the requests that produced an answer (encode_ms)
    enc = [r[1] for r in rows if r[1] == r[1]]
    print(mode, "n", len(rows), "complete p50 %.1f" % statistics.median(r[0] for r in rows), "encode p50 %.1f (n=%d)" % (statistics.median(enc) if enc else -1, len(enc)))

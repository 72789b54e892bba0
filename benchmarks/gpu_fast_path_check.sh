#!/usr/bin/env bash
# The engine fast path on one GPU at DiffusionGemma 26B-A4B geometry (random bf16 weights): one
# command, under 8 minutes. NOT YET RUN (no GPU in the session that wrote it).
#
# Targets (issue 12): <= 25 ms per denoising step, 256 tokens in <= 400 ms, keystroke-to-final
# p50 <= 150 ms at 2k context, warm start <= 60 s.
#
#   bash benchmarks/gpu_fast_path_check.sh            # results under benchmarks/results/
#
# 1. tests/gpu: compiled CUDA-graph step == eager canvases (tiny model)         ~1 min
# 2. engine_bench 26b-a4b: stock vs eager vs fast vs fast compiled per step, 256-token canvas,
#    prefill at 2k, typing at a 2k context (Engine.infill = keystroke to final) ~4 min
# 3. warm start in a fresh process, from the on-disk compile cache step 2 filled   ~1.5 min
#    (step 2's "fast path, compiled" warm-up column is the first, cold compile)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/dg-lsp/torchinductor}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
step() { echo "== $1 ($(date -u +%H:%M:%S))" >&2; }

step "GPU tests of the fast path"
timeout 80 "$PY" -m pytest tests/gpu/test_fast_path_cuda.py -x -q || status=1

step "engine_bench 26b-a4b (stock static skipped: measured before at 44 ms/step, 190 s to compile)"
timeout 270 "$PY" benchmarks/engine_bench.py --geometry 26b-a4b --device cuda --dtype bfloat16 \
    --steps 16 --canvas 256 --context 2048 --contexts 2048 --reps 3 --interleave 5 --no-static \
    --keystrokes 8 --typing-tokens 2048 --typing-context 2048 --typing-kind line \
    --json "$OUT/engine_bench_26b-a4b_cuda_fast.json" --plot "$OUT/engine_bench_26b-a4b_cuda_fast.png" || status=1

step "warm start (a second process: compile cache on disk)"
timeout 100 "$PY" benchmarks/fast_path_warmstart.py --geometry 26b-a4b --device cuda --dtype bfloat16 \
    --context 2048 --json "$OUT/fast_path_warmstart_26b-a4b_cuda.jsonl" || status=1

step "done (status $status); paste the markdown block above and the warm-start lines into benchmarks/RESULTS.md"
exit $status

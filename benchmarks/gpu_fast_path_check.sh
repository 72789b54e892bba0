#!/usr/bin/env bash
# The engine fast path on one GPU at DiffusionGemma 26B-A4B geometry (random bf16 weights): one
# command: stages 1-4 in under 10 minutes, stage 5 runs until the command's own limit (each stage has a
# time limit and logs its numbers as it goes, so a stage cut short still reports what it measured).
#
# Targets (issue 12): <= 25 ms per denoising step, 256 tokens in <= 400 ms, keystroke-to-final
# p50 <= 150 ms at 2k context, warm start <= 60 s.
#
#   bash benchmarks/gpu_fast_path_check.sh            # results under benchmarks/results/
#   PYTHON=python3 OUT=/some/dir bash benchmarks/gpu_fast_path_check.sh
#   GEOMETRY=tiny DEVICE=cpu DTYPE=float32 bash ...   # a rehearsal of the same commands on a CPU
#   STAGES=graphs bash ...                            # stages 1-3 only (no torch.compile; ~4.5 minutes)
#
# It needs transformers 5.23 (the lent H200's image has 5.17: install the pinned wheel first, with
# regex from pyproject, e.g. `pip install --no-deps --target /tmp/site transformers-5.23.0-*.whl
# regex-*.whl; export PYTHONPATH=/tmp/site`); test_diffusiongemma_gpu.py's quantized tests need torchao.
#
# First run (session 22, H200, torch 2.11): the uncompiled paths were measured (RESULTS.md), the
# 26B-A4B step's cold compile did not finish in 4 minutes, and both CUDA-graph tests of the compiled
# step failed with their tracebacks lost to a time limit. Hence this order, cheapest and most
# telling first (compile "graphs", CUDA graphs of the uncompiled step, needs no torch.compile):
# 1. tests/gpu: the CUDA graphs of the uncompiled step against it                 ~30 s
# 2. engine_bench 26b-a4b: stock vs the fast path vs its CUDA graphs (captured in seconds),
#    interleaved; prefill at 2k; typing at a 2k context on the CUDA graphs (keystroke to
#    final). No torch.compile here (--no-compile)                                    ~2.5 min
# 2b. step_profile: the uncompiled step's kernels ranked by device time (what to work on) ~40 s
# 3. warm start in a fresh process with compile "graphs"                            ~30 s
# 4. the rest of tests/gpu (the compiled step's tests compile the small model), tracebacks
#    printed; pytest-timeout ends a test that hangs                                 ~3 min
# 5. with what time is left: the compiled fast path at 26B-A4B (cold compile > 4 min before)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
GEOMETRY=${GEOMETRY:-26b-a4b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/dg-lsp/torchinductor}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
status=0
step() { echo "== $1 ($(date -u +%H:%M:%S))" >&2; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true
"$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || status=1

TIMEOUT_PER_TEST=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo --timeout=120)

step "GPU test: CUDA graphs of the uncompiled step"
timeout 90 "$PY" -m pytest tests/gpu/test_fast_path_cuda.py -k cuda_graphs_of_the_uncompiled -q --tb=long -p no:cacheprovider $TIMEOUT_PER_TEST || status=1

step "engine_bench $GEOMETRY, uncompiled and CUDA graphs (stock static skipped: measured before at 44 ms/step, 190 s to compile)"
timeout 200 "$PY" benchmarks/engine_bench.py --geometry "$GEOMETRY" --device "$DEVICE" --dtype "$DTYPE" \
    --steps 16 --canvas 256 --context 2048 --contexts 2048 --reps 3 --interleave 5 --no-static --no-compile \
    --skip engine_sampled,engine_greedy,fast_sampled \
    --keystrokes 8 --typing-tokens 2048 --typing-context 2048 --typing-kind line --typing-compile graphs \
    --json "$OUT/engine_bench_${GEOMETRY}_${DEVICE}_graphs.json" --plot "$OUT/engine_bench_${GEOMETRY}_${DEVICE}_graphs.png" || status=1

step "where an uncompiled step's time goes (torch.profiler, kernels ranked by device time)"
timeout 100 "$PY" benchmarks/step_profile.py --geometry "$GEOMETRY" --device "$DEVICE" --dtype "$DTYPE" \
    --canvas 256 --context 2048 --steps 4 --rows 40 --json "$OUT/step_profile_${GEOMETRY}_${DEVICE}.json" || status=1

step "warm start with CUDA graphs (a fresh process)"
timeout 60 "$PY" benchmarks/fast_path_warmstart.py --geometry "$GEOMETRY" --device "$DEVICE" --dtype "$DTYPE" \
    --compile graphs --context 2048 --json "$OUT/fast_path_warmstart_${GEOMETRY}_${DEVICE}.jsonl" || status=1

if [ "${STAGES:-all}" = graphs ]; then  # stages 1-3 only (benchmarks/gpu_session.sh, after a training run)
    step "done (status $status; STAGES=graphs: stages 1-3)"
    exit $status
fi

step "the rest of tests/gpu (tracebacks of failures printed)"
timeout 200 "$PY" -m pytest tests/gpu -q -rfE --tb=short -p no:cacheprovider $TIMEOUT_PER_TEST \
    --deselect tests/gpu/test_fast_path_cuda.py::test_cuda_graphs_of_the_uncompiled_step_give_its_answers || status=1

step "engine_bench $GEOMETRY, the compiled fast path (until the command's time runs out)"
timeout "${COMPILED_BENCH_S:-600}" "$PY" benchmarks/engine_bench.py --geometry "$GEOMETRY" --device "$DEVICE" --dtype "$DTYPE" \
    --steps 16 --canvas 256 --context 2048 --contexts 2048 --reps 2 --interleave 3 --no-static \
    --skip engine_sampled,engine_greedy,fast_sampled --keystrokes 0 \
    --json "$OUT/engine_bench_${GEOMETRY}_${DEVICE}_compiled.json" --plot "$OUT/engine_bench_${GEOMETRY}_${DEVICE}_compiled.png" || status=1

step "done (status $status); paste the markdown block above and the warm-start line into benchmarks/RESULTS.md"
exit $status

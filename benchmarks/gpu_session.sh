#!/usr/bin/env bash
# One call of a lent GPU for both open GPU items, in under 10 minutes (the device tool's limit per call):
#   1. issue 11: the packed training run of the embedded model (`dg_lsp.train.gpu_run device`, the learning
#      rate annealed by the deadline) for TRAIN_MINUTES (default 3.5): 7 files in $OUT (bf16 shards, config, facts,
#      history, summary);
#   2. issue 12: stages 1-3 of `benchmarks/gpu_fast_path_check.sh` (no torch.compile): the CUDA-graphs test,
#      engine_bench at 26B-A4B (stock vs the fast path vs its CUDA graphs, typing at a 2k context), warm start;
#      everything it writes, with its log, as one archive $OUT/fast_path_check.tar.gz.
# Budget (estimated, not yet measured on a GPU): training + ~1 min (install, start, evaluation, export); the check
# ~4.5-6 min (graphs test <= 90 s, engine_bench <= 200 s, step profile <= 100 s, warm start <= 60 s, each with its
# own time limit); the check gets whatever is left under LIMIT_S (585 s), its later stages cut first.
# 8 files come back: the device's limit. Prepare here, then call the device tool:
#
#   python -m dg_lsp.train.gpu_run pack            # .work/gpu: corpus, wheels (transformers 5.23, regex, ...), grammars
#   run(command="OUT=$OUT bash benchmarks/gpu_session.sh", carry=[".work/gpu"], timeout_s=600)
#   python -m dg_lsp.train.gpu_run unpack <files_at> --out .work/gpu-model
#   tar -xzf <files_at>/fast_path_check.tar.gz -C benchmarks/results/<session>/
#
# Rehearsal on a CPU: TRAIN_MINUTES=0.3 TRAIN_ARGS="--device cpu --batch-size 4 --workers 1"
#   CHECK_ENV="GEOMETRY=tiny DEVICE=cpu DTYPE=float32" OUT=/tmp/out PYTHON=python bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder whose files come back}
LIMIT_S=${LIMIT_S:-585}
mkdir -p "$OUT"
status=0

echo "== training (${TRAIN_MINUTES:-3.5} min) $(date -u +%H:%M:%S)" >&2
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
PYTHONUNBUFFERED=1 "$PY" -m dg_lsp.train.gpu_run device --minutes "${TRAIN_MINUTES:-3.5}" --out "$OUT" ${TRAIN_ARGS:-} || status=1

echo "== fast-path check, stages 1-3 $(date -u +%H:%M:%S)" >&2
check=$(mktemp -d)
left=$((LIMIT_S - ($(date +%s) - started) - 10))
if [ "$left" -gt 30 ]; then
    # what gpu_run installed: transformers 5.23 and regex (/tmp/site), the grammars (/tmp/grammars)
    # shellcheck disable=SC2086  # CHECK_ENV is a list of assignments
    env PYTHONPATH="/tmp/site:/tmp/grammars:$PWD" PYTHON="$PY" OUT="$check" STAGES=graphs ${CHECK_ENV:-} \
        timeout "$left" bash benchmarks/gpu_fast_path_check.sh > "$check/check.log" 2>&1 || status=1
    tail -n 60 "$check/check.log"
else
    echo "no time left for the check (${left} s)" | tee "$check/check.log"
    status=1
fi
tar -czf "$OUT/fast_path_check.tar.gz" -C "$check" . || status=1
echo "== done (status $status) after $(( $(date +%s) - started )) s; files: $(ls "$OUT" | tr '\n' ' ')" >&2
exit $status

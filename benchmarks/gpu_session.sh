#!/usr/bin/env bash
# One GPU lease, one command: install with the CUDA extension, run the GPU test suite, then every
# benchmark, with logs and JSON under OUTDIR and a short table last.
#
#   benchmarks/gpu_session.sh OUTDIR
#   STEPS="memory kernels" benchmarks/gpu_session.sh OUTDIR    # a subset (e.g. a second call)
#
# Steps: install tests memory kernels throughput patched. Each runs under `timeout` so the whole
# session fits one 10-minute device call on an H100 (total of the budgets below: ~560 s); each
# benchmark also gets an internal --budget-s a little under its timeout, so it stops starting new
# measurements and still writes its JSON. The device machine has no network: pip installs with
# --no-build-isolation --no-deps, using the torch/triton/nvcc already there.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_session.sh OUTDIR}
STEPS=${STEPS:-"install tests memory kernels throughput patched"}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
PY=${PYTHON:-python}
START=$(date +%s)
STATUS="$OUT/steps.tsv"
: > "$STATUS"

has() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT/NAME.log, record rc and seconds.
step() {
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    local what=ok
    [[ $rc -eq 124 || $rc -eq 137 ]] && what=TIMEOUT
    [[ $rc -ne 0 && $what == ok ]] && what="rc=$rc"
    printf "%s\t%s\t%ss\n" "$name" "$what" "$dt" >> "$STATUS"
    echo "   $what in ${dt}s; tail of $name.log:"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    nvcc --version 2>&1 | tail -n 1
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"

if has install; then
    # Editable, as the project's CI does: the checkout itself then imports the compiled _C (a
    # non-editable install would be shadowed by the checkout's sources when run from here).
    # Hopper only (sm_90a + PTX) to halve the compile time on an H100/H200.
    export VITPOSE_CUDA_ARCHS=${VITPOSE_CUDA_ARCHS:-"90a-real;90-virtual"}
    step install 200 $PY -m pip install --no-build-isolation --no-deps -e .
    if ! $PY -c "import vitpose_kernels._C" 2>/dev/null; then
        echo "   editable install gave no _C; trying a regular install"
        step install_regular 150 $PY -m pip install --no-build-isolation --no-deps .
    fi
    $PY -m vitpose_kernels.info > "$OUT/info.txt" 2>&1
    cat "$OUT/info.txt"
fi

# The whole suite: on a GPU the CUDA/Triton parity tests run instead of skipping.
has tests && step tests 80 $PY -m pytest -q -p no:cacheprovider -rs tests

has memory && step attention_memory 80 $PY benchmarks/attention_memory.py --out "$OUT" --budget-s 55
has kernels && step kernels 85 $PY benchmarks/kernels.py --out "$OUT" --rep 10 --max-seconds 1 --budget-s 65
has throughput && step throughput 100 $PY benchmarks/throughput.py --out "$OUT" --rep 10 --budget-s 75
if has patched && [[ -f benchmarks/patched_models.py ]]; then
    step patched_models 45 $PY benchmarks/patched_models.py --out "$OUT" --rep 10 --max-seconds 2
fi

echo
echo "== steps ($(( $(date +%s) - START ))s in all)"
column -t "$STATUS" 2>/dev/null || cat "$STATUS"
$PY benchmarks/summary.py "$OUT" 2>&1 | tee "$OUT/summary.txt"

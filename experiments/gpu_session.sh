#!/usr/bin/env bash
# Issue 18 ("GPU numbers"): everything one lent-H100 call measures, as one command from the repository root:
#
#     bash experiments/gpu_session.sh                       # on the device; results under $OUT
#     VRL_GPU_DRY=1 OUT=/tmp/gpu-dry bash experiments/gpu_session.sh   # CPU dry run of the plumbing (tiny model)
#
# Installs nothing and needs no network: the image's python3 (torch, triton, transformers, peft, pytest, yaml)
# with PYTHONPATH=.:kernels (vrl and vrl_kernels from this checkout; nothing reads conf/ through Hydra).
# Each part runs under its own `timeout` and the session goes on when one fails or hangs; after every part the
# partial results are merged into $OUT/results.json. Part timeouts sum to 510 s (worst case; expect less).
#
# $OUT (at most 8 files come back): log.txt (everything printed), results.json (env, every part's status, pytest
# results per test, bench_kernels rows, step stages and ratios, mismatch statistics), kernels_eager.md and
# kernels_compile.md (bench_kernels tables). Parts, most valuable first:
#   env              nvidia-smi (read only), versions, commit / source fingerprint
#   kernel_tests_gpu pytest -m gpu tests/kernels: the Triton kernels at V=151,936 on a real GPU (never run before)
#   kernels_eager    bench_kernels.py at N=16k: ours vs eager, % of measured copy bandwidth (the goals' floors)
#   step             bench_gpu_step.py --part step: 3B-recipe GRPO step, stage shares, VPPO and kernel ratios
#   mismatch         bench_gpu_step.py --part mismatch: sampler vs teacher-forced log-probs, bf16 and fp32
#   kernel_tests     the rest of tests/kernels on CUDA (masks, strides, hand-computed cases)
#   kernels_compile  bench_kernels.py at N=16k: ours vs torch.compile (compile times are printed)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

OUT=${OUT:-/tmp/vrl-gpu-session}
DRY=${VRL_GPU_DRY:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vrl-gpu.XXXXXX")
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=".:kernels${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HOME="$WORK/hf"
export TRITON_CACHE_DIR="$WORK/triton" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" MPLCONFIGDIR="$WORK/mpl"

if [ "$DRY" = 1 ]; then  # CPU: tiny model, interpreter kernels, tiny shapes; same parts, files and timeouts
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TRITON_INTERPRET=1
    STEP_ARGS=(--device cpu --tiny)
    BENCH_EAGER=(--device cpu --tiny --providers ours,eager)
    BENCH_COMPILE=(--device cpu --tiny --ops k2 --providers ours,eager)  # compile needs a C++ toolchain here
    REST_TESTS=(tests/kernels/test_kernel_vocab_stats.py -k "hand_computed or kl_nonnegative")  # plumbing only
else
    STEP_ARGS=(--device cuda)
    BENCH_EAGER=(--ns 16384 --providers ours,eager)
    BENCH_COMPILE=(--ns 16384 --providers ours,compile --ops k1_dual,k3,k1_single,k2)
    # compile: sm_90 ahead-of-time build, already checked on CPU; dispatch: CPU/import rules (subprocess-heavy)
    REST_TESTS=(tests/kernels --ignore=tests/kernels/test_kernel_compile.py --ignore=tests/kernels/test_kernel_dispatch.py)
    "$PY" -c "import xdist" 2>/dev/null && REST_TESTS+=(-n 4)  # pytest-xdist: Triton compiles in 4 processes
fi

part() {  # part NAME TIMEOUT_S COMMAND...: run, record status and time, merge results; never stops the session
    local name=$1 limit=$2
    shift 2
    echo
    echo "=================== part $name (timeout ${limit}s) $(date -u +%H:%M:%S) ==================="
    echo "+ $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$@"
    rc=$?
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "!!! part $name hit its ${limit}s timeout"
    echo "=================== part $name: rc=$rc in ${secs}s ==================="
    printf '{"part": "%s", "rc": %s, "seconds": %s, "timeout_s": %s}\n' "$name" "$rc" "$secs" "$limit" >>"$WORK/parts.jsonl"
    for d in eager compile; do
        [ -f "$WORK/bench_kernels_$d/results.md" ] && cp "$WORK/bench_kernels_$d/results.md" "$OUT/kernels_$d.md"
    done
    timeout 60 "$PY" experiments/bench_gpu_step.py --collect "$WORK" "$OUT" || echo "!!! collect failed"
}

main() {
    echo "vrl GPU session $(date -u +%FT%TZ) dry=$DRY out=$OUT work=$WORK python=$(command -v "$PY")"
    nvidia-smi || echo "(no nvidia-smi)"
    nvidia-smi -q -d CLOCK 2>/dev/null | head -40
    part env 30 "$PY" experiments/bench_gpu_step.py --part env "${STEP_ARGS[@]}" --out "$WORK/env.json"
    part kernel_tests_gpu 50 "$PY" -m pytest -q -rA -p no:cacheprovider -m gpu tests/kernels \
        --junitxml="$WORK/pytest_kernels_gpu.xml"
    part kernels_eager 50 "$PY" experiments/bench_kernels.py "${BENCH_EAGER[@]}" --out "$WORK/bench_kernels_eager"
    part step 200 "$PY" experiments/bench_gpu_step.py --part step "${STEP_ARGS[@]}" --budget-s 185 \
        --out "$WORK/step.json"
    part mismatch 55 "$PY" experiments/bench_gpu_step.py --part mismatch "${STEP_ARGS[@]}" --out "$WORK/mismatch.json"
    part kernel_tests 60 "$PY" -m pytest -q -rfE -p no:cacheprovider -m "not gpu" "${REST_TESTS[@]}" \
        --junitxml="$WORK/pytest_kernels_rest.xml"
    part kernels_compile 65 "$PY" experiments/bench_kernels.py "${BENCH_COMPILE[@]}" --out "$WORK/bench_kernels_compile"
    timeout 60 "$PY" experiments/bench_gpu_step.py --collect "$WORK" "$OUT" --print-summary
    echo "files in $OUT:"
    ls -la "$OUT"
}

main 2>&1 | tee "$OUT/log.txt"

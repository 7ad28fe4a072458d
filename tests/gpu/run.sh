#!/usr/bin/env bash
# GPU-only check of the CUDA ops: JIT-builds each op through its builder and
# compares it with its pure-torch reference (tests/gpu/check_cuda_ops.py).
#
# Prints exactly one line per op on stdout ("<op>: OK max_rel_err=..." or
# "<op>: FAIL ..."); build logs and tracebacks of failing ops go to stderr.
# Exits non-zero if any op fails. Needs no network and no pip install: a
# plain checkout plus torch with CUDA, nvcc and ninja. Each op runs in its
# own process under a time limit, so one hung build cannot hide the rest;
# the whole script stays under 8 minutes.
#
# Environment knobs: PYTHON (default python3), OPS (space-separated op names,
# default: every CUDA op the package registers), PER_OP_TIMEOUT (seconds,
# default 220), RUN_LOG_DIR (where the logs go), TORCH_EXTENSIONS_DIR (default: a fresh temporary directory,
# so stale builds or locks from an earlier run cannot interfere).
set -u

cd "$(dirname "$0")/../.." || exit 2
PY="${PYTHON:-python3}"
PER_OP_TIMEOUT="${PER_OP_TIMEOUT:-220}"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1  # a crash still shows where it happened
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
if [ -z "${TORCH_EXTENSIONS_DIR:-}" ]; then
    TORCH_EXTENSIONS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ds_gpu_ext.XXXXXX")" || exit 2
    export TORCH_EXTENSIONS_DIR
fi
# RUN_LOG_DIR: keep every block's full log there (default: a fresh temporary directory).
LOG_DIR="${RUN_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ds_gpu_logs.XXXXXX")}" || exit 2
mkdir -p "$LOG_DIR" || exit 2

ops="${OPS:-}"
if [ -z "$ops" ]; then
    ops="$(timeout 60 "$PY" tests/gpu/check_cuda_ops.py --list 2>"$LOG_DIR/list.log")" || {
        echo "could not list the CUDA ops; checking the known ones" >&2
        tail -n 20 "$LOG_DIR/list.log" >&2
        ops="fused_adam quantizer"
    }
fi

failed=0
for op in $ops; do
    log="$LOG_DIR/$op.log"
    timeout --kill-after=10 "$PER_OP_TIMEOUT" "$PY" tests/gpu/check_cuda_ops.py --op "$op" >"$log" 2>&1
    rc=$?
    verdict="$(grep -E "^$op: (OK|FAIL)" "$log" | tail -n 1)"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        verdict="$op: FAIL timed out after ${PER_OP_TIMEOUT}s"
    elif [ -z "$verdict" ]; then
        verdict="$op: FAIL exited with status $rc and no verdict"
    elif [ "$rc" -ne 0 ] && [ "${verdict#"$op: OK"}" != "$verdict" ]; then
        verdict="$op: FAIL exited with status $rc after reporting OK"
    fi
    echo "$verdict"
    if [ "${verdict#"$op: OK"}" = "$verdict" ]; then
        failed=1
        { echo "---- $op log (last 60 lines) ----"; tail -n 60 "$log"; } >&2
    fi
done
# ---- the engine on CUDA, and the Hybrid Engine decode timing ----
# check_engine.py: ZeRO-2 fp16 / ZeRO-3 bf16 training against fp32 AdamW, and ZeRO-3 Hybrid Engine generation
# with CUDA graphs against HF's argmax (one line each). gpu_check --bench: (a) the HE decode path vs (c) HF
# generate on OPT-1.3B and TinyLlama-1.1B configs in fp16, with the fraction of the memory-bandwidth bound
# reached per decode step (one JSON line per model).
run_block() {  # name, command...
    local name="$1"; shift
    timeout --kill-after=10 "$PER_OP_TIMEOUT" "$@" >"$LOG_DIR/$name.log" 2>&1 || failed=1
    grep -E '^([a-z0-9_]+: (OK|FAIL)|\{)' "$LOG_DIR/$name.log" | grep -v '^transformer_inference: OK' || {
        echo "$name: FAIL no verdict"; failed=1; }
    if grep -q ': FAIL' "$LOG_DIR/$name.log"; then
        { echo "---- $name log (last 60 lines) ----"; tail -n 60 "$LOG_DIR/$name.log"; } >&2
    fi
}
run_block engine "$PY" tests/gpu/check_engine.py
run_block hybrid_engine_bench "$PY" tests/gpu/bench_decode.py --bench
exit "$failed"

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
# default 220), TORCH_EXTENSIONS_DIR (default: a fresh temporary directory,
# so stale builds or locks from an earlier run cannot interfere).
set -u

cd "$(dirname "$0")/../.." || exit 2
PY="${PYTHON:-python3}"
PER_OP_TIMEOUT="${PER_OP_TIMEOUT:-220}"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
if [ -z "${TORCH_EXTENSIONS_DIR:-}" ]; then
    TORCH_EXTENSIONS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ds_gpu_ext.XXXXXX")" || exit 2
    export TORCH_EXTENSIONS_DIR
fi
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ds_gpu_logs.XXXXXX")" || exit 2

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
# ---- BEGIN hybrid engine (transformer_inference kernels + 1.3B OPT decode timing) ----
# Kernel check against the torch references, then (a) the HE decode path vs (c) HF generate on an
# OPT-1.3B config in fp16, with the fraction of the memory-bandwidth bound per decode step (JSON line).
timeout --kill-after=10 "$PER_OP_TIMEOUT" "$PY" -m deepspeed.ops.transformer.inference.gpu_check --bench \
    >"$LOG_DIR/hybrid_engine.log" 2>&1 || failed=1
grep -E '^(transformer_inference: |\{)' "$LOG_DIR/hybrid_engine.log" || {
    echo "hybrid_engine: FAIL no verdict"; failed=1; tail -n 40 "$LOG_DIR/hybrid_engine.log" >&2; }
# ---- END hybrid engine ----
exit "$failed"

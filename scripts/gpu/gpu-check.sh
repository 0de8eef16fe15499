#!/usr/bin/env bash
# gpu-check.sh: the one run on the GPU machine (see `make gpu-check`).
#
# It takes the prebuilt bin/infergate (cgo, x86-64) and models/use-lite from
# the working tree, finds the jax CUDA 13 PJRT plugin and the CUDA libraries
# pip installed next to it, and then, each step with its own time limit and
# log, continuing past failures, most important first:
#   1. golden-vector self-test of USE-Lite on the XLA backend (the GPU)
#   2. the engine on the GPU with dynamic batching: bench sweep over
#      concurrency, NVML gauges scraped from /metrics under load, one
#      point with texts of mixed lengths, and requests of several texts
#   3. the same engine unbatched (max_batch_size 1): bench sweep
#   4. the in-process ceiling (the runtime alone at the same batch sizes)
#   5. PyTorch baseline: a BERT-shaped encoder, measured at fixed shapes and
#      exported to ONNX
#   6. that ONNX export in our runtime at the same shapes (in-process), then
#      served by the engine over HTTP
# Everything lands under $OUT, with summary.md on top.
#
# DRY_RUN=1 runs the discovery for real and prints every command instead of
# running it, so the script can be checked on a machine without a GPU.
# Knobs (environment), besides lib.sh's: CONCURRENCY MIXED_CONCURRENCY
# INPUTS INPUTS_CONCURRENCY UNBATCHED_CONCURRENCY ONNX_CONCURRENCY
# EXTRA_QUEUE_DELAYS BATCH_SIZES WINDOW WARMUP MAX_WINDOWS CEIL_WINDOW
# SKIP_STEPS (e.g. selftest-tf32,ceiling-onnx); XLA_OPTIONS=memory_fraction=0.5
# passes backend options to the engine.
set -u -o pipefail

CONCURRENCY=${CONCURRENCY:-1,8,32,64,128,256}
ONNX_CONCURRENCY=${ONNX_CONCURRENCY:-1,32,256}
# Unbatched throughput is flat once every worker is busy (c >= 8), so its
# sweep may stop short of the dynamic one's.
UNBATCHED_CONCURRENCY=${UNBATCHED_CONCURRENCY:-$CONCURRENCY}
MIXED_CONCURRENCY=${MIXED_CONCURRENCY:-256}
# Requests of INPUTS texts each (an OpenAI embeddings call with a list), at
# INPUTS_CONCURRENCY: what the engine reaches when HTTP and JSON are paid
# once per several items, as the in-process ceiling pays them not at all.
INPUTS=${INPUTS:-8}
INPUTS_CONCURRENCY=${INPUTS_CONCURRENCY:-32,128}
# Other max_queue_delay values (QUEUE_DELAY is the dynamic engine's) to
# sweep after it (comma-separated, e.g. 0s,500us), each in its own engine.
EXTRA_QUEUE_DELAYS=${EXTRA_QUEUE_DELAYS:-}
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64,128,256}
# A bench point is a warm-up plus 3..MAX_WINDOWS windows (it stops once the
# last three agree), so a 6-point sweep costs 6 x (WARMUP + 3..4 WINDOW).
WINDOW=${WINDOW:-2s}
WARMUP=${WARMUP:-1s}
MAX_WINDOWS=${MAX_WINDOWS:-4}
CEIL_WINDOW=${CEIL_WINDOW:-1s}

# shellcheck source=scripts/gpu/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# bench_sweep NAME MODEL [CONCURRENCY]: closed-loop sweep against the engine.
bench_sweep() {
  step "$1" 150 "$BIN" bench --url "$URL" --model "$2" --concurrency "${3:-$CONCURRENCY}" \
    --duration "$WINDOW" --warmup "$WARMUP" --max-windows "$MAX_WINDOWS" --json "$OUT/$1.json" --csv "$OUT/$1.csv"
}

# -- the run ---------------------------------------------------------------

log "gpu-check in $ROOT, results in $OUT$([[ $DRY_RUN == 1 ]] && echo ' (dry run: discovery only, commands printed)')"
prepare

if ((XLA_OK != 0)) && [[ $DRY_RUN != 1 ]]; then
  log "XLA prerequisites missing: the engine steps will fail; running them anyway for their error logs"
fi

if ((INPUTS_OK == 0)) || [[ $DRY_RUN == 1 ]]; then
  # 1. Golden vectors on the GPU.
  write_config "$OUT/engine-use-lite.yaml" "$MAX_BATCH" use-lite
  step selftest 120 "$BIN" selftest -c "$OUT/engine-use-lite.yaml" --model use-lite --json "$OUT/selftest.json"
  if [[ $PRECISION == fp32 ]]; then
    # What XLA's default precision costs in accuracy, for the record.
    step selftest-tf32 120 env -u NVIDIA_TF32_OVERRIDE XLA_FLAGS="${XLA_FLAGS/--xla_gpu_enable_triton_gemm=false/}" \
      "$BIN" selftest -c "$OUT/engine-use-lite.yaml" --model use-lite --tolerance 1e-3 --json "$OUT/selftest-tf32.json"
  fi

  # 2. Dynamic batching on the GPU, with NVML read under load.
  if start_engine dynamic "$OUT/engine-use-lite.yaml"; then
    start_sampler "$OUT/gpu-metrics-under-load.txt"
    bench_sweep bench-dynamic use-lite
    stop_sampler
    # Texts of mixed lengths (docs/bench/mixed-lengths.txt) at one load:
    # what padding a batch to its longest text costs on the GPU, where a
    # batch runs whole (on SimpleGo it is split by length: BENCHMARKS.md).
    step bench-mixed 150 "$BIN" bench --url "$URL" --model use-lite --texts "$ROOT/docs/bench/mixed-lengths.txt" \
      --concurrency "$MIXED_CONCURRENCY" --duration "$WINDOW" --warmup "$WARMUP" --max-windows "$MAX_WINDOWS" \
      --json "$OUT/bench-mixed.json" --csv "$OUT/bench-mixed.csv"
    step bench-inputs 150 "$BIN" bench --url "$URL" --model use-lite --inputs "$INPUTS" \
      --concurrency "$INPUTS_CONCURRENCY" --duration "$WINDOW" --warmup "$WARMUP" --max-windows "$MAX_WINDOWS" \
      --json "$OUT/bench-inputs.json" --csv "$OUT/bench-inputs.csv"
    if [[ $DRY_RUN != 1 ]]; then
      fetch "$URL/metrics" >"$OUT/metrics-after-dynamic.txt" 2>&1
      n=$(grep -c '^infergate_gpu_' "$OUT/metrics-after-dynamic.txt")
      if ((n > 0)); then record nvml-gauges ok 0 "$n infergate_gpu_ series on /metrics"
      else record nvml-gauges FAIL 0 "no infergate_gpu_ series on /metrics"; fi
    fi
    stop_engine
  fi
  # Other queue delays, each its own engine and sweep (bench-dynamic-delay-D).
  for delay in ${EXTRA_QUEUE_DELAYS//,/ }; do
    QUEUE_DELAY=$delay write_config "$OUT/engine-delay-$delay.yaml" "$MAX_BATCH" use-lite
    if start_engine "delay-$delay" "$OUT/engine-delay-$delay.yaml"; then
      bench_sweep "bench-dynamic-delay-$delay" use-lite
      stop_engine
    fi
  done

  # 3. Unbatched: one item per batch, everything else the same.
  write_config "$OUT/engine-unbatched.yaml" 1 use-lite
  if start_engine unbatched "$OUT/engine-unbatched.yaml"; then
    bench_sweep bench-unbatched use-lite "$UNBATCHED_CONCURRENCY"
    stop_engine
  fi

  # 4. The ceiling: the runtime alone, in-process, at the same batch sizes.
  step ceiling 120 "$BIN" bench --in-process -c "$OUT/engine-use-lite.yaml" --model use-lite \
    --batch-sizes "$BATCH_SIZES" --duration "$CEIL_WINDOW" --max-windows "$MAX_WINDOWS" \
    --json "$OUT/ceiling.json" --csv "$OUT/ceiling.csv"
else
  log "skip USE-Lite steps: inputs missing (see above)"
  record engine skipped 0 "binary or model missing"
fi

# 5. PyTorch, on the same GPU, with the library path it was installed with.
TORCH_DIR=$OUT/torch
mkdir -p "$TORCH_DIR"
LD_LIBRARY_PATH=$TORCH_LD_LIBRARY_PATH step torch-bench 150 env -u NVIDIA_TF32_OVERRIDE "$PY" scripts/gpu/torch_bench.py --out "$TORCH_DIR" \
  --batch-sizes "$BATCH_SIZES" --seq-len "$SEQ_LEN" --window 1.5
ONNX_DIR=""
if [[ -f $TORCH_DIR/encoder.onnx && -f $TORCH_DIR/tokenizer.json ]] || [[ $DRY_RUN == 1 ]]; then ONNX_DIR=$TORCH_DIR
else log "skip ONNX steps: no ONNX export from PyTorch"; fi

# 6. The same network in our runtime: in-process at PyTorch's exact shapes,
# then served over HTTP.
if [[ -n $ONNX_DIR ]] && [[ -x $BIN || $DRY_RUN == 1 ]]; then
  write_config "$OUT/engine-onnx.yaml" "$MAX_BATCH" bert-onnx
  # One worker: PyTorch runs one synchronised batch at a time.
  step ceiling-onnx 150 "$BIN" bench --in-process -c "$OUT/engine-onnx.yaml" --model bert-onnx --workers 1 \
    --batch-sizes "$BATCH_SIZES" --tokens "$SEQ_LEN" --duration "$CEIL_WINDOW" --max-windows "$MAX_WINDOWS" \
    --json "$OUT/ceiling-onnx.json" --csv "$OUT/ceiling-onnx.csv"
  if start_engine onnx "$OUT/engine-onnx.yaml"; then
    bench_sweep bench-onnx-dynamic bert-onnx "$ONNX_CONCURRENCY"
    stop_engine
  fi
fi

# -- summary ---------------------------------------------------------------

printf '%s\n' "${STEPS[@]}" >"$OUT/steps.txt"
"$PY" scripts/gpu/summarize.py "$OUT" >"$OUT/summary.md" 2>"$OUT/logs/summarize.log" ||
  log "warn summary: $(tail -n1 "$OUT/logs/summarize.log")"
log "done in $(elapsed)s: $OUT/summary.md"
grep -q '|FAIL|' "$OUT/steps.txt" && exit 1
exit 0

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
# Knobs (environment): OUT BIN MODEL_DIR PORT CONCURRENCY MIXED_CONCURRENCY INPUTS INPUTS_CONCURRENCY
# UNBATCHED_CONCURRENCY ONNX_CONCURRENCY
# QUEUE_DELAY EXTRA_QUEUE_DELAYS XLA_OPTIONS (e.g. memory_fraction=0.5)
# BATCH_SIZES WINDOW
# WARMUP MAX_WINDOWS CEIL_WINDOW SEQ_LEN SKIP_STEPS (e.g. selftest-tf32,ceiling-onnx) WORKERS MAX_BATCH BUDGET_S ENGINE_BACKEND
# XLA_EXTRA_FLAGS READY_TIMEOUT PYTHON.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1

DRY_RUN=${DRY_RUN:-0}
if [[ -z ${OUT:-} ]]; then
  if [[ $DRY_RUN == 1 ]]; then OUT=$(mktemp -d /tmp/gpu-check.XXXXXX); else
    echo "gpu-check: set OUT to the folder for results" >&2; exit 2; fi
fi
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)  # engine configs written below name files in it
BIN=${BIN:-bin/infergate}
MODEL_DIR=${MODEL_DIR:-models/use-lite}
PORT=${PORT:-18080}
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
# The dynamic engine's max_queue_delay, and others to sweep after it
# (comma-separated, e.g. 0s,500us), each in an engine of its own.
QUEUE_DELAY=${QUEUE_DELAY:-2ms}
EXTRA_QUEUE_DELAYS=${EXTRA_QUEUE_DELAYS:-}
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64,128,256}
# A bench point is a warm-up plus 3..MAX_WINDOWS windows (it stops once the
# last three agree), so a 6-point sweep costs 6 x (WARMUP + 3..4 WINDOW).
WINDOW=${WINDOW:-2s}
WARMUP=${WARMUP:-1s}
MAX_WINDOWS=${MAX_WINDOWS:-4}
CEIL_WINDOW=${CEIL_WINDOW:-1s}
SEQ_LEN=${SEQ_LEN:-32}
WORKERS=${WORKERS:-2}
# The encoders' largest batch bucket; larger batches would run in chunks.
MAX_BATCH=${MAX_BATCH:-128}
# Autotuning makes XLA's GPU compiles several times slower and every engine
# start compiles its shape buckets; off, XLA picks GEMMs by cuBLAS's own
# heuristics, as PyTorch does. XLA_EXTRA_FLAGS= (empty) turns it back on.
XLA_EXTRA_FLAGS=${XLA_EXTRA_FLAGS---xla_gpu_autotune_level=0}
# fp32 (default): the engine runs strict fp32 matrix products, as PyTorch's
# fp32 rows do (TF32 off in cuBLAS, no Triton GEMMs, which use TF32); tf32:
# XLA's default, faster on Hopper and about 3e-4 off the golden vectors.
PRECISION=${PRECISION:-fp32}
# No step starts once this many seconds have passed; the device allows 8
# minutes for the whole run, start-up and copies included.
BUDGET_S=${BUDGET_S:-430}
URL="http://127.0.0.1:$PORT"
START=$(date +%s)
STEPS=()          # "name|status|seconds|note", for summary.md
ENGINE_PID=""
SAMPLER_PID=""

log() { printf '[gpu-check %3ss] %s\n' "$(($(date +%s) - START))" "$*" | tee -a "$OUT/gpu-check.log" >&2; }
elapsed() { echo $(($(date +%s) - START)); }
record() { STEPS+=("$1|$2|$3|${4:-}"); }
# found/missing NAME MSG: a discovery outcome, logged and kept for summary.md.
found() { log "ok   $1: $2"; record "$1" ok 0 "$2"; }
missing() { log "FAIL $1: $2"; record "$1" FAIL 0 "$2"; }

# -- discovery: everything comes from what is installed, nothing hard-coded --

PY=${PYTHON:-python3}
PJRT_DIR="" PJRT_PLUGIN="" NV_LIBS="" CUDA_DATA_DIR="" PTXAS_DIR=""

discover_plugin() {
  local out
  if ! out=$("$PY" -c 'import jax_plugins.xla_cuda13 as p, os; print(os.path.dirname(p.__file__))' 2>&1); then
    missing plugin "python package jax_plugins.xla_cuda13 (jax-cuda13-pjrt) not importable with $PY: $(tail -n1 <<<"$out")"
    return 1
  fi
  PJRT_DIR=$out
  # go-xla only finds plugins named pjrt_c_api_*_plugin.so by search, and
  # jax ships xla_cuda_plugin.so, so the engine gets the absolute path.
  PJRT_PLUGIN=$(find "$PJRT_DIR" -maxdepth 1 -name '*.so' -name '*plugin*' | sort | head -n1)
  if [[ -z $PJRT_PLUGIN ]]; then
    missing plugin "no *plugin*.so in $PJRT_DIR"
    return 1
  fi
  found plugin "$PJRT_PLUGIN"
}

# nvidia_roots prints the folders of pip's `nvidia` namespace package.
nvidia_roots() {
  "$PY" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null
}

discover_cuda_libs() {
  local roots dirs
  roots=$(nvidia_roots)
  if [[ -z $roots ]]; then
    missing cuda-libs "python package 'nvidia' (pip's CUDA libraries) not importable with $PY"
    return 1
  fi
  # CUDA 13 wheels share nvidia/cu13/lib; put it before other CUDA majors
  # (torch may bring its own) so a soname present twice resolves to 13.
  dirs=$(while read -r r; do find "$r" -mindepth 1 -maxdepth 3 -type d -name lib; done <<<"$roots" |
    awk '{print (index($0, "/cu13/") ? 0 : 1) "\t" $0}' | sort -s -k1,1n | cut -f2-)
  if [[ -z $dirs ]]; then
    missing cuda-libs "no lib/ folder under $(tr '\n' ' ' <<<"$roots")"
    return 1
  fi
  NV_LIBS=$(paste -sd: <<<"$dirs")
  found cuda-libs "$(wc -l <<<"$dirs") folders, first $(head -n1 <<<"$dirs")"
}

discover_cuda_data_dir() {
  local roots bc
  roots=$(nvidia_roots)
  # XLA wants the folder that holds nvvm/libdevice/libdevice*.bc.
  bc=$( { [[ -n $roots ]] && while read -r r; do find "$r" -path '*/nvvm/libdevice/libdevice*.bc'; done <<<"$roots"
          find /usr/local -maxdepth 5 -path '*/nvvm/libdevice/libdevice*.bc' 2>/dev/null; } |
        awk '{print (index($0, "/cu13/") ? 0 : 1) "\t" $0}' | sort -s -k1,1n | cut -f2- | head -n1)
  if [[ -z $bc ]]; then
    missing cuda-data-dir "no nvvm/libdevice/libdevice*.bc under pip's nvidia packages or /usr/local"
    return 1
  fi
  CUDA_DATA_DIR=$(dirname "$(dirname "$(dirname "$bc")")")
  found cuda-data-dir "$CUDA_DATA_DIR"
  local ptxas
  ptxas=$( { [[ -n $roots ]] && while read -r r; do find "$r" -name ptxas -type f; done <<<"$roots"; } | head -n1)
  if [[ -n $ptxas ]]; then PTXAS_DIR=$(dirname "$ptxas"); log "ok   ptxas: $ptxas"
  else log "warn ptxas: not found in pip's nvidia packages; XLA falls back to PATH"; fi
}

check_inputs() {
  local ok=0 err
  # The device copy of the tree is capped (64 MiB with the model), so the
  # binary may travel gzipped.
  if [[ ! -x $BIN && -f $BIN.gz ]]; then
    local unpacked
    unpacked=$(mktemp -d)/infergate
    if gunzip -c "$BIN.gz" >"$unpacked" && chmod +x "$unpacked"; then
      log "ok   unpacked $BIN.gz to $unpacked"; BIN=$unpacked
    fi
  fi
  if [[ ! -x $BIN ]]; then missing binary "$BIN missing or not executable (run \`make gpu-check\` where Go is)"; ok=1
  elif ! err=$("$BIN" version 2>&1); then
    # A glibc older than the build machine's shows up here.
    missing binary "$BIN does not run here: $(tail -n1 <<<"$err")"; ok=1
  else log "ok   binary: $BIN ($(file -b "$BIN" 2>/dev/null | cut -d, -f1-2))"; fi
  if [[ ! -f $MODEL_DIR/model.json ]]; then missing model "$MODEL_DIR/model.json missing (run \`make model\`)"; ok=1
  else log "ok   model: $MODEL_DIR"; fi
  return $ok
}

record_machine() {
  { date -u; uname -a; ldd --version 2>&1 | head -n1; nproc; free -g | head -n2; } >"$OUT/machine.txt" 2>&1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || log "warn nvidia-smi failed, see nvidia-smi.txt"
    nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version,power.limit,clocks.max.sm --format=csv \
      >"$OUT/nvidia-smi.csv" 2>&1
    found nvidia-smi "$(sed -n 2p "$OUT/nvidia-smi.csv")"
  else
    missing nvidia-smi "not on PATH (no NVIDIA driver on this machine)"
  fi
  [[ -x $BIN ]] && { ldd "$BIN" >"$OUT/logs/ldd.txt" 2>&1; "$BIN" version >>"$OUT/machine.txt" 2>&1; }
}

# -- running steps ---------------------------------------------------------

# unwanted NAME: true (and recorded) when SKIP_STEPS names the step.
unwanted() {
  [[ ,${SKIP_STEPS:-}, == *,"$1",* ]] || return 1
  log "skip $1: in SKIP_STEPS"; record "$1" skipped 0 "SKIP_STEPS"
}

# step NAME LIMIT_S CMD...: runs CMD with its own log and time limit, never
# past the budget; records the outcome and returns CMD's status.
step() {
  local name=$1 limit=$2 rc t0 left
  shift 2
  unwanted "$name" && return 1
  left=$((BUDGET_S - $(elapsed)))
  if ((left < 10)); then log "skip $name: out of time"; record "$name" skipped 0 "out of time"; return 1; fi
  ((limit > left + 30)) && limit=$((left + 30))
  if [[ $DRY_RUN == 1 ]]; then
    log "DRY  $name (limit ${limit}s): $*"
    record "$name" dry-run 0 "$*"
    return 0
  fi
  log "run  $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0)) note=""
  ((rc == 124 || rc == 137)) && note="timed out after ${limit}s"
  ((rc != 0)) && [[ -z $note ]] && note="exit $rc: $(tail -n1 "$OUT/logs/$name.log" | cut -c1-160)"
  if ((rc == 0)); then log "ok   $name (${took}s)"; record "$name" ok "$took"
  else log "FAIL $name (${took}s): $note"; record "$name" FAIL "$took" "$note"; fi
  return $rc
}

fetch() {
  if command -v curl >/dev/null; then curl -fsS --max-time 5 "$1"
  else "$PY" -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; fi
}

# write_config FILE MAX_BATCH MODEL...: the engine's YAML for one run,
# serving use-lite and/or bert-onnx (PyTorch's export in $ONNX_DIR).
write_config() {
  local file=$1 max_batch=$2 m
  shift 2
  cat >"$file" <<YAML
log:
  level: info
engine:
  listen: 127.0.0.1:$PORT
  backend: "$ENGINE_BACKEND"
  models:
YAML
  for m in "$@"; do
    printf '    - name: %s\n' "$m"
    if [[ $m == use-lite ]]; then printf '      kind: use-lite\n      path: %s\n' "$MODEL_DIR"
    else printf '      kind: onnx\n      path: %s\n' "$ONNX_DIR/encoder.onnx"; fi
    cat <<YAML
      max_batch_size: $max_batch
      max_batch_tokens: $((max_batch * 512))
      max_queue_delay: ${QUEUE_DELAY:-2ms}
      queue_size: 4096
      workers: $WORKERS
YAML
    if [[ $m == bert-onnx ]]; then cat <<YAML
      onnx:
        tokenizer: $ONNX_DIR/tokenizer.json
        pooling: mean
        max_tokens: $SEQ_LEN
YAML
    fi
  done >>"$file"
}

# start_engine TAG CONFIG: starts the engine in the background and waits
# until it says it is ready (models loaded, shape buckets compiled).
start_engine() {
  local tag=$1 cfg=$2 limit=${READY_TIMEOUT:-240} t0
  unwanted "engine-$tag" && return 1
  if [[ $DRY_RUN == 1 ]]; then
    log "DRY  engine-$tag: $BIN engine -c $cfg, then wait for $URL/v2/health/ready"
    record "engine-$tag" dry-run 0 "$BIN engine -c $cfg"
    return 0
  fi
  t0=$(date +%s)
  "$BIN" engine -c "$cfg" >"$OUT/logs/engine-$tag.log" 2>&1 &
  ENGINE_PID=$!
  while (($(date +%s) - t0 < limit)) && (($(elapsed) < BUDGET_S)); do
    if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
      wait "$ENGINE_PID"; local rc=$?
      ENGINE_PID=""
      log "FAIL engine-$tag exited ($rc) before ready: $(tail -n1 "$OUT/logs/engine-$tag.log" | cut -c1-200)"
      record "engine-$tag" FAIL $(($(date +%s) - t0)) "exited $rc before ready"
      return 1
    fi
    if fetch "$URL/v2/health/ready" >/dev/null 2>&1; then
      log "ok   engine-$tag ready in $(($(date +%s) - t0))s"
      record "engine-$tag" ok $(($(date +%s) - t0)) "ready (warm-up compile included)"
      return 0
    fi
    sleep 1
  done
  log "FAIL engine-$tag not ready after $(($(date +%s) - t0))s"
  record "engine-$tag" FAIL $(($(date +%s) - t0)) "not ready in time"
  stop_engine
  return 1
}

stop_engine() {
  [[ -z $ENGINE_PID ]] && return 0
  kill -TERM "$ENGINE_PID" 2>/dev/null
  for _ in $(seq 15); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 1; done
  kill -KILL "$ENGINE_PID" 2>/dev/null
  wait "$ENGINE_PID" 2>/dev/null
  ENGINE_PID=""
}

# start_sampler FILE: the engine's NVML gauges every 2 s while a bench
# runs, next to nvidia-smi's reading of the same counters.
start_sampler() {
  [[ $DRY_RUN == 1 ]] && return 0
  (while :; do
    echo "# t=$(($(date +%s) - START))s"
    fetch "$URL/metrics" 2>&1 | grep '^infergate_gpu_'
    command -v nvidia-smi >/dev/null && nvidia-smi --format=csv,noheader \
      --query-gpu=index,utilization.gpu,memory.used,power.draw,temperature.gpu,clocks.sm | sed 's/^/# nvidia-smi: /'
    sleep 2
  done) >"$1" 2>&1 &
  SAMPLER_PID=$!
}

stop_sampler() {
  [[ -z $SAMPLER_PID ]] && return 0
  kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null
  SAMPLER_PID=""
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { stop_sampler; stop_engine; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# bench_sweep NAME MODEL [CONCURRENCY]: closed-loop sweep against the engine.
bench_sweep() {
  step "$1" 150 "$BIN" bench --url "$URL" --model "$2" --concurrency "${3:-$CONCURRENCY}" \
    --duration "$WINDOW" --warmup "$WARMUP" --max-windows "$MAX_WINDOWS" --json "$OUT/$1.json" --csv "$OUT/$1.csv"
}

# -- the run ---------------------------------------------------------------

log "gpu-check in $ROOT, results in $OUT$([[ $DRY_RUN == 1 ]] && echo ' (dry run: discovery only, commands printed)')"
check_inputs
INPUTS_OK=$?
record_machine
XLA_OK=0
discover_plugin || XLA_OK=1
discover_cuda_libs || XLA_OK=1
discover_cuda_data_dir || XLA_OK=1

# PyTorch runs as installed; only the engine gets the paths found above.
TORCH_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
export GOMLX_NO_AUTO_INSTALL=1
# go-xla's CUDA check would otherwise try to point XLA at its own install
# folder; our XLA_FLAGS already names the one found above.
export GOPJRT_CUDA_CHECKS=0
if [[ -n $PJRT_PLUGIN ]]; then
  ENGINE_BACKEND=${ENGINE_BACKEND:-xla:$PJRT_PLUGIN${XLA_OPTIONS:+,$XLA_OPTIONS}}
  export GOMLX_BACKEND=xla:$PJRT_PLUGIN
  export PJRT_PLUGIN_LIBRARY_PATH=$PJRT_DIR
else
  ENGINE_BACKEND=${ENGINE_BACKEND:-xla:cuda}
fi
[[ -n $NV_LIBS ]] && export LD_LIBRARY_PATH=$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[[ -n $CUDA_DATA_DIR ]] && export XLA_FLAGS="--xla_gpu_cuda_data_dir=$CUDA_DATA_DIR${XLA_FLAGS:+ $XLA_FLAGS}"
[[ -n $XLA_EXTRA_FLAGS ]] && export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$XLA_EXTRA_FLAGS"
[[ -n $PTXAS_DIR ]] && export PATH=$PTXAS_DIR:$PATH
if [[ $PRECISION == fp32 ]]; then
  export NVIDIA_TF32_OVERRIDE=0
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_triton_gemm=false"
fi
env | grep -E '^(GOMLX_|GOPJRT_|PJRT_|XLA_FLAGS|NVIDIA_TF32|LD_LIBRARY_PATH|PATH=)' | sort >"$OUT/env.txt"

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

# lib.sh: what the GPU scripts share (sourced by gpu-check.sh and
# profile.sh): the knobs every run has, finding the jax CUDA 13 PJRT plugin
# and the CUDA libraries beside it, steps with their own time limits and
# logs, and starting, stopping and sampling the engine. A script sets its
# own knobs, then sources this file, then calls prepare.
# Common knobs: OUT BIN MODEL_DIR PORT DRY_RUN WORKERS MAX_BATCH QUEUE_DELAY
# SEQ_LEN XLA_OPTIONS XLA_EXTRA_FLAGS PRECISION BUDGET_S ENGINE_BACKEND
# ENGINE_FLAGS READY_TIMEOUT PYTHON.
# shellcheck shell=bash
set -u -o pipefail
SCRIPT=${SCRIPT:-$(basename "$0" .sh)}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1

DRY_RUN=${DRY_RUN:-0}
if [[ -z ${OUT:-} ]]; then
  if [[ $DRY_RUN == 1 ]]; then OUT=$(mktemp -d "/tmp/$SCRIPT.XXXXXX"); else
    echo "$SCRIPT: set OUT to the folder for results" >&2; exit 2; fi
fi
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)  # engine configs written below name files in it
BIN=${BIN:-bin/infergate}
MODEL_DIR=${MODEL_DIR:-models/use-lite}
PORT=${PORT:-18080}
WORKERS=${WORKERS:-2}
# The encoders' largest batch bucket; larger batches would run in chunks.
MAX_BATCH=${MAX_BATCH:-128}
QUEUE_DELAY=${QUEUE_DELAY:-2ms}
SEQ_LEN=${SEQ_LEN:-32}
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

log() { printf '[%s %3ss] %s\n' "$SCRIPT" "$(($(date +%s) - START))" "$*" | tee -a "$OUT/$SCRIPT.log" >&2; }
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
    log "DRY  engine-$tag: $BIN engine -c $cfg ${ENGINE_FLAGS:-}, then wait for $URL/v2/health/ready"
    record "engine-$tag" dry-run 0 "$BIN engine -c $cfg"
    return 0
  fi
  t0=$(date +%s)
  # shellcheck disable=SC2086 # ENGINE_FLAGS is a list of flags
  "$BIN" engine -c "$cfg" ${ENGINE_FLAGS:-} >"$OUT/logs/engine-$tag.log" 2>&1 &
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

# prepare checks the inputs, records the machine, finds the plugin and the
# CUDA libraries and exports what the engine needs to use them. INPUTS_OK
# and XLA_OK are 0 when all was found.
# shellcheck disable=SC2034 # INPUTS_OK, XLA_OK and TORCH_LD_LIBRARY_PATH are the caller's
prepare() {
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
}

#!/usr/bin/env bash
# profile.sh: where the engine's time goes on the GPU, next to the
# in-process ceiling it is compared with (BENCHMARKS.md § GPU). Run it as
# gpu-check.sh is run, after `make gpu-check`.
#
# For each worker count in WORKERS_LIST, one engine (one text per request):
#   - closed-loop points at PROFILE_CONCURRENCY, with encoding_format float
#     (bench's default) and base64 (the OpenAI clients' default);
#   - EXTRA_POINTS, each INPUTSxCONCURRENCY[:FORMAT] (e.g. 8x128:base64, a
#     request of 8 texts from each of 128 clients; FORMAT defaults to float);
#   - at PROFILE_AT in PROFILE_FORMAT, again, while the engine's Go CPU
#     profile and execution trace (--pprof) are taken, its CPU time is read
#     from /proc and the GPU's utilisation is sampled.
# Then the in-process ceiling at CEIL_BATCHES for each worker count, the
# GPU sampled as it runs. Results, profiles included, land under $OUT.
#
# Knobs (environment), besides lib.sh's: WORKERS_LIST PROFILE_CONCURRENCY
# EXTRA_POINTS PROFILE_AT PROFILE_FORMAT CEIL_BATCHES PPROF_PORT.
set -u -o pipefail

WORKERS_LIST=${WORKERS_LIST:-2,4}
PROFILE_CONCURRENCY=${PROFILE_CONCURRENCY:-256,1024}
EXTRA_POINTS=${EXTRA_POINTS:-}
PROFILE_AT=${PROFILE_AT:-1024}
PROFILE_FORMAT=${PROFILE_FORMAT:-float}
CEIL_BATCHES=${CEIL_BATCHES:-128}
PPROF_PORT=${PPROF_PORT:-16060}
BUDGET_S=${BUDGET_S:-360}

# shellcheck source=scripts/gpu/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PPROF="http://127.0.0.1:$PPROF_PORT/debug/pprof"
ENGINE_FLAGS="--pprof 127.0.0.1:$PPROF_PORT${ENGINE_FLAGS:+ $ENGINE_FLAGS}"

# fetch_to URL FILE LIMIT_S: a long fetch (a profile lasts its seconds).
fetch_to() {
  if command -v curl >/dev/null; then curl -fsS --max-time "$3" -o "$2" "$1"
  else "$PY" -c 'import sys,urllib.request; open(sys.argv[2],"wb").write(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[3])).read())' "$1" "$2" "$3"; fi
}

# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# point NAME CONCURRENCY [BENCH FLAGS...]: one closed-loop point.
point() {
  local name=$1 c=$2
  shift 2
  step "$name" 60 "$BIN" bench --url "$URL" --model use-lite --concurrency "$c" "$@" \
    --warmup 1s --duration 2s --max-windows 4 --json "$OUT/$name.json" --csv "$OUT/$name.csv"
}

# profiled_point TAG: PROFILE_AT again, with the CPU profile from its 3rd to
# 7th second, then 0.3 s of execution trace, the engine's CPU use over the
# whole point and the GPU sampled every 2 s.
profiled_point() {
  local tag=$1 t0 c0 c1 t1 hz
  [[ $DRY_RUN == 1 ]] && { log "DRY  profile-$tag: $PPROF/profile and /trace during bench at c=$PROFILE_AT"; return 0; }
  (sleep 3
   fetch_to "$PPROF/profile?seconds=4" "$OUT/cpu-$tag.pprof" 20
   fetch_to "$PPROF/trace?seconds=0.3" "$OUT/trace-$tag.out" 20) >"$OUT/logs/pprof-$tag.log" 2>&1 &
  local grab=$!
  start_sampler "$OUT/gpu-$tag.txt"
  t0=$(date +%s.%N); c0=$(cpu_ticks "$ENGINE_PID")
  point "bench-$tag-profiled" "$PROFILE_AT" --encoding-format "$PROFILE_FORMAT"
  c1=$(cpu_ticks "$ENGINE_PID"); t1=$(date +%s.%N)
  stop_sampler
  if wait "$grab" && [[ -s $OUT/cpu-$tag.pprof && -s $OUT/trace-$tag.out ]]; then record "pprof-$tag" ok 0
  else record "pprof-$tag" FAIL 0 "profile or trace not fetched: see logs/pprof-$tag.log"; fi
  hz=$(getconf CLK_TCK)
  awk -v c="$((c1 - c0))" -v hz="$hz" -v a="$t0" -v b="$t1" -v tag="$tag" \
    'BEGIN {printf "%s: engine used %.2f CPUs over %.1f s\n", tag, c / hz / (b - a), b - a}' | tee -a "$OUT/engine-cpu.txt"
}

log "profile in $ROOT, results in $OUT"
prepare
((INPUTS_OK == 0)) || { log "inputs missing: nothing to profile"; exit 1; }

for w in ${WORKERS_LIST//,/ }; do
  WORKERS=$w write_config "$OUT/engine-w$w.yaml" "$MAX_BATCH" use-lite
  start_engine "w$w" "$OUT/engine-w$w.yaml" || continue
  for c in ${PROFILE_CONCURRENCY//,/ }; do
    point "bench-w$w-c$c-float" "$c"
    point "bench-w$w-c$c-base64" "$c" --encoding-format base64
  done
  for p in $EXTRA_POINTS; do
    inputs=${p%%x*} rest=${p#*x} format=float
    [[ $rest == *:* ]] && format=${rest#*:}
    point "bench-w$w-i$inputs-c${rest%%:*}-$format" "${rest%%:*}" --inputs "$inputs" --encoding-format "$format"
  done
  profiled_point "w$w"
  fetch "$URL/metrics" >"$OUT/metrics-w$w.txt" 2>&1
  stop_engine
done

for w in ${WORKERS_LIST//,/ }; do
  start_sampler "$OUT/gpu-ceiling-w$w.txt"
  step "ceiling-w$w" 90 "$BIN" bench --in-process -c "$OUT/engine-w$w.yaml" --model use-lite --workers "$w" \
    --batch-sizes "$CEIL_BATCHES" --duration 1s --max-windows 4 --json "$OUT/ceiling-w$w.json" --csv "$OUT/ceiling-w$w.csv"
  stop_sampler
done

printf '%s\n' "${STEPS[@]}" >"$OUT/steps.txt"
{
  echo "# engine profile on the GPU"; echo
  for f in "$OUT"/bench-*.csv "$OUT"/ceiling-*.csv; do
    [[ -f $f ]] || continue
    "$PY" -c 'import csv,sys
for r in csv.DictReader(open(sys.argv[1])):
    print("%-28s c=%-5s b=%-4s %10s items/s  p99 %8s ms  mean batch %6s  queue %6s ms  batch %6s ms" % (
        sys.argv[1].rsplit("/", 1)[-1][:-4], r["concurrency"], r["batch_size"], r["throughput"], r["p99_ms"],
        r["mean_batch"], r.get("engine_queue_ms", ""), r.get("engine_batch_ms", "")))' "$f"
  done
  echo; cat "$OUT/engine-cpu.txt" 2>/dev/null
  for f in "$OUT"/gpu-*.txt; do
    [[ -f $f ]] || continue
    echo; echo "${f##*/}, nvidia-smi (index, util, memory, power, temp, SM clock):"
    grep '^# nvidia-smi' "$f" | tail -n 4
  done
  echo; cat "$OUT/steps.txt"
} >"$OUT/summary.md" 2>&1
log "done in $(elapsed)s: $OUT/summary.md"
grep -q '|FAIL|' "$OUT/steps.txt" && exit 1
exit 0

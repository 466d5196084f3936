#!/bin/bash
# On the GPU machine: where a LoRA training step's time goes, and the plugin's checks, in one call
# short enough for a small device budget. Takes the folder made by samples/bench_cuda/bundle.sh and,
# optionally, a folder holding an older libfinch-cuda.so to compare with; writes to $OUT:
#   a) test_plugin_parity and test_golden ARCH cuda for every golden architecture, side by side
#                                                                         -> parity.log, golden.log
#   b) finch bench train (--config $CONFIG, default llama8b-gc; --warmup 1 --steps $STEPS, default 2):
#      the older plugin as is                                              -> train_baseline.log
#      this plugin with FINCH_CUDA_PROFILE=1 (per-entry device and host time of the timed steps)
#                                                                          -> train_profile.log
#      the same with the earlier behaviour switched back on (FINCH_CUDA_LORA_F32=1: f32 adapter
#      factors through the tiled kernel; FINCH_CUDA_ATTENTION=sync: no cp.async prefetch)
#                                                                          -> train_profile_before.log
#      this plugin as is                                                   -> train.log
# RUNS picks and orders the runs (default "baseline profile before plain"). Each step is time-boxed
# and none starts past $BUDGET seconds (default 150) from the start.
# usage: bash samples/bench_cuda/profile_train.sh [BUNDLE_DIR] [BASELINE_PLUGIN_DIR]
set -u
bundle=$(cd "${1:-build/gpu-bundle}" && pwd)
baseline=${2:-}
[ -n "$baseline" ] && baseline=$(cd "$baseline" && pwd)
out=${OUT:-$PWD/gpu-out}
config=${CONFIG:-llama8b-gc}
steps=${STEPS:-2}
budget=${BUDGET:-150}
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$out/summary.txt"; }
left() { echo $(( start + budget - $(date +%s) )); }

. "$(dirname "$0")/bundle_env.sh"
export "${finch_env[@]:1}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/summary.txt" 2>&1

stamp "a) parity and goldens"
FINCH_PLUGIN_PATH="$bundle/bin" FINCH_PARITY_PLUGIN="$bundle/bin/libfinch-cuda.so" \
  timeout 90 "$bundle/bin/test_plugin_parity" > "$out/parity.log" 2>&1 &
parity=$!
for arch in llama mistral qwen2 qwen3 gemma gemma2 gemma3 phi3 falcon; do
  FINCH_PLUGIN_PATH="$bundle/bin" timeout 60 "$bundle/bin/test_golden" $arch cuda > "$out/golden_$arch.tmp" 2>&1 &
done
wait $parity
stamp "   parity exit $?: $(grep -E '^[0-9]+ passed' "$out/parity.log" | tail -1)"
grep -E "FAIL" "$out/parity.log" | head -20 | tee -a "$out/summary.txt"
wait
for arch in llama mistral qwen2 qwen3 gemma gemma2 gemma3 phi3 falcon; do
  { echo "== $arch"; cat "$out/golden_$arch.tmp"; } >> "$out/golden.log"
  stamp "   golden $arch: $(grep -E '^[0-9]+ passed' "$out/golden_$arch.tmp" | tail -1)"
  rm -f "$out/golden_$arch.tmp"
done

bench() { # log plugin_dir [VAR=value ...]
  local log=$1 dir=$2 t
  shift 2
  t=$(left)
  [ "$t" -gt 20 ] || { stamp "   $log: no time left"; return; }
  env FINCH_PLUGIN_PATH="$dir" "$@" timeout "$t" "$bundle/bin/finch" bench train --config "$config" --warmup 1 \
    --steps "$steps" > "$out/$log" 2>&1
  stamp "   $log ($*): exit $?: $(grep -o '"step_s": [0-9.]*, "tokens_per_s": [0-9.]*' "$out/$log")"
}
stamp "b) finch bench train --config $config"
for run in ${RUNS:-baseline profile before plain}; do
  case $run in
    baseline) [ -n "$baseline" ] && bench train_baseline.log "$baseline" ;;
    profile) bench train_profile.log "$bundle/bin" FINCH_CUDA_PROFILE=1 ;;
    before) bench train_profile_before.log "$bundle/bin" FINCH_CUDA_PROFILE=1 FINCH_CUDA_LORA_F32=1 FINCH_CUDA_ATTENTION=sync ;;
    plain) bench train.log "$bundle/bin" ;;
  esac
done
stamp "done"

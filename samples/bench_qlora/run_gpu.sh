#!/bin/bash
# On the GPU machine: the QLoRA checks and measurements of issue 5 in one call, everything written to
# $OUT (default ./gpu-out). Takes the folder made here by samples/bench_cuda/bundle.sh (built with
# bench_qlora and test_qlora). Each step is time-boxed and the whole script stops starting new steps
# after DEADLINE seconds (default 280; 560 for the longest contexts of g):
#   a) bench_qlora --mode qlora, 8B shape, B1 x T2048                     -> qlora.log
#   b) bench_qlora --mode lora (bf16 weights), same shape and program     -> lora.log
#   c) test_qlora cuda (QLoRA vs the dequantised bf16/f32 path, goldens)   -> test_qlora.log
#   d) test_plugin_parity, groups qmatmul and linear                      -> parity.log
#   e) bench_qlora --offload --optim adamw8bit at B1 x T2048 (the <= 6 GiB row) -> qlora_offload.log
#   f) long context: bench_qlora --offload, 2 layers, T = 32768 and 65536 -> long.log
#   g) LONG=1: all 32 layers, --offload --optim adamw8bit, one whole step (--steps 0) at T = 131072, then
#      196608 if 330 s are left (123 s and 256 s on an H200)              -> long32.log
# usage: bash samples/bench_qlora/run_gpu.sh [BUNDLE_DIR]
set -u
bundle=$(cd "${1:-build-gpu/gpu-bundle}" && pwd)
out=${OUT:-$PWD/gpu-out}
deadline=${DEADLINE:-280}
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$out/summary.txt"; }
left() { echo $(( deadline - ($(date +%s) - start) )); }

. "$(dirname "$0")/../bench_cuda/bundle_env.sh"
finch_env+=("FINCH_TEST_TMP=/tmp")
scratch=/dev/shm
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  df -h $scratch | tail -1
} > "$out/summary.txt"

step() { # name log timeout command...
  local name=$1 log=$2 t=$3; shift 3
  local l; l=$(left)
  [ "$l" -gt 10 ] || { stamp "$name: skipped (no time left)"; return; }
  [ "$t" -le "$l" ] || t=$l
  stamp "$name"
  "${finch_env[@]}" timeout "$t" "$@" >> "$out/$log" 2>&1
  stamp "   exit $? $(grep -E '^RESULT|^[0-9]+ passed' "$out/$log" | tail -1)"
}

bq="$bundle/bin/bench_qlora"
step "a) qlora 8b B1 T2048" qlora.log 100 "$bq" --mode qlora --batch 1 --seq 2048 --steps 3 --dir $scratch
step "b) bf16 lora 8b B1 T2048" lora.log 110 "$bq" --mode lora --batch 1 --seq 2048 --steps 3 --dir $scratch
rm -rf $scratch/finch_bench_8b_lora_32l
step "c) test_qlora cuda" test_qlora.log 60 "$bundle/bin/test_qlora" cuda
step "d) parity qmatmul, linear" parity.log 40 env FINCH_PARITY_PLUGIN="$bundle/bin/libfinch-cuda.so" \
  FINCH_PARITY_ONLY=qmatmul,linear "$bundle/bin/test_plugin_parity"
grep -E "FAIL" "$out/parity.log" | head -20 >> "$out/summary.txt"
grep -E "FAIL" "$out/test_qlora.log" | head -20 >> "$out/summary.txt"
step "e) qlora 8b B1 T2048 offload" qlora_offload.log 40 "$bq" --mode qlora --batch 1 --seq 2048 --steps 3 --dir $scratch --reuse --offload \
  --optim adamw8bit
for T in 32768 65536; do
  step "f) qlora 8b 2 layers T$T offload" long.log 60 "$bq" --mode qlora --layers 2 --batch 1 --seq $T --steps 1 --dir $scratch --reuse --offload
done
if [ "${LONG:-0}" = 1 ]; then
  step "g) qlora 8b 32 layers T131072" long32.log 240 "$bq" --mode qlora --batch 1 --seq 131072 --steps 0 --dir $scratch --offload \
    --optim adamw8bit
  [ "$(left)" -gt 330 ] && step "g) qlora 8b 32 layers T196608" long32.log 330 "$bq" --mode qlora --batch 1 --seq 196608 --steps 0 \
    --dir $scratch --offload --optim adamw8bit
fi
grep -h RESULT "$out"/*.log >> "$out/summary.txt"

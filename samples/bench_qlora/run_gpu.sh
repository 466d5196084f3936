#!/bin/bash
# On the GPU machine: the QLoRA checks and measurements of issue 5 in one call, everything written to
# $OUT (default ./gpu-out). Takes the folder made here by samples/bench_cuda/bundle.sh (built with
# bench_qlora and test_qlora). Each step is time-boxed and the whole script stops starting new steps
# after DEADLINE seconds (default 280; 560 for the longest contexts of g):
#   a) bench_qlora --mode qlora --optim adamw8bit, 8B shape, B1 x T2048   -> qlora.log
#   b) bench_qlora --mode lora (bf16 weights), same shape and program     -> lora.log
#   c) test_qlora cuda (QLoRA vs the dequantised bf16/f32 path, goldens)   -> test_qlora.log
#   d) test_plugin_parity, groups qmatmul and linear                      -> parity.log
#   e) bench_qlora --offload --optim adamw8bit at B1 x T2048 (the <= 6 GiB row) -> qlora_offload.log
#   f) long context: bench_qlora --offload, 2 layers, T = 32768 and 65536 -> long.log
#   g) LONG=1: all 32 layers, --offload --optim adamw8bit, one whole step (--steps 0) at T = 131072, then
#      196608 if 330 s are left (123 s and 256 s on an H200)              -> long32.log
# MAXCTX=1 runs only e) and h) (DEADLINE default 560):
#   h) the longest context on an 80 GB card, emulated on a larger one: a ballast process (torch) holds
#      all device memory but CARD_GIB (default 79.0: what an 80 GB H100/A100 shows) less R, where
#      R = e)'s peak (32 layers) - the same run's peak with 2 layers (the other 30 layers' weights,
#      adapters and optimizer state); then one whole 2-layer step each at the lengths in MAXCTX_T
#      (default 655360 737280; on out of memory the next shorter one, 524288). With offload the
#      device's activation memory does not depend on the layer count; a 32-layer step at these lengths
#      takes 30+ minutes, longer than one call                                  -> maxctx.log
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
if [ "${MAXCTX:-0}" = 1 ]; then
  deadline=${DEADLINE:-560}
  step "e) qlora 8b B1 T2048 offload" qlora_offload.log 120 "$bq" --mode qlora --batch 1 --seq 2048 --steps 3 --dir $scratch --offload \
    --optim adamw8bit
  rm -rf $scratch/finch_bench_8b_qlora_32l
  step "h) the same, 2 layers" maxctx.log 60 "$bq" --mode qlora --layers 2 --batch 1 --seq 2048 --steps 3 --dir $scratch --offload \
    --optim adamw8bit
  peak() { sed -n 's/.*layers='"$1"' .*peak_alloc_gib=\([0-9.]*\).*/\1/p' "$2" | tail -1; }
  p32=$(peak 32 "$out/qlora_offload.log"); p2=$(peak 2 "$out/maxctx.log")
  card=${CARD_GIB:-79.0}
  target=$(python3 -c "print(round($card - ($p32 - $p2), 3))")
  stamp "h) R = $p32 - $p2 GiB; ballast leaves $target GiB of the device to finch"
  rm -f /tmp/ballast_ready
  TARGET_GIB=$target python3 -c '
import os, time, torch
free, total = torch.cuda.mem_get_info()
n = int(free - float(os.environ["TARGET_GIB"]) * 2**30)
x = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")
free, total = torch.cuda.mem_get_info()
print("ballast %.2f GiB; free %.2f GiB of %.2f" % (n / 2**30, free / 2**30, total / 2**30), flush=True)
open("/tmp/ballast_ready", "w").write("%d" % free)
time.sleep(3600)' >> "$out/maxctx.log" 2>&1 &
  ballast=$!
  for i in $(seq 60); do [ -s /tmp/ballast_ready ] && break; sleep 1; done
  stamp "$(tail -1 "$out/maxctx.log")"
  ok=0
  for T in ${MAXCTX_T:-655360 737280}; do
    [ $ok = 1 ] && [ "$(left)" -lt 250 ] && { stamp "h) T$T: skipped (a step takes ~4 minutes)"; break; }
    step "h) 2 layers T$T on the emulated card" maxctx.log 330 "$bq" --mode qlora --layers 2 --batch 1 --seq $T --steps 0 --dir $scratch \
      --reuse --offload --optim adamw8bit
    grep -q "RESULT.*T=$T " "$out/maxctx.log" && ok=1 || break
  done
  [ $ok = 0 ] && step "h) 2 layers T524288 on the emulated card" maxctx.log 200 "$bq" --mode qlora --layers 2 --batch 1 --seq 524288 \
    --steps 0 --dir $scratch --reuse --offload --optim adamw8bit
  kill $ballast 2>/dev/null
  grep -h RESULT "$out"/*.log >> "$out/summary.txt"
  exit 0
fi
step "a) qlora 8b B1 T2048" qlora.log 100 "$bq" --mode qlora --batch 1 --seq 2048 --steps 5 --dir $scratch --optim adamw8bit
step "b) bf16 lora 8b B1 T2048" lora.log 110 "$bq" --mode lora --batch 1 --seq 2048 --steps 5 --dir $scratch --optim adamw8bit
rm -rf $scratch/finch_bench_8b_lora_32l
step "c) test_qlora cuda" test_qlora.log 60 "$bundle/bin/test_qlora" cuda
step "d) parity qmatmul, linear" parity.log 40 env FINCH_PARITY_PLUGIN="$bundle/bin/libfinch-cuda.so" \
  FINCH_PARITY_ONLY=qmatmul,linear "$bundle/bin/test_plugin_parity"
grep -E "FAIL" "$out/parity.log" | head -20 >> "$out/summary.txt"
grep -E "FAIL" "$out/test_qlora.log" | head -20 >> "$out/summary.txt"
step "e) qlora 8b B1 T2048 offload" qlora_offload.log 40 "$bq" --mode qlora --batch 1 --seq 2048 --steps 5 --dir $scratch --reuse --offload \
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

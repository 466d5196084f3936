#!/bin/bash
# On the GPU machine: issue 7's generation checks and decode measurements in one call, each step
# time-boxed so that everything ends within BUDGET seconds (default 300), outputs in $OUT:
#   a) test_plugin_parity on libfinch-cuda.so (GEMV and decode attention included), then the
#      batch-1 product timings of FINCH_PARITY_BENCH=decode                            -> parity.log
#   b) finch bench decode --shape 8b (bf16), the model kept in /dev/shm               -> decode_bf16.log
#   c) samples/bench_decode/hf_generate.py --shape 8b (HF generate, same card)        -> hf_generate.log
#   d) the same 8B checkpoint with --4bit (NF4, quantized on load)                    -> decode_nf4.log
#   e) test_generate_golden all cuda (cache vs no-cache forward passes)               -> generate_golden.log
#   f) tests/gpu/hf_generate_check.py (finch generate ids vs HF generate, f32)        -> hf_check.log
#   g) bf16 and NF4 again with FINCH_CUDA_GRAPHS=0 (every call launched on its own, no recorded decode
#      passes), if time is left                                  -> decode_bf16_nographs.log, decode_nf4_nographs.log
# usage: bash samples/bench_decode/run_gpu.sh [BUNDLE_DIR (default build-gpu/gpu-bundle)] (made by
#        samples/bench_cuda/bundle.sh)
# The device tool copies the checkout its session started in (not a helper's worktree): from a worktree,
# put the bundle and this script (with samples/bench_decode/hf_generate.py, tests/gpu/hf_generate_check.py
# beside it in the same layout) into a git-ignored folder of that checkout and carry that folder.
set -u
bundle=$(cd "${1:-build-gpu/gpu-bundle}" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
start=$(date +%s)
end=$(( start + ${BUDGET:-300} ))
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$out/summary.txt"; }
box() { local left=$(( end - $(date +%s) )); [ "$1" -lt "$left" ] && echo "$1" || echo $(( left > 1 ? left : 1 )); }

. "$(dirname "$0")/../bench_cuda/bundle_env.sh"
export "${finch_env[@]:1}"
finch="$bundle/bin/finch"
model=/dev/shm/finch-decode-8b

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
} > "$out/summary.txt"

stamp "a) plugin parity"
FINCH_PARITY_PLUGIN="$bundle/bin/libfinch-cuda.so" FINCH_PARITY_BENCH=decode \
  timeout $(box 50) "$bundle/bin/test_plugin_parity" > "$out/parity.log" 2>&1
stamp "   exit $? : $(grep -E '^[0-9]+ passed' "$out/parity.log" | tail -1)"
grep -E "FAIL" "$out/parity.log" | head -20 | tee -a "$out/summary.txt"
grep -E "^bench" "$out/parity.log" | tee -a "$out/summary.txt"

stamp "b) finch bench decode --shape 8b (bf16)"
mkdir -p "$model"
timeout $(box 60) "$finch" bench decode --shape 8b --backend cuda --dir "$model" --keep > "$out/decode_bf16.log" 2>&1
stamp "   exit $?"
grep -E "roofline|decode|bandwidth" "$out/decode_bf16.log" | tee -a "$out/summary.txt"
dir=$(sed -n 's/^model: \([^,]*\),.*/\1/p' "$out/decode_bf16.log")

stamp "c) HF generate, same shape"
PYTHONUNBUFFERED=1 timeout $(box 45) python3 "$repo/samples/bench_decode/hf_generate.py" --shape 8b > "$out/hf_generate.log" 2>&1
stamp "   exit $?"
grep -E "decode|roofline|device" "$out/hf_generate.log" | tee -a "$out/summary.txt"

stamp "d) the same checkpoint with --4bit (NF4)"
[ -n "$dir" ] && timeout $(box 60) "$finch" bench decode --model "$dir" --backend cuda --4bit > "$out/decode_nf4.log" 2>&1
stamp "   exit $?"
grep -E "roofline|decode" "$out/decode_nf4.log" | tee -a "$out/summary.txt"

stamp "e) test_generate_golden all cuda"
timeout $(box 40) "$bundle/bin/test_generate_golden" all cuda > "$out/generate_golden.log" 2>&1
stamp "   exit $? : $(grep -E '^[0-9]+ passed' "$out/generate_golden.log" | tail -1)"
grep -E "FAIL" "$out/generate_golden.log" | head -10 | tee -a "$out/summary.txt"

stamp "f) finch generate vs HF generate (greedy, f32)"
PYTHONUNBUFFERED=1 timeout $(box 40) python3 "$repo/tests/gpu/hf_generate_check.py" "$finch" cuda > "$out/hf_check.log" 2>&1
stamp "   exit $? : $(tail -1 "$out/hf_check.log")"

stamp "g) bf16 and NF4 with FINCH_CUDA_GRAPHS=0 (no recorded passes)"
[ -n "$dir" ] && FINCH_CUDA_GRAPHS=0 timeout $(box 40) "$finch" bench decode --model "$dir" --backend cuda > "$out/decode_bf16_nographs.log" 2>&1
stamp "   bf16 exit $?"
grep -E "roofline|decode" "$out/decode_bf16_nographs.log" | tee -a "$out/summary.txt"
[ -n "$dir" ] && FINCH_CUDA_GRAPHS=0 timeout $(box 60) "$finch" bench decode --model "$dir" --backend cuda --4bit > "$out/decode_nf4_nographs.log" 2>&1
stamp "   nf4 exit $?"
grep -E "roofline|decode" "$out/decode_nf4_nographs.log" | tee -a "$out/summary.txt"
rm -rf "$model"
stamp "done"

#!/bin/bash
# On the GPU machine: the CUDA plugin's checks and the training benchmark against Hugging Face + PEFT,
# in one call, everything written to $OUT (default ./gpu-out). Takes the folder made here by
# samples/bench_cuda/bundle.sh (default build/gpu-bundle) and runs, each step time-boxed so the
# whole script ends within about 8 minutes:
#   a) test_plugin_parity on libfinch-cuda.so (every ABI entry against the CPU backend, then the
#      per-entry timings of FINCH_PARITY_BENCH=1)                                   -> parity.log
#   b) test_golden ARCH cuda for every golden architecture (f32 at 1e-4, bf16 at 2e-2) -> golden.log
#   c) finch bench train --config all, then llama8b-gc with --offload on --mlp-chunk 4096 -> bench_train.log
#   d) python3 hf_peft_baseline.py (same configurations, same card)                -> hf.log, baseline.json
# and a side-by-side table of tokens/s and peak memory                             -> summary.txt
# usage: bash samples/bench_cuda/run_gpu.sh [BUNDLE_DIR]
set -u
bundle=$(cd "${1:-build/gpu-bundle}" && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$out/summary.txt"; }

# Libraries the bundle carries (OpenBLAS gzipped), then the CUDA toolkit's and pip's cuBLASLt.
. "$(dirname "$0")/bundle_env.sh"

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1
  "${finch_env[@]}" ldd "$bundle/bin/libfinch-cuda.so" 2>&1 | grep -E "not found|cublas"
  "${finch_env[@]}" "$bundle/bin/finch" info 2>&1
} > "$out/summary.txt"

stamp "a) plugin parity"
"${finch_env[@]}" FINCH_PARITY_PLUGIN="$bundle/bin/libfinch-cuda.so" FINCH_PARITY_BENCH=1 \
  timeout 75 "$bundle/bin/test_plugin_parity" > "$out/parity.log" 2>&1
stamp "   exit $? : $(grep -E '^[0-9]+ passed' "$out/parity.log" | tail -1)"
grep -E "FAILED|FAIL " "$out/parity.log" | head -20 | tee -a "$out/summary.txt"

stamp "b) goldens through CUDA"
: > "$out/golden.log"
golden_end=$(( $(date +%s) + 45 ))
for arch in llama mistral qwen2 qwen3 gemma gemma2 gemma3 phi3 falcon; do
  left=$(( golden_end - $(date +%s) ))
  [ $left -gt 2 ] || { echo "golden $arch: no time left" >> "$out/golden.log"; continue; }
  "${finch_env[@]}" timeout $left "$bundle/bin/test_golden" $arch cuda >> "$out/golden.log" 2>&1
  rc=$?
  stamp "   golden $arch: exit $rc $(grep -E '^[0-9]+ passed' "$out/golden.log" | tail -1)"
done

stamp "c) finch bench train --config all"
"${finch_env[@]}" timeout 160 "$bundle/bin/finch" bench train --config all > "$out/bench_train.log" 2>&1
stamp "   exit $?"

stamp "c2) llama8b-gc with activation offload (attention halves kept), MLP whole"
"${finch_env[@]}" timeout 60 "$bundle/bin/finch" bench train --config llama8b-gc --offload on --mlp-chunk 4096 \
  >> "$out/bench_train.log" 2>&1
stamp "   exit $?"

stamp "d) Hugging Face + PEFT baseline"
OUT="$out" timeout 160 python3 "$bundle/shared/bench/hf_peft_baseline.py" > "$out/hf.log" 2>&1
stamp "   exit $?"

python3 - "$out" >> "$out/summary.txt" 2>&1 <<'PY'
import json, sys, os
out = sys.argv[1]
def rows(path):
    r = {}
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("{") and "tokens_per_s" in line:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            r[(j["name"], j["B"], j["T"], bool(j["gc"]), bool(j.get("offload", False)))] = j
    return r
f, h = rows(os.path.join(out, "bench_train.log")), rows(os.path.join(out, "hf.log"))
print("%-8s %2s %5s %-5s %-7s | %12s %12s %6s | %9s %9s | %9s %9s %6s" % ("config", "B", "T", "gc", "offload", "finch tok/s",
      "HF tok/s", "ratio", "finch pk", "HF peak", "finch-w", "HF-w", "ratio"))
for k in sorted(set(f) | set(h), key=lambda k: (k[0], -k[3], k[2], k[4])):
    a, b = f.get(k), h.get(k[:4] + (False,))  # HF's row beside each of finch's (with and without offload)
    ft = a["tokens_per_s"] if a else float("nan"); ht = b["tokens_per_s"] if b else float("nan")
    fp = a["peak_GiB"] if a else float("nan"); hp = b["peak_GiB"] if b else float("nan")
    fw = fp - a["weights_GiB"] if a else float("nan"); hw = hp - b["weights_GiB"] if b else float("nan")
    print("%-8s %2d %5d %-5s %-7s | %12.0f %12.0f %6.2f | %9.2f %9.2f | %9.2f %9.2f %6.2f" % (k[0], k[1], k[2], k[3], k[4], ft, ht,
          ft / ht if a and b else float("nan"), fp, hp, fw, hw, fw / hw if a and b and hw > 0 else float("nan")))
PY
stamp "done"

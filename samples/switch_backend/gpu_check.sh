#!/bin/sh
# CUDA -> OpenCL -> CPU mid-training on the GPU machine, with the built binaries (BUILD: a build folder
# configured with -DFINCH_CUDA=ON -DFINCH_OPENCL=ON). A tiny llama from `finch init` trains 12 steps in
# f32 on cuda alone, then again switching to opencl after step 4 and to cpu after step 8; the two loss
# columns are printed side by side with their largest relative difference (expect <= 1e-4: three
# backends' f32 rounding). Then the sample program does the same from a host application.
#     samples/switch_backend/gpu_check.sh BUILD [WORK_DIR]
# FINCH_OPENCL_DEVICE=NVIDIA picks NVIDIA's OpenCL device when PoCL is installed too.
set -eu
BUILD=$(cd "$1" && pwd); WORK=${2:-/tmp/finch-switch-check}
BIN=$BUILD/bin
rm -rf "$WORK"; mkdir -p "$WORK"
"$BIN/finch" info
"$BIN/finch" init --arch llama --out "$WORK/model" --hidden 256 --layers 4 --heads 8 --kv-heads 4 --seed 5
i=0; while [ $i -lt 200 ]; do
  a=$((i % 10)); b=$(((i * 7) % 10))
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"$a+$b=\"}, {\"role\": \"assistant\", \"content\": \"$((a + b))\"}]}"
  i=$((i + 1))
done > "$WORK/data.jsonl"
ARGS="--model $WORK/model --data $WORK/data.jsonl --max-steps 12 --dtype f32 --lr-scheduler constant --learning-rate 3e-3 --batch-size 8 --grad-accum 1 --lora-r 8"
"$BIN/finch" train $ARGS --backend cuda --out "$WORK/cuda"
"$BIN/finch" train $ARGS --backend cuda --out "$WORK/switched" --switch-backend-at 4:opencl --switch-backend-at 8:cpu
python3 - "$WORK/cuda/metrics.jsonl" "$WORK/switched/metrics.jsonl" <<'PY'
import json, sys
def losses(p): return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r and "eval_loss" not in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = 0.0
for s in sorted(a):
    d = abs(a[s] - b[s]) / max(abs(a[s]), 1e-12); worst = max(worst, d)
    print(f"step {s:2d}  cuda {a[s]:.7f}  cuda->opencl->cpu {b[s]:.7f}  rel {d:.2e}")
print(f"worst relative difference {worst:.3g}")
sys.exit(0 if worst <= 1e-4 else 1)
PY
"$BIN/switch_backend" "$WORK/model" "$WORK/data.jsonl" cuda opencl cpu

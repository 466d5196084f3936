# Greedy generation, finch against Hugging Face `generate` (issue 7: "equals Hugging Face generate
# (greedy) for the same model and prompt"). For every golden model in $FINCH_SHARED_DIR/golden/<arch>/model
# the prompt is the first PROMPT ids of row 0 of golden.safetensors' input_ids (vision-language models:
# its text tokens, without image tokens); HF generates 32 tokens
# greedily in float32 (no EOS stop, no processors from generation_config.json), finch generates them with
#     finch generate --model DIR --prompt-ids IDS --print-ids --greedy --ignore-eos --max-new-tokens 32
#                    --backend BACKEND --dtype f32
# and the ids must be equal. Run where torch + transformers exist (the GPU machine):
#     python3 tests/gpu/hf_generate_check.py FINCH_BIN [BACKEND (cuda)] [ARCH ...]
import json, os, subprocess, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GenerationConfig

NEW, PROMPT = 32, 24
finch = sys.argv[1]
backend = sys.argv[2] if len(sys.argv) > 2 else "cuda"
root = os.path.join(os.environ.get("FINCH_SHARED_DIR", "../shared"), "golden")
archs = sys.argv[3:] or sorted(a for a in os.listdir(root) if os.path.isfile(os.path.join(root, a, "model", "config.json")))
device = "cuda" if torch.cuda.is_available() else "cpu"
results = []
for arch in archs:
    d = os.path.join(root, arch, "model")
    ids = load_file(os.path.join(root, arch, "golden.safetensors"))["input_ids"][0].long()
    cfg = json.load(open(os.path.join(d, "config.json")))
    # A vision-language golden's row holds image tokens, which need pixel values: its text only.
    vision = {cfg.get(k) for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")} - {None}
    ids = ids[[t not in vision for t in ids.tolist()]][:PROMPT]
    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    except ValueError:  # a vision-language model: its text generation
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model = model.to(device).eval()
    gc = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True, max_new_tokens=NEW, min_new_tokens=NEW)
    with torch.no_grad():
        x = ids[None].to(device)
        out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc)
    hf = out[0, len(ids):].tolist()
    cmd = [finch, "generate", "--model", d, "--prompt-ids", ",".join(map(str, ids.tolist())), "--print-ids", "--greedy",
           "--ignore-eos", "--max-new-tokens", str(NEW), "--backend", backend, "--dtype", "f32"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    ours = [int(t) for t in p.stdout.strip().split(",")] if p.returncode == 0 and p.stdout.strip() else []
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, hf)) if a != b), None)
    results.append({"arch": arch, "ok": ours == hf, "prompt_tokens": len(ids), "equal_prefix": first_diff if first_diff is not None else min(len(ours), len(hf)),
                    "finch": ours, "hf": hf, **({"finch_error": p.stderr.strip()[-300:]} if p.returncode else {})})
    print(json.dumps(results[-1]), flush=True)
    del model
ok = bool(results) and all(r["ok"] for r in results)
print(json.dumps({"hf_generate_check": "pass" if ok else "FAIL", "backend": backend, "n": len(results),
                  "failed": [r["arch"] for r in results if not r["ok"]]}))
sys.exit(0 if ok else 1)

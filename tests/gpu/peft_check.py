# Loads adapters that finch trained and saved into Hugging Face PEFT and compares PEFT's logits with
# finch's on the same batch (issue: "the PEFT adapter, loaded by PEFT, gives the same logits as finch").
# Run where torch + transformers + peft exist (the GPU machine):
#     python3 tests/gpu/peft_check.py DIR
# DIR/<arch>/ holds model/ (the base model), adapter_config.json + adapter_model.safetensors (from
# `finch train`), batch.safetensors (input_ids) and finch_logits.safetensors (from `finch forward --adapter`).
import json, os, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel

root = sys.argv[1]
results, worst = [], 0.0
for arch in sorted(os.listdir(root)):
    d = os.path.join(root, arch)
    if not os.path.isfile(os.path.join(d, "adapter_config.json")):
        continue
    base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=torch.float64, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, d).eval()
    ids = load_file(os.path.join(d, "batch.safetensors"))["input_ids"].long()
    ours = load_file(os.path.join(d, "finch_logits.safetensors"))["logits"].double()
    with torch.no_grad():
        ref = model(input_ids=ids).logits.double()
    rel = float((ours - ref).norm() / ref.norm())
    worst = max(worst, rel)
    results.append({"arch": arch, "rel_err": rel, "ok": rel <= 1e-4})
    print(json.dumps(results[-1]), flush=True)
print(json.dumps({"peft_check": "pass" if results and worst <= 1e-4 else "FAIL", "worst_rel_err": worst, "n": len(results)}))
sys.exit(0 if results and worst <= 1e-4 else 1)

#!/usr/bin/env python3
"""Hugging Face `generate` beside `finch bench decode`: the same Llama shape with random weights, bf16,
batch 1, greedy, the same prompt length, on the same card. Needs torch and transformers (no download:
the model is built from a config).

    python3 samples/bench_decode/hf_generate.py [--shape 8b|1b|tiny] [--prompt-tokens 128] [--tokens 64]
                                                [--static]

Decode tokens/s is measured as finch measures it: generate(max_new_tokens=1) (prefill and the first
token) is timed apart and subtracted from generate(max_new_tokens=N), leaving N - 1 decode steps.
--static uses transformers' static key/value cache (no torch.compile). The roofline is the same as
finch's: bytes of every weight but the embedding table / device copy bandwidth (read + write).
Prints a human summary and one JSON line."""
import argparse
import copy
import json
import time

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

SHAPES = {  # hidden, layers, heads, kv_heads, intermediate, vocab (as finch bench decode)
    "8b": (4096, 32, 32, 8, 14336, 128256),
    "1b": (2048, 16, 32, 8, 8192, 128256),
    "tiny": (256, 4, 8, 2, 688, 4096),
}


def copy_bandwidth(nbytes=1 << 30, reps=10):
    a = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(reps):
        (b if i % 2 == 0 else a).copy_(a if i % 2 == 0 else b)
    torch.cuda.synchronize()
    return 2.0 * nbytes * reps / (time.perf_counter() - t0)


def timed_generate(model, ids, n, gc):
    gc = copy.deepcopy(gc)
    gc.max_new_tokens = gc.min_new_tokens = n
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--static", action="store_true", help="static key/value cache")
    args = ap.parse_args()
    hidden, layers, heads, kv, inter, vocab = SHAPES[args.shape]
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      intermediate_size=inter, vocab_size=vocab, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = (n_params - vocab * hidden) * 2
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"model: Llama {args.shape} shape, {n_params / 1e9:.3f} B params, bf16, built in {time.perf_counter() - t0:.1f} s")
    bw = copy_bandwidth()
    roof = bw / weight_bytes
    print(f"copy bandwidth: {bw / 1e9:.1f} GB/s; roofline {roof:.1f} tokens/s ({weight_bytes / 1e9:.3f} GB of weights per token)")

    gc = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)
    if args.static:
        gc.cache_implementation = "static"
    g = torch.Generator().manual_seed(12345)
    ids = torch.randint(3, vocab, (1, args.prompt_tokens), generator=g).to("cuda")
    timed_generate(model, ids, 8, gc)  # warm-up: kernels, allocator
    t_first, _ = timed_generate(model, ids, 1, gc)
    t_all, out = timed_generate(model, ids, args.tokens, gc)
    assert out.shape[1] == args.prompt_tokens + args.tokens, out.shape
    step = (t_all - t_first) / (args.tokens - 1)
    tps = 1.0 / step
    print(f"prefill + first token: {t_first * 1e3:.1f} ms")
    print(f"decode (HF generate, greedy{', static cache' if args.static else ''}): {tps:.1f} tokens/s "
          f"({step * 1e3:.2f} ms/token) = {100 * tps / roof:.1f}% of roofline")
    print(json.dumps({"bench": "hf_generate", "device": torch.cuda.get_device_name(), "shape": args.shape,
                      "static_cache": args.static, "torch": torch.__version__,
                      "transformers": __import__("transformers").__version__, "params": n_params,
                      "weight_bytes": weight_bytes, "copy_bw_gbs": bw / 1e9, "roofline_tps": roof, "decode_tps": tps,
                      "fraction_of_roofline": tps / roof, "prompt_tokens": args.prompt_tokens, "tokens": args.tokens}))


if __name__ == "__main__":
    main()

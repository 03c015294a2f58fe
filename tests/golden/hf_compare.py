#!/usr/bin/env python3
"""Compares `ember embed` output with HF transformers (fp32) on the same model folder.

  python3 tests/golden/hf_compare.py write-texts TEXTS.jsonl
  ember embed --model DIR --device cuda --input TEXTS.jsonl --output EMBER.jsonl
  python3 tests/golden/hf_compare.py compare --model DIR --texts TEXTS.jsonl --ember EMBER.jsonl [--min-cosine 0.999]

Used on the GPU machine for models too large for committed goldens (the 4B shape).
"""
import argparse
import json
import os
import sys

EOS = 151643
PARAGRAPH = ("Embedding models map a text to a vector so that texts with similar meaning land close together; "
             "search systems then compare a query's vector with millions of document vectors. ")
TEXTS = [
    "",
    "a",
    "What is the capital of China?",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:gravity",
    "Grüße aus München! 東京は今日は晴れです。Привет, мир. def f(x): return x ** 2  # 🚀👍🏽",
    PARAGRAPH * 4,
    PARAGRAPH * 40,
    "<|im_start|>user\nSort a list in Python<|im_end|>",
]


def write_texts(path):
    with open(path, "w") as f:
        for i, t in enumerate(TEXTS):
            f.write(json.dumps({"id": i, "text": t}) + "\n")


def compare(args):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    texts = [json.loads(line)["text"] for line in open(args.texts)]
    ember = [json.loads(line)["embedding"] for line in open(args.ember)]
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
    worst = 1.0
    for text, e in zip(texts, ember):
        ids = tok.encode(text, add_special_tokens=False).ids + [EOS]
        with torch.inference_mode():
            h = model(input_ids=torch.tensor([ids]).cuda()).last_hidden_state[0, -1].float()
        ref = torch.nn.functional.normalize(h, dim=0)
        got = torch.tensor(e, device="cuda")
        cos = float(torch.dot(ref, got) / got.norm())
        worst = min(worst, cos)
        print(f"{len(ids):>6} tokens  cosine {cos:.6f}")
    print(f"worst cosine {worst:.6f} over {len(texts)} texts (threshold {args.min_cosine})")
    return 0 if worst >= args.min_cosine else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-texts")
    w.add_argument("path")
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--texts", required=True)
    c.add_argument("--ember", required=True)
    c.add_argument("--min-cosine", type=float, default=0.999)
    args = ap.parse_args()
    if args.cmd == "write-texts":
        write_texts(args.path)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())

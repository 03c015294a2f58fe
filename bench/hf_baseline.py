#!/usr/bin/env python3
"""The workloads of `ember bench --device cuda`, run through Hugging Face transformers.

Same model folder (weights), same sequence lengths (workloads.py), sdpa attention, bf16, on the
same GPU, so `bench/compare.py` can print ember/HF ratios from the two JSON files.

  python3 bench/hf_baseline.py --model DIR --out hf.json [--quick]
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

T0 = time.perf_counter()  # "process start" for the cold-start figure, as close to exec as Python allows

import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402


def sync():
    torch.cuda.synchronize()


def embed(model, batch):
    """Left-padded batch (as the Qwen3-Embedding model card does), last-token pooling, L2 norm."""
    longest = max(len(s) for s in batch)
    ids = torch.full((len(batch), longest), workloads.EOS, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, longest - len(s):] = torch.tensor(s)
        mask[i, longest - len(s):] = 1
    with torch.inference_mode():
        out = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state[:, -1]
        return torch.nn.functional.normalize(out.float(), dim=-1)


def timed(model, batches):
    sync()
    start = time.perf_counter()
    for b in batches:
        embed(model, b)
    sync()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mixed-batch", type=int, default=32, help="texts per padded batch in the mixed corpus")
    args = ap.parse_args()

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = AutoModel.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    sync()
    load_s = time.perf_counter() - start
    first = embed(model, [workloads.query(16)])
    first_s = time.perf_counter() - T0
    del first

    w = workloads.cuda_workloads(quick=args.quick)
    results = {"load_s": load_s, "exec_to_first_embedding_s": first_s, "workloads": {}}
    config = model.config

    def record(name, seqs, seconds, extra=None):
        tokens = sum(len(s) for s in seqs)
        flops = sum(workloads.sequence_flops(config, len(s)) for s in seqs)
        entry = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12}
        entry.update(extra or {})
        results["workloads"][name] = entry
        print(f"{name:<28} {tokens / seconds:>10.0f} tokens/s {seconds * 1e3:>9.1f} ms {flops / seconds / 1e12:>7.1f} TFLOP/s",
              flush=True)

    # 512-token texts in batches of 32 (16,384 tokens, ember's --max-batch-tokens).
    seqs = w["batch512"]
    batches = [seqs[i:i + 32] for i in range(0, len(seqs), 32)]
    timed(model, batches[:1])
    record("batch512", seqs, timed(model, batches))

    seqs = w["mixed"]
    batches = [seqs[i:i + args.mixed_batch] for i in range(0, len(seqs), args.mixed_batch)]
    timed(model, batches[:2])
    record("mixed", seqs, timed(model, batches), {"batching": f"padded batches of {args.mixed_batch}"})

    seqs = w["queries32x256"]
    batches = [seqs[i:i + 256] for i in range(0, len(seqs), 256)]
    timed(model, batches[:1])
    record("queries32x256", seqs, timed(model, batches))

    q = [workloads.query(16)]
    lat = []
    for _ in range(w["single_query_reps"]):
        lat.append(timed(model, [q]) * 1e3)
    results["workloads"]["query16"] = {"p50_ms": statistics.median(lat), "p99_ms": workloads.percentile(lat, 0.99)}
    print(f"query16                      p50 {statistics.median(lat):.2f} ms  p99 {workloads.percentile(lat, 0.99):.2f} ms")

    seqs = w["long"]
    try:
        timed(model, [seqs])
        record("long", seqs, timed(model, [seqs]))
    except torch.OutOfMemoryError as e:
        results["workloads"]["long"] = {"error": f"out of memory: {e}"}
        print("long: out of memory")

    results["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    print(f"load {load_s:.2f} s, exec to first embedding {first_s:.2f} s, peak memory {results['peak_memory_bytes'] / 1e9:.2f} GB")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

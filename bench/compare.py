#!/usr/bin/env python3
"""Prints ember/HF ratios from `ember bench --json E.json` and `bench/hf_baseline.py --out H.json`.

  python3 bench/compare.py E.json H.json
"""
import json
import sys


def main():
    ember_all = json.load(open(sys.argv[1]))
    hf = json.load(open(sys.argv[2]))
    ember = ember_all["precisions"]["fast"]
    ew, hw = ember["workloads"], hf["workloads"]
    print(f"{'workload':<22} {'ember':>14} {'HF transformers':>16} {'ember/HF':>9}")
    for name, label in [("batch512", "512-token batches"), ("mixed", "mixed 20-1000"),
                        ("queries32x256", "32-token x 256"), ("long", "one 32,768-token")]:
        e, h = ew.get(name, {}), hw.get(name, {})
        if "tokens_per_s" not in e or "tokens_per_s" not in h:
            print(f"{label:<22} {e.get('tokens_per_s', 'n/a')!s:>14} {h.get('tokens_per_s', h.get('error', 'n/a'))!s:>16}")
            continue
        print(f"{label:<22} {e['tokens_per_s']:>10.0f} t/s {h['tokens_per_s']:>12.0f} t/s {e['tokens_per_s'] / h['tokens_per_s']:>8.2f}x")
    e, h = ew["query16"], hw["query16"]
    print(f"{'one 16-token (p50)':<22} {e['p50_ms']:>11.2f} ms {h['p50_ms']:>13.2f} ms {h['p50_ms'] / e['p50_ms']:>8.2f}x")
    print(f"{'one 16-token (p99)':<22} {e['p99_ms']:>11.2f} ms {h['p99_ms']:>13.2f} ms {h['p99_ms'] / e['p99_ms']:>8.2f}x")
    e1, h1 = ember["exec_to_first_embedding_s"], hf["exec_to_first_embedding_s"]
    print(f"{'exec to 1st embedding':<22} {e1:>12.2f} s {h1:>14.2f} s {h1 / e1:>8.2f}x")
    print(f"{'model load':<22} {ember['load_s']:>12.2f} s {hf['load_s']:>14.2f} s {hf['load_s'] / ember['load_s']:>8.2f}x")
    em, hm = ember["device_memory_bytes"] / 1e9, hf["peak_memory_bytes"] / 1e9
    print(f"{'GPU memory':<22} {em:>11.2f} GB {hm:>13.2f} GB")


if __name__ == "__main__":
    main()

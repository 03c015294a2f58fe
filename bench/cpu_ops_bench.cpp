// Times the CPU backend's ops at the Qwen3-Embedding-0.6B shapes, then a whole forward pass
// built from them, and prints GFLOP/s next to oneDNN's peak on this machine.
//   cpu_ops_bench [--threads N] [--tokens T] [--seq-len L] [--precision fast|exact|both] [--layers N]
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/gemm_peak.h"
#include "core/dtype.h"

namespace {

using namespace ember;

struct Options {
  int threads = 2;
  int64_t tokens = 512;   // tokens per batch
  int64_t seq_len = 512;  // tokens per sequence in the batch
  int layers = 28;
  std::vector<Precision> precisions{Precision::Fast, Precision::Exact};
};

// Qwen3-Embedding-0.6B
constexpr int64_t kHidden = 1024, kHeads = 16, kKvHeads = 8, kHeadDim = 128, kInter = 3072, kVocab = 151669;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best time of several runs, after one warm-up run.
double time_best(const std::function<void()>& fn, double budget_s = 0.3, int max_reps = 50) {
  fn();
  double best = 1e30;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < max_reps && (r < 3 || seconds_since(start) < budget_s); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// A bf16 host tensor of small pseudo-random values, as a checkpoint would hold.
Tensor random_host(std::vector<int64_t> shape, uint64_t seed, float scale) {
  Tensor t;
  t.dtype = DType::BF16;
  t.shape = std::move(shape);
  t.storage = std::shared_ptr<void>(std::malloc(t.nbytes()), &std::free);
  t.data = t.storage.get();
  uint16_t* p = t.as<uint16_t>();
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const float u = static_cast<float>(s >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
    p[i] = f32_to_bf16(u * scale);
  }
  return t;
}

void fill_activation(Tensor& t, uint64_t seed) {
  const Tensor h = random_host(t.shape, seed, 1.0f);
  convert(h.data, DType::BF16, t.data, t.dtype, static_cast<size_t>(t.numel()));
}

struct Layer {
  Tensor input_norm, qkv, o, q_norm, k_norm, post_norm, gate_up, down;  // qkv, gate_up stacked
};

Layer make_layer(Backend& b, uint64_t seed) {
  auto mat = [&](int64_t n, int64_t k, uint64_t s) {
    return b.load_weight(random_host({n, k}, seed * 16 + s, 1.0f / 32), WeightKind::Matrix);
  };
  auto stacked = [&](const std::vector<int64_t>& ns, int64_t k, uint64_t s) {
    std::vector<Tensor> hosts;
    for (int64_t n : ns) hosts.push_back(random_host({n, k}, seed * 16 + s++, 1.0f / 32));
    return b.load_stacked_weight(hosts);
  };
  auto vec = [&](int64_t n, uint64_t s) {
    Tensor t = random_host({n}, seed * 16 + s, 0.1f);
    for (int64_t i = 0; i < n; ++i) t.as<uint16_t>()[i] = f32_to_bf16(1.0f + bf16_to_f32(t.as<uint16_t>()[i]));
    return b.load_weight(t, WeightKind::Vector);
  };
  return {vec(kHidden, 0),
          stacked({kHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim}, kHidden, 1),
          mat(kHidden, kHeads * kHeadDim, 4),
          vec(kHeadDim, 5),
          vec(kHeadDim, 6),
          vec(kHidden, 7),
          stacked({kInter, kInter}, kHidden, 8),
          mat(kHidden, kInter, 10)};
}

struct Acts {
  Tensor residual, normed, qkv, attn, attn_out, gate_up, act, mlp_out;
};

Acts make_acts(Backend& b, int64_t T) {
  const DType a = b.activation_dtype();
  Acts x{b.allocate(a, {T, kHidden}),
         b.allocate(a, {T, kHidden}),
         b.allocate(a, {T, kHeads + 2 * kKvHeads, kHeadDim}),
         b.allocate(a, {T, kHeads, kHeadDim}),
         b.allocate(a, {T, kHidden}),
         b.allocate(a, {T, 2 * kInter}),
         b.allocate(a, {T, kInter}),
         b.allocate(a, {T, kHidden})};
  fill_activation(x.residual, 1);
  fill_activation(x.mlp_out, 2);
  return x;
}

Tensor flat(const Tensor& t) {
  Tensor m = t;
  m.shape = {t.shape[0], t.numel() / t.shape[0]};
  return m;
}

// One decoder layer exactly as the model runs it. `lap`, if given, is called after each op with
// the op's name.
void run_layer(Backend& b, const Layer& l, Acts& x, bool first, const std::function<void(const char*)>& lap = nullptr) {
  const float eps = 1e-6f;
  auto done = [&](const char* name) {
    if (lap) lap(name);
  };
  if (first) {
    b.rms_norm(x.residual, l.input_norm, eps, x.normed);
  } else {
    b.add_rms_norm(x.residual, x.mlp_out, l.input_norm, eps, x.normed);
  }
  done("add_rms_norm (input)");
  Tensor qkv2 = flat(x.qkv);
  b.linear(x.normed, l.qkv, qkv2);
  done("linear qkv");
  b.qk_norm_rope(x.qkv, kHeads, l.q_norm, l.k_norm, eps, 1e6f);
  done("qk_norm_rope");
  b.attention(x.qkv, x.attn);
  done("attention");
  b.linear(flat(x.attn), l.o, x.attn_out);
  done("linear o");
  b.add_rms_norm(x.residual, x.attn_out, l.post_norm, eps, x.normed);
  done("add_rms_norm (post)");
  b.linear(x.normed, l.gate_up, x.gate_up);
  done("linear gate_up");
  b.swiglu(x.gate_up, x.act);
  done("swiglu");
  b.linear(x.act, l.down, x.mlp_out);
  done("linear down");
}

PackedBatch make_batch(int64_t tokens, int64_t seq_len) {
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t done = 0; done < tokens; done += seq_len) {
    std::vector<int32_t> s(static_cast<size_t>(std::min(seq_len, tokens - done)));
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<int32_t>((i * 7919 + done) % kVocab);
    seqs.push_back(std::move(s));
  }
  std::vector<const std::vector<int32_t>*> ptrs;
  for (const auto& s : seqs) ptrs.push_back(&s);
  return PackedBatch::pack(ptrs);
}

double attention_flop(const PackedBatch& batch) {
  double pairs = 0;
  for (int64_t s = 0; s < batch.sequences(); ++s) {
    const double n = batch.seq_offsets[s + 1] - batch.seq_offsets[s];
    pairs += n * (n + 1) / 2;
  }
  return 4.0 * kHeadDim * kHeads * pairs;  // QK^T and PV, causal pairs only
}

double linear_flop(int64_t T) {
  const double per_token = 2.0 * kHidden * (kHeads + 2 * kKvHeads) * kHeadDim + 2.0 * kHeads * kHeadDim * kHidden +
                           3 * 2.0 * kHidden * kInter;
  return per_token * static_cast<double>(T);
}

void bench_precision(Precision p, const Options& o) {
  const char* pname = p == Precision::Fast ? "fast (bf16)" : "exact (fp32)";
  fmt::print("\n=== {} precision, {} threads ===\n", pname, o.threads);
  const double peak = measure_gemm_peak_gflops(p, o.threads);
  fmt::print("oneDNN matmul peak (1024^3 / 2048^3, blocked weights): {:.0f} GFLOP/s\n", peak);

  auto b = make_cpu_backend(p, o.threads);
  const int64_t T = o.tokens;
  const PackedBatch batch = make_batch(T, o.seq_len);
  b->set_batch(batch);
  Acts x = make_acts(*b, T);
  const Layer layer = make_layer(*b, 1);

  fmt::print("\nlinear, T={}:\n", T);
  struct L {
    const char* name;
    const Tensor* w;
    Tensor* in;
    Tensor out;
  };
  const L lins[] = {{"qkv     1024->4096", &layer.qkv, &x.normed, flat(x.qkv)},
                    {"o       2048->1024", &layer.o, &x.attn, x.attn_out},
                    {"gate_up 1024->6144", &layer.gate_up, &x.normed, x.gate_up},
                    {"down    3072->1024", &layer.down, &x.act, x.mlp_out}};
  for (const L& l : lins) {
    Tensor out = l.out;
    const Tensor in = flat(*l.in);
    const double t = time_best([&] { b->linear(in, *l.w, out); });
    const double flop = 2.0 * T * l.w->dim(0) * l.w->dim(1);
    fmt::print("  {}  {:7.3f} ms  {:6.0f} GFLOP/s\n", l.name, t * 1e3, flop / t / 1e9);
  }

  fmt::print("\nattention (16 q heads, 8 kv heads, head_dim 128, causal):\n");
  for (const auto& [len, count] : {std::pair<int64_t, int64_t>{512, 1}, {4096, 1}, {64, 8}}) {
    auto ab = make_cpu_backend(p, o.threads);
    const PackedBatch ab_batch = make_batch(len * count, len);
    ab->set_batch(ab_batch);
    const DType a = ab->activation_dtype();
    Tensor qkv = ab->allocate(a, {len * count, kHeads + 2 * kKvHeads, kHeadDim});
    Tensor out = ab->allocate(a, {len * count, kHeads, kHeadDim});
    fill_activation(qkv, 3);
    const double t = time_best([&] { ab->attention(qkv, out); });
    fmt::print("  {} x {:4} tokens  {:8.3f} ms  {:6.0f} GFLOP/s\n", count, len, t * 1e3,
               attention_flop(ab_batch) / t / 1e9);
  }

  fmt::print("\nrow ops, T={}:\n", T);
  const float eps = 1e-6f;
  const std::pair<const char*, std::function<void()>> rows[] = {
      {"rms_norm [T,1024]     ", [&] { b->rms_norm(x.residual, layer.input_norm, eps, x.normed); }},
      {"add_rms_norm [T,1024] ", [&] { b->add_rms_norm(x.residual, x.mlp_out, layer.post_norm, eps, x.normed); }},
      {"qk_norm_rope          ", [&] { b->qk_norm_rope(x.qkv, kHeads, layer.q_norm, layer.k_norm, eps, 1e6f); }},
      {"swiglu [T,3072]       ", [&] { b->swiglu(x.gate_up, x.act); }},
  };
  for (const auto& [name, fn] : rows) fmt::print("  {} {:7.3f} ms\n", name, time_best(fn) * 1e3);

  const double layer_flop = linear_flop(T) + attention_flop(batch);
  const double t_layer = time_best([&] { run_layer(*b, layer, x, false); }, 0.5, 10);
  fmt::print("\nwhole layer, T={} in sequences of {}: {:.2f} ms, {:.0f} GFLOP/s; x{} = {:.0f} ms => {:.0f} tokens/s\n",
             T, o.seq_len, t_layer * 1e3, layer_flop / t_layer / 1e9, o.layers, t_layer * o.layers * 1e3,
             T / (t_layer * o.layers));

  // The full forward with distinct weights per layer, so no layer's weights sit in cache.
  std::vector<Layer> layers;
  for (int l = 0; l < o.layers; ++l) layers.push_back(make_layer(*b, 100 + l));

  // Where a layer's time goes inside the forward (median over layers 1..N-1 of one pass).
  std::vector<std::pair<std::string, std::vector<double>>> laps;
  for (int l = 1; l < o.layers; ++l) {
    auto t0 = std::chrono::steady_clock::now();
    size_t op = 0;
    run_layer(*b, layers[l], x, false, [&](const char* name) {
      if (laps.size() <= op) laps.push_back({name, {}});
      laps[op++].second.push_back(seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
    });
  }
  fmt::print("\nper-op time inside the forward (median over layers):\n");
  double sum = 0;
  for (auto& [name, times] : laps) {
    std::sort(times.begin(), times.end());
    const double med = times.empty() ? 0.0 : times[times.size() / 2];
    sum += med;
    fmt::print("  {:22} {:7.3f} ms\n", name, med * 1e3);
  }
  fmt::print("  {:22} {:7.3f} ms\n", "sum", sum * 1e3);

  const Tensor table = b->load_weight(random_host({kVocab, kHidden}, 7, 1.0f), WeightKind::EmbeddingTable);
  const Tensor final_norm = layers[0].post_norm;
  Tensor pooled = b->allocate(b->activation_dtype(), {batch.sequences(), kHidden});
  auto forward = [&] {
    b->set_batch(batch);
    b->embed_tokens(table, x.residual);
    for (int l = 0; l < o.layers; ++l) run_layer(*b, layers[l], x, l == 0);
    b->add_rms_norm(x.residual, x.mlp_out, final_norm, eps, x.normed);
    b->gather_last_tokens(x.normed, pooled);
    b->to_host_f32(pooled);
  };
  const double t_fwd = time_best(forward, 1.0, 3);
  const double fwd_flop = layer_flop * o.layers;
  fmt::print("forward, {} layers, distinct weights: {:.0f} ms, {:.0f} GFLOP/s ({:.0f}% of peak), {:.0f} tokens/s\n",
             o.layers, t_fwd * 1e3, fwd_flop / t_fwd / 1e9, 100.0 * fwd_flop / t_fwd / 1e9 / peak, T / t_fwd);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--threads" && v) {
      o.threads = std::atoi(v);
    } else if (a == "--tokens" && v) {
      o.tokens = std::atoll(v);
    } else if (a == "--seq-len" && v) {
      o.seq_len = std::atoll(v);
    } else if (a == "--layers" && v) {
      o.layers = std::atoi(v);
    } else if (a == "--precision" && v) {
      const std::string p = v;
      o.precisions = p == "fast"    ? std::vector{Precision::Fast}
                     : p == "exact" ? std::vector{Precision::Exact}
                                    : std::vector{Precision::Fast, Precision::Exact};
    } else {
      fmt::print(stderr,
                 "usage: cpu_ops_bench [--threads N] [--tokens T] [--seq-len L] [--layers N] "
                 "[--precision fast|exact|both]\n");
      return 2;
    }
    ++i;
  }
  for (const Precision p : o.precisions) bench_precision(p, o);
  return 0;
}

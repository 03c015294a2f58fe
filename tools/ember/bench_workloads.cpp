#include "bench_workloads.h"

namespace ember::cli {

namespace {
constexpr int32_t kEndOfText = 151643;
}

std::vector<int64_t> mixed_lengths(int64_t count, int64_t low, int64_t high) {
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < count; ++i) lengths.push_back(low + (i * 7919) % (high - low + 1));
  return lengths;
}

Sequence synthetic_tokens(int64_t n, int64_t salt) {
  Sequence s;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const uint64_t v = static_cast<uint64_t>(i) * 2654435761ull + static_cast<uint64_t>(salt) * 40503ull;
    s.push_back(static_cast<int32_t>(v % static_cast<uint64_t>(kEndOfText)));
  }
  s.push_back(kEndOfText);
  return s;
}

double sequence_flops(const ModelConfig& c, int64_t n) {
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double h = static_cast<double>(c.hidden_size);
  const double per_layer_weights = h * (2 * q + 2 * kv) + 3.0 * h * static_cast<double>(c.intermediate_size);
  const double nn = static_cast<double>(n);
  return static_cast<double>(c.num_hidden_layers) * (2.0 * per_layer_weights * nn + 4.0 * q * nn * (nn + 1) / 2);
}

}  // namespace ember::cli

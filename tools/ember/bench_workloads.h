#pragma once
// Synthetic inputs for `ember bench`. bench/workloads.py builds the same sequences for the
// transformers baseline: keep the formulas equal.
#include <cstdint>
#include <vector>

#include "ember/model_config.h"

namespace ember::cli {

using Sequence = std::vector<int32_t>;

// `count` lengths spread evenly over [low, high], without an RNG so C++ and Python agree.
std::vector<int64_t> mixed_lengths(int64_t count, int64_t low, int64_t high);
// n ordinary vocabulary ids ending in <|endoftext|>; `salt` varies the content.
Sequence synthetic_tokens(int64_t n, int64_t salt);
inline Sequence synthetic_query(int64_t n) { return synthetic_tokens(n, 7); }

// Forward-pass FLOPs of one sequence of n tokens: 2 per weight per token in the projections,
// plus QK^T and PV over the causal triangle.
double sequence_flops(const ModelConfig& c, int64_t n);

}  // namespace ember::cli

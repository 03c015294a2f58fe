#pragma once
// The weight checksum of tests/golden/hf_golden.py: per tensor, the sum over elements of
// (float32 bit pattern) * (index + 1); over tensors in name order, c = c * 31 + tensor_sum;
// all mod 2^64. Equal checksums prove ember and transformers ran on the same weights.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "model/make_model.h"
#include "model/weights.h"

namespace ember_test {
using namespace ember;

inline uint64_t tensor_checksum(const float* values, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum += uint64_t{std::bit_cast<uint32_t>(values[i])} * (i + 1);
  return sum;
}

inline std::vector<GeneratedTensor> tensors_by_name(const ModelConfig& config) {
  auto tensors = generated_tensors(config);
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return tensors;
}

// Checksum of the weights a generated model should have, straight from the formula.
inline uint64_t formula_checksum(const ModelConfig& config, uint64_t seed) {
  uint64_t checksum = 0;
  for (const auto& t : tensors_by_name(config)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<float> values(n);
    for (int64_t i = 0; i < n; ++i) values[i] = generated_weight(t.name, i, seed, t.fan_in, t.is_norm);
    checksum = checksum * 31 + tensor_checksum(values.data(), values.size());
  }
  return checksum;
}

// Checksum of the weights as stored in a model folder, whatever their dtype and layout.
inline uint64_t stored_checksum(const WeightStore& store, const ModelConfig& config) {
  uint64_t checksum = 0;
  for (const auto& t : tensors_by_name(config)) {
    const Tensor stored = store.get(t.name, t.shape);
    std::vector<float> values(stored.numel());
    convert(stored.data, stored.dtype, values.data(), DType::F32, values.size());
    checksum = checksum * 31 + tensor_checksum(values.data(), values.size());
  }
  return checksum;
}

}  // namespace ember_test

#pragma once
// Host tensors filled with reproducible values, for the backend parity tests.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace ember_test {

using Values = std::vector<float>;

inline Values random_values(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Values v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// A host tensor (as a safetensors view would be) holding `v` converted to `dt`.
inline ember::Tensor host_tensor(ember::DType dt, std::vector<int64_t> shape, const Values& v) {
  ember::Tensor t;
  t.dtype = dt;
  t.shape = std::move(shape);
  t.storage = std::shared_ptr<void>(std::malloc(t.nbytes()), &std::free);
  t.data = t.storage.get();
  ember::convert(v.data(), ember::DType::F32, t.data, dt, v.size());
  return t;
}

}  // namespace ember_test

#pragma once
// out = x · w^T through oneDNN matmul. The weight stays in its checkpoint layout, [N, K] row-major,
// which oneDNN reads as a transposed ("ba") B, so fast precision multiplies the mapped bf16 file in
// place. Measured on the target CPU (Zen 5, 2 threads, bf16), the 7 GEMMs of 28 Qwen3-0.6B layers
// with distinct, cache-cold weights take 495 ms at T = 512 in place against 465 ms with weights
// reordered to oneDNN's blocked layout (6%; 5% at T = 2048, 20% at T = 64). The reorder would cost
// ~220 ms of load time (fp32: ~330 ms) and a second copy of the weights (1.2 GB), against a 1 s
// load-to-first-embedding budget, so weights stay as they are.
// Primitives are cached per shape: M changes with every batch, and a runtime-M primitive falls
// back to a slower generic kernel (~665 against ~1000 GFLOP/s at T = 4096).
#include <cstdint>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/dtype.h"

namespace ember::cpu {

class Gemm {
 public:
  Gemm();

  // out: [m, n] = x: [m, k] · w: [n, k]^T; all three F32, or all three BF16 (fp32 accumulation).
  void run(const void* x, const void* w, void* out, int64_t m, int64_t k, int64_t n, DType dt);

 private:
  struct Entry {
    dnnl::matmul prim;
    dnnl::memory::desc src, wei, dst;
  };
  const Entry& get(int64_t m, int64_t k, int64_t n, DType dt);

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<std::tuple<int64_t, int64_t, int64_t, DType>, Entry> cache_;
};

}  // namespace ember::cpu

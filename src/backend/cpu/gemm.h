#pragma once
// out = x · w^T through oneDNN matmul. The weight stays in its checkpoint layout, [N, K]
// row-major, which oneDNN reads as a transposed ("ba") B: measured on the target CPU
// (2 threads, T = 512, bf16) that runs at ~990 GFLOP/s against ~1040 GFLOP/s for oneDNN's own
// blocked layout, so reordering at load (a full copy of the weights, ~1.2 GB and ~150 ms for
// the 0.6B model) is not worth 5%. Primitives are cached per shape: M changes with every batch
// and a runtime-M primitive falls back to a slower generic kernel (~665 vs ~1000 GFLOP/s).
#include <cstdint>
#include <map>
#include <tuple>

#include <oneapi/dnnl/dnnl.hpp>

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

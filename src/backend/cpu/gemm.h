#pragma once
// out = x · w^T through oneDNN matmul, with the weight in one of two layouts:
//  - in place: the checkpoint's [N, K] row-major matrix, which oneDNN reads as a transposed ("ba")
//    B. Used whenever the stored dtype is already the compute dtype (bf16 checkpoints in fast
//    precision, fp32 in exact), so the mapped file is multiplied without a copy.
//  - packed: oneDNN's own blocked layout, for weights that must be converted anyway (bf16/f16
//    checkpoints in exact precision, f32/f16 in fast): the conversion writes the blocked layout
//    directly, for the same load time and memory as a plain copy.
// Measured on the target CPU (Zen 5, 2 threads), the 7 GEMMs of 28 Qwen3-0.6B layers with
// distinct, cache-cold weights, in place -> packed: bf16 T=16 42.6 -> 26.6 ms, T=64 82 -> 66 ms,
// T=512 495 -> 465 ms, T=2048 1887 -> 1801 ms; fp32 T=16 75 -> 53 ms, T=512 1058 -> 964 ms.
// Packing bf16 weights that could be used in place would cost ~220 ms of load time and a second
// 1.2 GB copy (whose page faults alone take ~0.8 s in this VM) against a 1 s load-to-first-
// embedding budget, so fast precision keeps bf16 checkpoints in place.
// Primitives are cached per shape: M changes with every batch, and a runtime-M primitive falls
// back to a slower generic kernel (~665 against ~1000 GFLOP/s at T = 4096).
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/dtype.h"

namespace ember::cpu {

class Gemm {
 public:
  Gemm();

  // Bytes of an [n, k] weight packed for compute dtype `dt`.
  size_t packed_bytes(int64_t n, int64_t k, DType dt);
  // One [rows, k] row-major block of a weight (F32, F16 or BF16).
  struct Part {
    const void* data;
    DType dtype;
    int64_t rows;
  };
  // dst (packed_bytes of [sum of rows, k]) = the parts stacked row-wise, converted to dt and packed.
  void pack(const std::vector<Part>& parts, int64_t k, DType dt, void* dst);

  // out: [m, n] = x: [m, k] · w^T, w being [n, k] row-major or, if `packed`, from pack(); x, out
  // and the compute type of w all F32, or all BF16 (fp32 accumulation).
  void run(const void* x, const void* w, bool packed, void* out, int64_t m, int64_t k, int64_t n, DType dt);

 private:
  struct Entry {
    dnnl::matmul prim;
    dnnl::memory::desc src, wei, dst;
  };
  const Entry& get(int64_t m, int64_t k, int64_t n, DType dt, bool packed);
  const dnnl::memory::desc& packed_desc(int64_t k, int64_t n, DType dt);

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<std::tuple<int64_t, int64_t, int64_t, DType, bool>, Entry> cache_;
  std::map<std::tuple<int64_t, int64_t, DType>, dnnl::memory::desc> packed_descs_;
  std::vector<unsigned char> plain_;  // stacked parts before packing; kept, as faulting in pages is slow
};

}  // namespace ember::cpu

#pragma once
// bf16 GEMMs through cuBLASLt with fp32 accumulation. A plan (descriptors + the heuristic's
// algorithm) is made once per shape and operand alignment and reused; the workspace is allocated
// once, so calls are safe to record in a CUDA graph.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/device_memory.h"

namespace ember::cuda {

class Gemm {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  explicit Gemm(const std::shared_ptr<MemoryCounter>& counter);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // out: [m, n] = x: [m, k] · w: [n, k]^T, all row-major bf16
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* out, int64_t m, int64_t n, int64_t k,
           cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (m, n, k, alignment of w, x, out in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;

  Plan& plan(const Key& key);
  static void destroy(Plan& p);

  cublasLtHandle_t handle_ = nullptr;
  std::shared_ptr<void> workspace_;
  std::map<Key, Plan> plans_;
};

}  // namespace ember::cuda

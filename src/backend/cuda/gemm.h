#pragma once
// bf16 or fp16 GEMMs through cuBLASLt with fp32 accumulation. A plan (descriptors + algorithm) is made
// once per shape and operand alignment and reused; the workspace is allocated once, so calls are
// safe to record in a CUDA graph. The algorithm is the fastest of the heuristic's first
// candidates, timed once per shape class (M rounded up to a power of two, N, K, alignments) on the
// call's own operands: the heuristic's first choice is often not the fastest, most of all for
// the few-token batches where a GEMM is a read of its weights.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/device_memory.h"
#include "core/dtype.h"

namespace ember::cuda {

class Gemm {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  // Operands of `dtype` (BF16 or F16). tune = false takes the heuristic's first choice everywhere.
  Gemm(const std::shared_ptr<MemoryCounter>& counter, bool tune = true, DType dtype = DType::BF16);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // out: [m, n] = x: [m, k] · w: [n, k]^T, all row-major in the constructor's dtype
  void run(const void* x, const void* w, void* out, int64_t m, int64_t n, int64_t k, cudaStream_t stream);

  // One line per tuned shape class: the heuristic's first choice against the fastest candidate.
  const std::vector<std::string>& tuning_log() const { return tuning_log_; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (m, n, k, alignment of w, x, out in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;

  Plan& plan(const Key& key, const void* x, const void* w, void* out, cudaStream_t stream);
  // The fastest of `candidates` on these operands, in microseconds per call through `us`.
  int fastest(const Plan& p, const std::vector<cublasLtMatmulHeuristicResult_t>& candidates, int reps, const void* x,
              const void* w, void* out, cudaStream_t stream, std::vector<double>& us);
  void launch(const Plan& p, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* out,
              cudaStream_t stream, cublasStatus_t* status);
  static void destroy(Plan& p);

  cublasLtHandle_t handle_ = nullptr;
  bool tune_;
  DType dtype_;
  cudaDataType_t type_;
  std::shared_ptr<void> workspace_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::map<Key, Plan> plans_;
  std::map<Key, cublasLtMatmulAlgo_t> tuned_;  // by shape class: M is a power of two
  std::vector<std::string> tuning_log_;
};

}  // namespace ember::cuda

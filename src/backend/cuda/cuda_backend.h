#pragma once
#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace ember {

struct CudaBackendOptions {
  bool use_graphs = true;            // record run_forward() as CUDA graphs and replay them
  int64_t max_graph_tokens = 4096;   // larger batches run eagerly
  size_t graph_cache_entries = 64;   // recorded batch shapes kept (least recently used dropped)
  bool tune_gemms = true;            // time cuBLASLt's candidate algorithms once per GEMM shape class
};

// The CUDA backend: activations and matrix weights in `half_type` (bf16, or fp16) on device
// `device_index` (norm vectors fp32), cuBLASLt GEMMs with fp32 accumulation, fused kernels for
// the rest. Checkpoint weights of any dtype are converted on upload; with fp16, a weight value
// beyond fp16's range throws ember::Error. Fast precision only: Precision::Exact throws.
std::unique_ptr<Backend> make_cuda_backend(Precision precision, HalfType half_type, int device_index,
                                           const CudaBackendOptions& options = {});

}  // namespace ember

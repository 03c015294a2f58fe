#include "backend/cuda/gemm_peak.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"

namespace ember {

double measure_cublas_peak_tflops(int device_index) {
  using namespace cuda;
  constexpr int64_t kTokens = 16384;
  // (K, N) of q_proj, k/v_proj, o_proj, gate/up_proj and down_proj of Qwen3-Embedding-4B.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {2560, 4096}, {2560, 1024}, {4096, 2560}, {2560, 9728}, {9728, 2560}};
  int64_t max_k = 0, max_n = 0, max_w = 0;
  for (const auto& [k, n] : shapes) {
    max_k = std::max(max_k, k);
    max_n = std::max(max_n, n);
    max_w = std::max(max_w, k * n);
  }
  check(cudaSetDevice(device_index), "cudaSetDevice");
  auto counter = std::make_shared<MemoryCounter>();
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  struct Cleanup {
    cudaStream_t& s;
    cudaEvent_t &a, &b;
    ~Cleanup() {
      if (a) cudaEventDestroy(a);
      if (b) cudaEventDestroy(b);
      cudaStreamDestroy(s);
    }
  } cleanup{stream, start, stop};
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");

  const auto x = device_alloc(kTokens * max_k * 2, counter, "the GEMM benchmark input");
  const auto w = device_alloc(max_w * 2, counter, "the GEMM benchmark weights");
  const auto out = device_alloc(kTokens * max_n * 2, counter, "the GEMM benchmark output");
  auto* xp = static_cast<bf16*>(x.get());
  auto* wp = static_cast<bf16*>(w.get());
  auto* op = static_cast<bf16*>(out.get());
  fill_random(xp, kTokens * max_k, 1, stream);
  fill_random(wp, max_w, 2, stream);
  Gemm gemm(counter);

  double best = 0.0;
  for (const auto& [k, n] : shapes) {
    constexpr int kWarmup = 2, kRuns = 8;
    for (int i = 0; i < kWarmup; ++i) gemm.run(xp, wp, op, kTokens, n, k, stream);
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int i = 0; i < kRuns; ++i) gemm.run(xp, wp, op, kTokens, n, k, stream);
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "timing the GEMM benchmark");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    const double flops = 2.0 * static_cast<double>(kTokens) * static_cast<double>(n) * static_cast<double>(k) * kRuns;
    best = std::max(best, flops / (ms * 1e-3) / 1e12);
  }
  return best;
}

}  // namespace ember

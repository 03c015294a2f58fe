// Times the CUDA attention kernels on the Qwen3-Embedding-4B attention shape (Hq 32, Hkv 8,
// D 128) for packed batches, and prints ms and TFLOP/s counting causal work only
// (4 * Hq * D * n(n+1)/2 per sequence). Where both kernels run it also prints the largest
// difference between their outputs, a cheap cross-check on shapes too big for the CPU test.
//   usage: cuda_attention_bench [reps_scale]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/attention.h"
#include "ember/error.h"

namespace {

using ember::cuda::AttentionKernel;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

__global__ void fill_random(__nv_bfloat16* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16(scale * (static_cast<float>(h) * (2.0f / 4294967296.0f) - 1.0f));
  }
}

struct Workload {
  const char* name;
  int seqs, len;
};

}  // namespace

int main(int argc, char** argv) {
  const double reps_scale = argc > 1 ? std::atof(argv[1]) : 1.0;
  constexpr int kHq = 32, kHkv = 8, kD = 128;
  const Workload workloads[] = {{"32 x 512", 32, 512}, {"1 x 32768", 1, 32768}, {"256 x 32", 256, 32},
                                {"8 x 4096", 8, 4096}, {"1 x 8192", 1, 8192}};

  int dev = 0, major = 0, minor = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  major = prop.major;
  minor = prop.minor;
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, major, minor, prop.multiProcessorCount);
  std::vector<AttentionKernel> kernels{AttentionKernel::Mma};
  std::vector<const char*> names{"mma"};
  if (major == 9 && minor == 0) {
    kernels.push_back(AttentionKernel::Wgmma);
    names.push_back("wgmma");
  }

  int64_t max_tokens = 0;
  for (const Workload& w : workloads) max_tokens = std::max<int64_t>(max_tokens, int64_t{w.seqs} * w.len);
  __nv_bfloat16 *q, *k, *v, *out[2];
  int32_t* offsets;
  check(cudaMalloc(&q, max_tokens * kHq * kD * 2), "cudaMalloc");
  check(cudaMalloc(&k, max_tokens * kHkv * kD * 2), "cudaMalloc");
  check(cudaMalloc(&v, max_tokens * kHkv * kD * 2), "cudaMalloc");
  for (auto& o : out) check(cudaMalloc(&o, max_tokens * kHq * kD * 2), "cudaMalloc");
  check(cudaMalloc(&offsets, 4 * 1024), "cudaMalloc");
  fill_random<<<1024, 256>>>(q, max_tokens * kHq * kD, 1, 3.0f);
  fill_random<<<1024, 256>>>(k, max_tokens * kHkv * kD, 2, 1.0f);
  fill_random<<<1024, 256>>>(v, max_tokens * kHkv * kD, 3, 1.0f);
  check(cudaDeviceSynchronize(), "fill");

  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::printf("%-10s %-12s %10s %10s\n", "workload", "kernel", "ms", "TFLOP/s");
  for (const Workload& w : workloads) {
    std::vector<int32_t> offs(w.seqs + 1);
    for (int s = 0; s <= w.seqs; ++s) offs[s] = s * w.len;
    check(cudaMemcpy(offsets, offs.data(), offs.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    const int64_t tokens = int64_t{w.seqs} * w.len;
    const double flops = 4.0 * kHq * kD * (static_cast<double>(w.len) * (w.len + 1) / 2) * w.seqs;
    for (size_t ki = 0; ki < kernels.size(); ++ki) {
      auto launch = [&] {
        ember::cuda::attention_varlen_with(kernels[ki], q, k, v, out[ki], offsets, w.seqs, tokens, w.len, kHq, kHkv,
                                           kD, nullptr);
      };
      try {
        launch();
        check(cudaDeviceSynchronize(), "warm-up");
        cudaEventRecord(start);
        launch();
        cudaEventRecord(stop);
        check(cudaEventSynchronize(stop), "timing");
        float once = 0;
        cudaEventElapsedTime(&once, start, stop);
        const int reps = std::max(3, static_cast<int>(reps_scale * 300.0 / std::max(once, 0.01f)));
        cudaEventRecord(start);
        for (int r = 0; r < reps; ++r) launch();
        cudaEventRecord(stop);
        check(cudaEventSynchronize(stop), "timing");
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        ms /= reps;
        std::printf("%-10s %-12s %10.3f %10.1f\n", w.name, names[ki], ms, flops / (ms * 1e-3) / 1e12);
      } catch (const ember::Error& e) {
        std::printf("%-10s %-12s failed: %s\n", w.name, names[ki], e.what());
      }
    }
    for (size_t ki = 1; ki < kernels.size(); ++ki) {
      const int64_t n = tokens * kHq * kD;
      std::vector<uint16_t> a(n), b(n);
      check(cudaMemcpy(a.data(), out[0], n * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
      check(cudaMemcpy(b.data(), out[ki], n * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
      double worst = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        float fa, fb;
        const uint32_t ua = uint32_t{a[i]} << 16, ub = uint32_t{b[i]} << 16;
        std::memcpy(&fa, &ua, 4);
        std::memcpy(&fb, &ub, 4);
        const double d = std::fabs(static_cast<double>(fa) - fb);
        worst = std::isnan(d) ? INFINITY : std::max(worst, d);
      }
      std::printf("%-10s mma vs %s: max |diff| %.3g\n", w.name, names[ki], worst);
    }
  }
  return 0;
}

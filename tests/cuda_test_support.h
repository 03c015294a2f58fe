#pragma once
// CUDA tests skip, with the reason, where the CUDA backend cannot run (no GPU, or not sm_90).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>

namespace ember_test {

// Empty when the CUDA backend can run here, else why not.
inline std::string cuda_unavailable() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return "no CUDA device";
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  if (prop.major != 9 || prop.minor != 0) return std::string("the CUDA backend needs sm_90, device 0 is ") + prop.name;
  return "";
}

}  // namespace ember_test

#define REQUIRE_CUDA()                                          \
  do {                                                          \
    const std::string why = ember_test::cuda_unavailable();     \
    if (!why.empty()) GTEST_SKIP() << why << ": skipping";      \
  } while (0)

#include "backend/cuda/device_memory.h"

#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_check.h"

namespace ember::cuda {

std::shared_ptr<void> device_alloc(size_t bytes, const std::shared_ptr<MemoryCounter>& counter, const char* what) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // cudaMalloc failures are not sticky; clear them for the next call
    throw Error(std::string("CUDA backend: cannot allocate ") + std::to_string(bytes) + " bytes of device memory for " +
                what + ": " + cudaGetErrorString(status) + " (" + std::to_string(counter->bytes.load() >> 20) +
                " MiB already held; try a smaller --max-batch-tokens)");
  }
  counter->bytes += static_cast<int64_t>(bytes);
  return std::shared_ptr<void>(p, [counter, bytes](void* q) {
    cudaFree(q);
    counter->bytes -= static_cast<int64_t>(bytes);
  });
}

}  // namespace ember::cuda

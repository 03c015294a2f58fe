#pragma once
// Device allocations that count themselves: every byte the CUDA backend holds on the device goes
// through device_alloc(), so device_memory_bytes() is one atomic read. The counter is shared with
// each allocation's deleter, so tensors may outlive the backend that made them.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ember::cuda {

struct MemoryCounter {
  std::atomic<int64_t> bytes{0};
};

// `bytes` of device memory on the current device, freed when the last owner lets go.
std::shared_ptr<void> device_alloc(size_t bytes, const std::shared_ptr<MemoryCounter>& counter, const char* what);

}  // namespace ember::cuda

#pragma once
// Moving weights from the memory-mapped safetensors files to the device quickly: all weights live
// in a few large arena blocks, and the bytes travel through pinned staging buffers that several
// host threads fill while the copy engine drains the previous ones (plus a conversion kernel when
// the source dtype is not the device's).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_memory.h"
#include "core/dtype.h"
#include "ember/error.h"

namespace ember::cuda {

// Bump allocation of weights out of 256 MiB device blocks (a tensor larger than a quarter block
// gets a block of its own), so a model costs tens of cudaMallocs, not thousands.
class WeightArena {
 public:
  explicit WeightArena(std::shared_ptr<MemoryCounter> counter) : counter_(std::move(counter)) {}
  // 256-byte aligned device memory; the pointer keeps its block alive.
  std::shared_ptr<void> take(size_t bytes);

 private:
  std::shared_ptr<MemoryCounter> counter_;
  std::shared_ptr<void> block_;
  size_t used_ = 0, size_ = 0;
};

// A weight value that F16 cannot hold, found while staging an upload into F16.
class F16RangeError : public Error {
 public:
  using Error::Error;
};

class WeightUploader {
 public:
  explicit WeightUploader(std::shared_ptr<MemoryCounter> counter);
  ~WeightUploader();
  WeightUploader(const WeightUploader&) = delete;
  WeightUploader& operator=(const WeightUploader&) = delete;

  // dst: [n] device (F32, F16 or BF16) <- src: [n] host (F32, F16 or BF16). Returns once `src`
  // has been read; the device side completes by finish(). Throws F16RangeError, naming the element,
  // when dst is F16 and a finite F32/BF16 value would overflow it (the check runs on the host
  // copies as they are staged, so only uploads into F16 pay for it).
  void upload(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);
  // Waits for every upload to land and releases the staging buffers. Cheap when nothing is pending.
  void finish();
  bool pending() const { return !slots_.empty(); }

 private:
  struct Item {
    size_t offset, bytes;  // in the slot's staging buffer
    DType src_dtype;
    void* dst;
    DType dst_dtype;
  };
  struct Slot {
    void* pinned = nullptr;
    std::shared_ptr<void> device;  // conversion staging, only once a slot stages F16/F32 data
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    size_t used = 0;
    bool in_flight = false;
    std::vector<Item> items;
  };

  Slot& writable_slot();
  void flush(Slot& slot);
  void drop_unsent(const void* dst, size_t bytes);
  void release();

  std::shared_ptr<MemoryCounter> counter_;
  std::vector<Slot> slots_;
  size_t current_ = 0;
};

}  // namespace ember::cuda

#include "backend/cuda/weight_upload.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace ember::cuda {
namespace {

constexpr size_t kBlockBytes = size_t{256} << 20;
constexpr size_t kAlign = 256;
// Staging: four 64 MiB pinned buffers keep the copy engine busy while the host fills the next.
constexpr size_t kSlotBytes = size_t{64} << 20;
constexpr size_t kSlots = 4;
// Host copies from the mapped file run on this many threads in pieces of kCopyPiece bytes; the
// page faults of a mapped file, not memcpy, bound a single thread.
constexpr int kCopyThreads = 8;
constexpr size_t kCopyPiece = size_t{1} << 20;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

void parallel_copy(void* dst, const void* src, size_t bytes) {
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
  const int64_t pieces = static_cast<int64_t>((bytes + kCopyPiece - 1) / kCopyPiece);
  const int threads = static_cast<int>(std::min<int64_t>({pieces, kCopyThreads, omp_get_num_procs()}));
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t p = 0; p < pieces; ++p) {
    const size_t begin = static_cast<size_t>(p) * kCopyPiece;
    std::memcpy(d + begin, s + begin, std::min(kCopyPiece, bytes - begin));
  }
}

// Starts the kernel's read-ahead of a mapped range we are about to copy; a hint only.
void will_need(const void* p, size_t bytes) {
  static const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

}  // namespace

std::shared_ptr<void> WeightArena::take(size_t bytes) {
  const size_t need = round_up(std::max<size_t>(bytes, 1), kAlign);
  if (need > kBlockBytes / 4 && need > size_ - used_) {
    return device_alloc(need, counter_, "weights");
  }
  if (!block_ || need > size_ - used_) {
    block_ = device_alloc(kBlockBytes, counter_, "weights");
    size_ = kBlockBytes;
    used_ = 0;
  }
  void* p = static_cast<char*>(block_.get()) + used_;
  used_ += need;
  return std::shared_ptr<void>(block_, p);
}

WeightUploader::WeightUploader(std::shared_ptr<MemoryCounter> counter) : counter_(std::move(counter)) {}

WeightUploader::~WeightUploader() {
  for (Slot& s : slots_) {
    if (s.in_flight) cudaEventSynchronize(s.done);
  }
  release();
}

void WeightUploader::release() {
  for (Slot& s : slots_) {
    if (s.pinned) cudaFreeHost(s.pinned);
    if (s.done) cudaEventDestroy(s.done);
    if (s.stream) cudaStreamDestroy(s.stream);
  }
  slots_.clear();
  current_ = 0;
}

// The current slot, ready to take bytes: created on first use, or waited for if its last
// copy is still in flight.
WeightUploader::Slot& WeightUploader::writable_slot() {
  if (slots_.empty()) slots_.resize(kSlots);
  Slot& s = slots_[current_];
  if (s.pinned == nullptr) {
    check(cudaHostAlloc(&s.pinned, kSlotBytes, cudaHostAllocDefault), "allocating pinned staging memory");
    check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate (weight upload)");
    check(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming), "cudaEventCreate (weight upload)");
  }
  if (s.in_flight) {
    check(cudaEventSynchronize(s.done), "copying weights to the device");
    s.in_flight = false;
    s.used = 0;
    s.items.clear();
  }
  return s;
}

void WeightUploader::flush(Slot& s) {
  if (s.items.empty()) return;
  for (const Item& item : s.items) {
    const char* staged = static_cast<const char*>(s.pinned) + item.offset;
    if (item.src_dtype == item.dst_dtype) {
      check(cudaMemcpyAsync(item.dst, staged, item.bytes, cudaMemcpyHostToDevice, s.stream), "copying weights");
      continue;
    }
    if (!s.device) s.device = device_alloc(kSlotBytes, counter_, "weight conversion staging");
    char* dev = static_cast<char*>(s.device.get()) + item.offset;
    check(cudaMemcpyAsync(dev, staged, item.bytes, cudaMemcpyHostToDevice, s.stream), "copying weights");
    convert(dev, item.src_dtype, item.dst, item.dst_dtype,
            static_cast<int64_t>(item.bytes / dtype_size(item.src_dtype)), s.stream);
  }
  check(cudaEventRecord(s.done, s.stream), "cudaEventRecord (weight upload)");
  s.in_flight = true;
  current_ = (current_ + 1) % slots_.size();
}

void WeightUploader::upload(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  const size_t src_size = dtype_size(src_dtype), dst_size = dtype_size(dst_dtype);
  const size_t total = static_cast<size_t>(n) * src_size;
  if (total == 0) return;
  will_need(src, total);
  size_t done = 0;
  while (done < total) {
    Slot& s = writable_slot();
    const size_t room = (kSlotBytes - s.used) / src_size * src_size;
    if (room == 0) {
      flush(s);
      continue;
    }
    const size_t piece = std::min(total - done, room);
    parallel_copy(static_cast<char*>(s.pinned) + s.used, static_cast<const char*>(src) + done, piece);
    s.items.push_back(Item{s.used, piece, src_dtype, static_cast<char*>(dst) + done / src_size * dst_size, dst_dtype});
    s.used = std::min(kSlotBytes, round_up(s.used + piece, kAlign));
    done += piece;
    if (s.used == kSlotBytes) flush(s);
  }
}

void WeightUploader::finish() {
  if (slots_.empty()) return;
  flush(slots_[current_]);
  for (Slot& s : slots_) {
    if (s.in_flight) check(cudaEventSynchronize(s.done), "copying weights to the device");
    s.in_flight = false;
  }
  release();
}

}  // namespace ember::cuda

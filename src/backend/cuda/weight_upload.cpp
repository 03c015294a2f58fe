#include "backend/cuda/weight_upload.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>

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

// The first of x: [n] (F32 or BF16 bit patterns) that is finite but rounds to inf in F16
// (|x| >= 65520, half an ulp above the largest F16, 65504), or -1. The range test is one unsigned
// comparison, so the pass over all of x vectorises (memory speed, 5x a two-sided test); the
// search only runs once it has found something.
template <class Bits, Bits kMagnitude, Bits kFirstBeyond, Bits kInf>
int64_t first_beyond_f16(const Bits* x, size_t n) {
  const auto beyond = [](Bits b) {
    return static_cast<Bits>((b & kMagnitude) - kFirstBeyond) < static_cast<Bits>(kInf - kFirstBeyond);
  };
  Bits any = 0;
  for (size_t i = 0; i < n; ++i) any |= beyond(x[i]);
  if (!any) return -1;
  for (size_t i = 0;; ++i) {
    if (beyond(x[i])) return static_cast<int64_t>(i);
  }
}

int64_t first_beyond_f16(const void* x, DType dtype, size_t bytes) {
  if (dtype == DType::BF16) {
    return first_beyond_f16<uint16_t, 0x7fff, 0x4780, 0x7f80>(static_cast<const uint16_t*>(x), bytes / 2);
  }
  return first_beyond_f16<uint32_t, 0x7fffffffu, 0x477ff000u, 0x7f800000u>(static_cast<const uint32_t*>(x), bytes / 4);
}

// Copies `bytes` of elements of `dtype`; with check_f16, also returns the index of the first
// element F16 cannot hold (first_beyond_f16), else -1. Each thread checks the piece it has just
// copied, while it is still in cache.
int64_t parallel_copy(void* dst, const void* src, size_t bytes, DType dtype, bool check_f16) {
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
  const int64_t pieces = static_cast<int64_t>((bytes + kCopyPiece - 1) / kCopyPiece);
  const int threads = static_cast<int>(std::min<int64_t>({pieces, kCopyThreads, omp_get_num_procs()}));
  constexpr int64_t kNone = INT64_MAX;
  int64_t first = kNone;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) reduction(min : first)
  for (int64_t p = 0; p < pieces; ++p) {
    const size_t begin = static_cast<size_t>(p) * kCopyPiece;
    const size_t size = std::min(kCopyPiece, bytes - begin);
    std::memcpy(d + begin, s + begin, size);
    if (check_f16 && first == kNone) {
      const int64_t i = first_beyond_f16(d + begin, dtype, size);
      if (i >= 0) first = static_cast<int64_t>(begin / dtype_size(dtype)) + i;
    }
  }
  return first == kNone ? -1 : first;
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
  const bool check_f16 = dst_dtype == DType::F16 && src_dtype != DType::F16;
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
    char* staged = static_cast<char*>(s.pinned) + s.used;
    if (const int64_t bad = parallel_copy(staged, static_cast<const char*>(src) + done, piece, src_dtype, check_f16);
        bad >= 0) {
      float value = 0.0f;
      ember::convert(staged + bad * src_size, src_dtype, &value, DType::F32, 1);
      char text[32];
      std::snprintf(text, sizeof text, "%g", value);
      drop_unsent(dst, static_cast<size_t>(n) * dst_size);
      throw F16RangeError("element " + std::to_string(done / src_size + bad) + " is " + text +
                          ", beyond float16's range (largest 65504)");
    }
    s.items.push_back(Item{s.used, piece, src_dtype, static_cast<char*>(dst) + done / src_size * dst_size, dst_dtype});
    s.used = std::min(kSlotBytes, round_up(s.used + piece, kAlign));
    done += piece;
    if (s.used == kSlotBytes) flush(s);
  }
}

// A failed upload's destination may be freed as the error unwinds: its pieces staged in the
// current slot but not yet sent (the slot's last items) must never be sent. Pieces already sent
// are harmless: freeing device memory waits for the copies into it.
void WeightUploader::drop_unsent(const void* dst, size_t bytes) {
  Slot& s = slots_[current_];
  const char* begin = static_cast<const char*>(dst);
  while (!s.items.empty() && static_cast<const char*>(s.items.back().dst) >= begin &&
         static_cast<const char*>(s.items.back().dst) < begin + bytes) {
    s.items.pop_back();
  }
  s.used = s.items.empty() ? 0 : round_up(s.items.back().offset + s.items.back().bytes, kAlign);
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

#pragma once
// Recorded forward passes: one CUDA graph per batch shape, replayed instead of launching the
// ~12 kernels per layer one by one. Least recently used graphs are dropped past the capacity.
// A shape's first run is eager: it loads every kernel module and makes every GEMM plan outside
// the recording, so nothing during a capture needs to allocate, load or synchronise.
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <tuple>
#include <utility>

namespace ember::cuda {

class GraphCache {
 public:
  // (tokens, sequences, longest sequence): everything a recording bakes in besides buffer
  // addresses, which the backend keeps fixed (clear() when they change).
  using Key = std::tuple<int64_t, int64_t, int64_t>;

  explicit GraphCache(size_t capacity) : capacity_(capacity) {}
  ~GraphCache() { clear(); }
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;

  // Runs `ops` (which must enqueue all their work on `stream`): eagerly the first time `key` is
  // seen, then recorded once and replayed.
  void run(const Key& key, cudaStream_t stream, const std::function<void()>& ops);
  void clear();
  size_t size() const { return lru_.size(); }

 private:
  size_t capacity_;
  std::list<std::pair<Key, cudaGraphExec_t>> lru_;  // most recently used first
  std::map<Key, std::list<std::pair<Key, cudaGraphExec_t>>::iterator> index_;
  std::set<Key> seen_;  // shapes that have run eagerly once
};

}  // namespace ember::cuda

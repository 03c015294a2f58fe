#include "backend/cuda/graph_cache.h"

#include <string>

#include "backend/cuda/cuda_check.h"

namespace ember::cuda {
namespace {

constexpr size_t kMaxSeen = 1 << 16;

cudaGraphExec_t record(cudaStream_t stream, const std::function<void()>& ops) {
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "starting a CUDA graph capture");
  cudaGraph_t graph = nullptr;
  try {
    ops();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (ended != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw Error(std::string("CUDA backend: recording the forward pass as a CUDA graph failed: ") +
                cudaGetErrorName(ended) + " (" + cudaGetErrorString(ended) +
                "); an op used the device outside the backend's stream or synchronised during the recording");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(made, "cudaGraphInstantiate");
  return exec;
}

}  // namespace

void GraphCache::run(const Key& key, cudaStream_t stream, const std::function<void()>& ops) {
  auto it = index_.find(key);
  if (it == index_.end() && seen_.insert(key).second) {
    // Batch shapes vary without bound in a server; the set only decides whether to warm up.
    if (seen_.size() > kMaxSeen) seen_ = {key};
    ops();
    return;
  }
  if (it == index_.end()) {
    const cudaGraphExec_t exec = record(stream, ops);
    lru_.emplace_front(key, exec);
    index_[key] = lru_.begin();
    if (lru_.size() > capacity_) {
      cudaGraphExecDestroy(lru_.back().second);
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  } else {
    lru_.splice(lru_.begin(), lru_, it->second);
  }
  check(cudaGraphLaunch(lru_.front().second, stream), "cudaGraphLaunch");
}

void GraphCache::clear() {
  for (auto& [key, exec] : lru_) cudaGraphExecDestroy(exec);
  lru_.clear();
  index_.clear();
}

}  // namespace ember::cuda

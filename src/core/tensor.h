#pragma once
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace ember {

// A dense, row-major, contiguous view with shared ownership of its storage. `data` is a host
// pointer for the CPU backend and a device pointer for the CUDA backend; `storage` keeps the
// memory alive (a mapped file, a host or device allocation) and may be shared by many views.
struct Tensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  void* data = nullptr;
  std::shared_ptr<void> storage;

  int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  template <class T>
  T* as() const { return static_cast<T*>(data); }
};

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace ember

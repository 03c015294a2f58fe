#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace ember {

// One memory-mapped .safetensors file. Tensors are views into the mapping (no copy); they keep
// the mapping alive through Tensor::storage.
class SafetensorsFile {
 public:
  // Validates the header: JSON, dtypes (F32/F16/BF16 accepted; others rejected when read),
  // offsets inside the file (a truncated file is an error naming the file and tensor).
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  Tensor tensor(const std::string& name) const;  // throws ember::Error naming file + tensor

  struct Entry {
    std::string dtype;  // as written in the header
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range inside the data section
  };
  const Entry& entry(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
};

// Writes tensors (F32/F16/BF16) to a .safetensors file, in the given order. Used by make-model.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * dtype_size bytes
};
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors);

}  // namespace ember

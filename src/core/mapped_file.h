#pragma once
#include <cstddef>
#include <filesystem>
#include <memory>

namespace ember {

// A read-only memory mapping of a whole file. Tensors loaded from safetensors point into it.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  // The path of the live mapping that holds `address`, or nullptr. Async-signal-safe: a SIGBUS
  // handler uses it to name the file that was truncated under a running process.
  static const char* path_at(const void* address) noexcept;

 private:
  MappedFile(std::filesystem::path path, const unsigned char* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::filesystem::path path_;
  const unsigned char* data_;
  size_t size_;
};

}  // namespace ember

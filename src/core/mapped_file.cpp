#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "ember/error.h"

namespace ember {

namespace {

// Live mappings, readable from a signal handler: no locks and no allocation on the read side. A
// slot is published by storing `begin` last and retired by clearing it first.
struct MappingSlot {
  std::atomic<const unsigned char*> begin{nullptr};
  std::atomic<size_t> size{0};
  char path[1024] = {};
};
constexpr size_t kMappingSlots = 256;  // safetensors shards of every model a process holds
MappingSlot g_mappings[kMappingSlots];
std::mutex g_mappings_mutex;  // writers only

void register_mapping(const unsigned char* begin, size_t size, const std::string& path) {
  std::lock_guard lock(g_mappings_mutex);
  for (MappingSlot& slot : g_mappings) {
    if (slot.begin.load() != nullptr) continue;
    const size_t n = std::min(path.size(), sizeof slot.path - 1);
    std::memcpy(slot.path, path.data(), n);
    slot.path[n] = '\0';
    slot.size.store(size);
    slot.begin.store(begin);
    return;
  }  // all slots taken: the file goes unnamed in a fault report, nothing worse
}

void unregister_mapping(const unsigned char* begin) {
  std::lock_guard lock(g_mappings_mutex);
  for (MappingSlot& slot : g_mappings) {
    if (slot.begin.load() == begin) slot.begin.store(nullptr);
  }
}

}  // namespace

const char* MappedFile::path_at(const void* address) noexcept {
  const auto* p = static_cast<const unsigned char*>(address);
  for (const MappingSlot& slot : g_mappings) {
    const unsigned char* begin = slot.begin.load();
    if (begin != nullptr && p >= begin && p < begin + slot.size.load()) return slot.path;
  }
  return nullptr;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open " + path.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error("cannot stat " + path.string() + ": " + std::strerror(err));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const unsigned char* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error("cannot map " + path.string() + ": " + std::strerror(err));
    }
    data = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
  if (data != nullptr) register_mapping(data, size, path.string());
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ == nullptr) return;
  unregister_mapping(data_);
  ::munmap(const_cast<unsigned char*>(data_), size_);
}

}  // namespace ember

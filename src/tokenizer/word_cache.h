#pragma once
// Memo of BPE results per pre-tokenized word. Text repeats words heavily, and a lookup costs one
// hash and one compare where BPE costs dozens of merge-table probes.
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ember::tok {

uint64_t hash_bytes(std::string_view s);

class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 255;  // longer words are rare and not worth keeping

  explicit WordCache(size_t max_entries = size_t{1} << 16);

  // Appends the ids stored for `word` to out and returns true, or returns false.
  bool lookup(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const;
  // Stores ids for `word` (no-op for words over kMaxWordBytes). A full cache starts over.
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n);
  void clear();

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0;
    uint32_t ids_offset = 0;
    uint16_t key_length = 0;
    uint16_t id_count = 0;  // 0 marks an empty slot: every word has at least one id
  };
  size_t max_entries_;
  size_t used_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
};

// Process-wide switch for benchmarks and tests that need the uncached path; on by default.
std::atomic<bool>& word_cache_enabled();

}  // namespace ember::tok

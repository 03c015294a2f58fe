#include "tokenizer/word_cache.h"

#include <cstring>

namespace ember::tok {

uint64_t hash_bytes(std::string_view s) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = s.size() * kMul;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  if (i < s.size()) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * kMul;
  }
  h ^= h >> 32;
  return h * kMul;
}

WordCache::WordCache(size_t max_entries) : max_entries_(max_entries) {
  size_t n = 16;
  while (n < max_entries * 2) n <<= 1;
  slots_.resize(n);
}

void WordCache::clear() {
  std::fill(slots_.begin(), slots_.end(), Slot{});
  keys_.clear();
  ids_.clear();
  used_ = 0;
}

bool WordCache::lookup(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.id_count == 0) return false;
    if (s.hash == hash && s.key_length == word.size() &&
        std::memcmp(keys_.data() + s.key_offset, word.data(), word.size()) == 0) {
      out.insert(out.end(), ids_.begin() + s.ids_offset, ids_.begin() + s.ids_offset + s.id_count);
      return true;
    }
  }
}

void WordCache::insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n) {
  if (word.size() > kMaxWordBytes || n == 0 || n > UINT16_MAX) return;
  if (used_ >= max_entries_) clear();
  const size_t mask = slots_.size() - 1;
  size_t i = hash & mask;
  while (slots_[i].id_count != 0) i = (i + 1) & mask;
  slots_[i] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                   static_cast<uint16_t>(word.size()), static_cast<uint16_t>(n)};
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + n);
  ++used_;
}

std::atomic<bool>& word_cache_enabled() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

}  // namespace ember::tok

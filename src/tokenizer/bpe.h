#pragma once
// The tokenizer.json "model": byte-level BPE. Vocabulary and merges are resolved to ids at load
// time; encoding runs on raw bytes (each byte is one initial symbol) with no string building.
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/word_cache.h"

namespace ember::tok {

class Bpe {
 public:
  // Throws ember::Error naming the offending entry for anything ember does not reproduce
  // (dropout, subword prefixes/suffixes, byte fallback, merges producing unknown tokens, ...).
  static Bpe from_json(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized word (raw bytes, non-empty). `cache` may be null.
  void encode_word(std::string_view word, std::vector<int32_t>& out, WordCache* cache) const;

  // The byte-level vocabulary entry of `id`, or null when the vocabulary has no such id.
  const std::string* token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(tokens_.size()) - 1; }
  // A lower bound on the ids of a word of `bytes` raw bytes: no token spans more bytes than its
  // byte-level form has (each raw byte is one or two of those).
  size_t min_ids(size_t bytes) const { return (bytes + longest_token_ - 1) / longest_token_; }

 private:
  struct MergeSlot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static constexpr uint32_t kNoMerge = UINT32_MAX;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // The rank of merging symbols a and b (kNoMerge if there is none) and the resulting id.
  uint32_t find_merge(int32_t a, int32_t b, int32_t& merged) const {
    const uint64_t key = pair_key(a, b);
    for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & merge_mask_) {
      const MergeSlot& s = merges_[i];
      if (s.key == key) {
        merged = s.merged;
        return s.rank;
      }
      if (s.key == kEmpty) return kNoMerge;
    }
  }
  // find_merge for two single-byte symbols, from a 256x256 table: every word starts as bytes.
  uint32_t find_byte_merge(unsigned char a, unsigned char b, int32_t& merged) const {
    const ByteMerge& m = byte_merges_[size_t{a} << 8 | b];
    merged = m.merged;
    return m.rank;
  }
  void add_merge(int32_t a, int32_t b, uint32_t rank, int32_t merged);
  void merge_short(std::string_view word, std::vector<int32_t>& out) const;
  void merge_long(std::string_view word, std::vector<int32_t>& out) const;

  struct ByteMerge {
    uint32_t rank = kNoMerge;
    int32_t merged = 0;
  };
  std::array<int32_t, 256> byte_ids_{};
  std::vector<ByteMerge> byte_merges_;
  std::vector<MergeSlot> merges_;
  size_t merge_mask_ = 0;
  int merge_shift_ = 64;
  std::vector<std::string> tokens_;  // byte-level form by id; "" where unused
  size_t longest_token_ = 1;         // bytes of the longest byte-level form
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> raw_vocab_;  // raw bytes -> id, only for ignore_merges
};

}  // namespace ember::tok

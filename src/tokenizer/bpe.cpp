#include "tokenizer/bpe.h"

#include <algorithm>
#include <bit>
#include <functional>
#include <nlohmann/json.hpp>

#include "ember/error.h"
#include "tokenizer/byte_level.h"

namespace ember::tok {
namespace {

// Words up to this many bytes use the quadratic scan; longer ones the heap, as HF does.
constexpr size_t kShortWord = 64;

void require_default(const nlohmann::json& model, const char* key, const nlohmann::json& allowed) {
  if (!model.contains(key) || model[key].is_null() || model[key] == allowed) return;
  throw Error(std::string("model.") + key + " = " + model[key].dump() + " is not supported (ember supports " +
              allowed.dump() + " or null)");
}

}  // namespace

void Bpe::add_merge(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  const uint64_t key = pair_key(a, b);
  for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & merge_mask_) {
    MergeSlot& s = merges_[i];
    // A repeated pair keeps its last rank, like the HashMap HF collects the merges into.
    if (s.key == kEmpty || s.key == key) {
      s = MergeSlot{key, rank, merged};
      return;
    }
  }
}

Bpe Bpe::from_json(const nlohmann::json& model) {
  if (!model.is_object() || model.value("type", "BPE") != "BPE") {
    throw Error("model type " + (model.is_object() ? model.value("type", "?") : model.dump()) +
                " is not supported (ember supports BPE)");
  }
  require_default(model, "dropout", 0.0);
  require_default(model, "continuing_subword_prefix", "");
  require_default(model, "end_of_word_suffix", "");
  require_default(model, "byte_fallback", false);
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw Error("model.vocab is missing");
  if (!model.contains("merges") || !model["merges"].is_array()) throw Error("model.merges is missing");

  Bpe bpe;
  bpe.ignore_merges_ = model.value("ignore_merges", false);
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(model["vocab"].size());
  for (const auto& [text, id_json] : model["vocab"].items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 || id_json.get<int64_t>() > INT32_MAX / 2) {
      throw Error("model.vocab[\"" + text + "\"] has an invalid id " + id_json.dump());
    }
    const auto id = id_json.get<int32_t>();
    vocab.emplace(text, id);
    if (static_cast<size_t>(id) >= bpe.tokens_.size()) bpe.tokens_.resize(static_cast<size_t>(id) + 1);
    bpe.tokens_[static_cast<size_t>(id)] = text;
    bpe.longest_token_ = std::max(bpe.longest_token_, text.size());
    if (bpe.ignore_merges_) {
      if (auto raw = byte_level_to_bytes(text)) bpe.raw_vocab_.emplace(std::move(*raw), id);
    }
  }
  for (int b = 0; b < 256; ++b) {
    const std::string symbol = bytes_to_byte_level(std::string(1, static_cast<char>(b)));
    const auto it = vocab.find(symbol);
    if (it == vocab.end()) {
      throw Error("model.vocab lacks the byte-level symbol \"" + symbol + "\" of byte " + std::to_string(b) +
                  "; ember supports byte-level BPE vocabularies only");
    }
    bpe.byte_ids_[static_cast<size_t>(b)] = it->second;
  }

  const auto& merges = model["merges"];
  size_t slots = 16;
  while (slots < merges.size() * 2) slots <<= 1;
  bpe.merges_.assign(slots, MergeSlot{});
  bpe.merge_mask_ = slots - 1;
  bpe.merge_shift_ = 64 - std::countr_zero(slots);
  const auto lookup = [&](const std::string& s, size_t rank) {
    const auto it = vocab.find(s);
    if (it == vocab.end()) {
      throw Error("model.merges[" + std::to_string(rank) + "] uses \"" + s + "\", which is not in model.vocab");
    }
    return it->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    std::string a, b;
    if (m.is_string()) {
      // The older "a b" form: exactly one space separates the two parts.
      const auto& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        throw Error("model.merges[" + std::to_string(rank) + "] = \"" + s +
                    "\" is not two tokens separated by one space");
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw Error("model.merges[" + std::to_string(rank) + "] = " + m.dump() +
                  " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    bpe.add_merge(lookup(a, rank), lookup(b, rank), static_cast<uint32_t>(rank), lookup(a + b, rank));
  }
  bpe.byte_merges_.resize(256 * 256);
  for (size_t pair = 0; pair < bpe.byte_merges_.size(); ++pair) {
    ByteMerge& m = bpe.byte_merges_[pair];
    m.rank = bpe.find_merge(bpe.byte_ids_[pair >> 8], bpe.byte_ids_[pair & 255], m.merged);
  }
  return bpe;
}

const std::string* Bpe::token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || tokens_[static_cast<size_t>(id)].empty()) {
    return nullptr;
  }
  return &tokens_[static_cast<size_t>(id)];
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out, WordCache* cache) const {
  if (word.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  uint64_t hash = 0;
  if (cache) {
    hash = hash_bytes(word);
    if (cache->lookup(word, hash, out)) return;
  }
  const size_t before = out.size();
  const auto whole = ignore_merges_ ? raw_vocab_.find(std::string(word)) : raw_vocab_.end();
  if (whole != raw_vocab_.end()) {
    out.push_back(whole->second);
  } else if (word.size() <= kShortWord) {
    merge_short(word, out);
  } else {
    merge_long(word, out);
  }
  if (cache) cache->insert(word, hash, out.data() + before, out.size() - before);
}

// Repeatedly applies the lowest-ranked merge among adjacent symbols, the leftmost one on ties.
void Bpe::merge_short(std::string_view word, std::vector<int32_t>& out) const {
  int32_t ids[kShortWord];
  uint32_t ranks[kShortWord];  // ranks[i]: merge of symbols i and i+1
  int32_t merged[kShortWord];
  size_t n = word.size();
  for (size_t i = 0; i < n; ++i) ids[i] = byte_ids_[static_cast<unsigned char>(word[i])];
  const auto* bytes = reinterpret_cast<const unsigned char*>(word.data());
  for (size_t i = 0; i + 1 < n; ++i) ranks[i] = find_byte_merge(bytes[i], bytes[i + 1], merged[i]);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNoMerge) break;
    ids[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) ids[i] = ids[i + 1];
    for (size_t i = best + 1; i + 2 < n; ++i) {
      ranks[i] = ranks[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) ranks[best - 1] = find_merge(ids[best - 1], ids[best], merged[best - 1]);
    if (best + 1 < n) ranks[best] = find_merge(ids[best], ids[best + 1], merged[best]);
  }
  out.insert(out.end(), ids, ids + n);
}

// HF's Word::merge_all: a priority queue of candidate merges ordered by (rank, position);
// entries made stale by earlier merges are recognised and dropped when popped. A candidate is
// one integer, rank << 32 | position, which keeps the heap small and its comparisons cheap.
void Bpe::merge_long(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the linked list, -1 at the ends
  };
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<uint64_t> heap;
  const auto n = static_cast<int32_t>(word.size());
  const auto* bytes = reinterpret_cast<const unsigned char*>(word.data());
  sym.resize(static_cast<size_t>(n));
  heap.clear();
  const auto candidate = [](uint32_t rank, int32_t pos) { return uint64_t{rank} << 32 | static_cast<uint32_t>(pos); };
  for (int32_t i = 0; i < n; ++i) sym[static_cast<size_t>(i)] = {byte_ids_[bytes[i]], i - 1, i + 1 < n ? i + 1 : -1};
  for (int32_t i = 0; i + 1 < n; ++i) {
    int32_t merged;
    const uint32_t rank = find_byte_merge(bytes[i], bytes[i + 1], merged);
    if (rank != kNoMerge) heap.push_back(candidate(rank, i));
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  const auto push = [&](int32_t pos) {
    const Symbol& s = sym[static_cast<size_t>(pos)];
    if (s.next < 0) return;
    int32_t merged;
    const uint32_t rank = find_merge(s.id, sym[static_cast<size_t>(s.next)].id, merged);
    if (rank == kNoMerge) return;
    heap.push_back(candidate(rank, pos));
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const uint64_t c = heap.back();
    heap.pop_back();
    const auto pos = static_cast<int32_t>(c & 0xFFFFFFFFu);
    Symbol& left = sym[static_cast<size_t>(pos)];
    // A merged-away symbol has id -1; a stale candidate's pair no longer has its rank (each rank
    // names one pair).
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = sym[static_cast<size_t>(left.next)];
    int32_t merged = -1;
    if (find_merge(left.id, right.id, merged) != static_cast<uint32_t>(c >> 32)) continue;
    left.id = merged;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = pos;
    if (left.prev >= 0) push(left.prev);
    push(pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out.push_back(sym[static_cast<size_t>(i)].id);
  // The buffers are kept for the next long word, but not the ~25 bytes a byte of a giant one (a
  // 3 MB run of one letter) took: each worker thread would hold that for good.
  constexpr size_t kKeepBytes = size_t{1} << 16;
  if (sym.capacity() > kKeepBytes) {
    std::vector<Symbol>().swap(sym);
    std::vector<uint64_t>().swap(heap);
  }
}

}  // namespace ember::tok

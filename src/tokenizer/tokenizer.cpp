// ember::Tokenizer: loads tokenizer.json and runs the HF pipeline
// added tokens -> normalizer -> pre-tokenizer -> byte-level BPE.
#include "ember/tokenizer.h"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "ember/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer/word_cache.h"

namespace ember {
namespace {

constexpr const char* kEos = "<|endoftext|>";

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + " is not valid JSON: " + e.what());
  }
}

tok::AddedToken parse_added_token(const nlohmann::json& j, int32_t id) {
  tok::AddedToken t;
  t.id = id;
  t.content = j.at("content").get<std::string>();
  t.special = j.value("special", false);
  t.single_word = j.value("single_word", false);
  t.lstrip = j.value("lstrip", false);
  t.rstrip = j.value("rstrip", false);
  t.normalized = j.value("normalized", !t.special);  // HF's default when the field is absent
  return t;
}

// Per-thread mutable state of one tokenizer: PCRE2 match state, the word cache, a buffer for
// normalized text. encode() is const and may run on many threads at once.
struct Scratch {
  uint64_t owner = 0;
  tok::RegexScratch regex;
  tok::WordCache cache;
  std::string normalized;
};

Scratch& thread_scratch(uint64_t owner) {
  // A few slots so that a thread alternating between tokenizers keeps their caches.
  thread_local std::array<std::unique_ptr<Scratch>, 4> slots;
  thread_local size_t next_victim = 0;
  for (auto& s : slots) {
    if (s && s->owner == owner) return *s;
  }
  auto& s = slots[next_victim++ % slots.size()];
  if (!s) {
    s = std::make_unique<Scratch>();
  } else {
    s->cache.clear();
  }
  s->owner = owner;
  return *s;
}

std::atomic<uint64_t> next_generation{1};

// Thrown out of the tokenizer's callbacks once enough ids are made (encode with a limit); caught
// by the Tokenizer methods that take one.
struct EnoughTokens {};

}  // namespace

struct Tokenizer::Impl {
  uint64_t generation = next_generation++;  // identifies this tokenizer's per-thread scratch
  tok::Normalizer normalizer;
  tok::PreTokenizer pre_tokenizer;
  tok::Bpe bpe;
  tok::AddedTokenMatcher raw_added;         // matched in the text as given
  tok::AddedTokenMatcher normalized_added;  // matched after normalization
  std::unordered_map<int32_t, std::string> added_text;
  std::unordered_set<int32_t> special_ids;
  tok::PostProcessor post;
  std::vector<int32_t> model_suffix;  // what follows the text in a model input: the file's suffix, or <|endoftext|>
  int32_t eos = -1;
  int64_t id_count = 0;

  // Stops (throws EnoughTokens) once `ids` holds `stop_at` ids or more; with `bound_words`, already
  // before a word whose fewest possible ids would get there (the ids are then incomplete).
  void encode_normalized(std::string_view text, Scratch& s, std::vector<int32_t>& ids, size_t stop_at,
                         bool bound_words) const {
    tok::WordCache* cache = tok::word_cache_enabled().load(std::memory_order_relaxed) ? &s.cache : nullptr;
    const auto model = [&](std::string_view part) {
      pre_tokenizer.for_each_piece(part, s.regex, [&](std::string_view word) {
        if (bound_words && ids.size() + bpe.min_ids(word.size()) >= stop_at) throw EnoughTokens{};
        bpe.encode_word(word, ids, cache);
        if (ids.size() >= stop_at) throw EnoughTokens{};
      });
    };
    if (normalized_added.empty()) {
      model(text);
    } else {
      normalized_added.split(text, model, [&](int32_t id) {
        ids.push_back(id);
        if (ids.size() >= stop_at) throw EnoughTokens{};
      });
    }
  }

  void encode(std::string_view text, std::vector<int32_t>& ids, size_t stop_at = SIZE_MAX,
              bool bound_words = false) const {
    if (const auto bad = tok::find_invalid_utf8(text)) {
      throw Error(fmt::format("text to tokenize is not valid UTF-8: byte 0x{:02X} at byte offset {}",
                              static_cast<unsigned char>(text[*bad]), *bad));
    }
    Scratch& s = thread_scratch(generation);
    if (ids.size() >= stop_at) throw EnoughTokens{};
    raw_added.split(
        text,
        [&](std::string_view part) {
          encode_normalized(normalizer.apply(part, s.normalized), s, ids, stop_at, bound_words);
        },
        [&](int32_t id) {
          ids.push_back(id);
          if (ids.size() >= stop_at) throw EnoughTokens{};
        });
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  const auto config = dir / "tokenizer_config.json";
  return from_files(dir / "tokenizer.json", std::filesystem::exists(config) ? config : std::filesystem::path());
}

Tokenizer Tokenizer::from_files(const std::filesystem::path& tokenizer_json,
                                const std::filesystem::path& tokenizer_config_json) {
  const nlohmann::json spec = read_json(tokenizer_json);
  const nlohmann::json config =
      tokenizer_config_json.empty() ? nlohmann::json::object() : read_json(tokenizer_config_json);
  if (!config.is_object()) throw Error(tokenizer_config_json.string() + " does not hold a JSON object");
  if (!spec.is_object()) throw Error(tokenizer_json.string() + " does not hold a JSON object");
  auto impl = std::make_unique<Impl>();
  try {
    impl->normalizer = tok::Normalizer::from_json(spec.value("normalizer", nlohmann::json()));
    impl->pre_tokenizer = tok::PreTokenizer::from_json(spec.value("pre_tokenizer", nlohmann::json()));
    impl->bpe = tok::Bpe::from_json(spec.at("model"));
    impl->post = tok::PostProcessor::from_json(spec.value("post_processor", nlohmann::json()));

    // Added tokens come from tokenizer.json; transformers also adds those only listed in
    // tokenizer_config.json's added_tokens_decoder.
    std::vector<tok::AddedToken> added;
    for (const auto& j : spec.value("added_tokens", nlohmann::json::array())) {
      added.push_back(parse_added_token(j, j.at("id").get<int32_t>()));
    }
    const nlohmann::json decoder = config.value("added_tokens_decoder", nlohmann::json::object());
    for (const auto& [id_text, j] : decoder.items()) {
      const int32_t id = std::stoi(id_text);
      bool known = false;
      for (const auto& t : added) known = known || t.id == id;
      if (!known) added.push_back(parse_added_token(j, id));
    }

    std::vector<tok::AddedToken> raw, normalized;
    std::vector<std::string> raw_text, normalized_text;
    int64_t max_id = impl->bpe.max_id();
    for (auto& t : added) {
      if (t.id < 0) throw Error("added token \"" + t.content + "\" has a negative id");
      max_id = std::max<int64_t>(max_id, t.id);
      impl->added_text.emplace(t.id, t.content);
      if (t.special) impl->special_ids.insert(t.id);
      if (t.content == kEos) impl->eos = t.id;
      if (t.normalized && !impl->normalizer.is_identity()) {
        std::string buf;
        normalized_text.emplace_back(impl->normalizer.apply(t.content, buf));
        normalized.push_back(std::move(t));
      } else {
        raw_text.push_back(t.content);
        raw.push_back(std::move(t));
      }
    }
    impl->raw_added = tok::AddedTokenMatcher(std::move(raw), raw_text);
    impl->normalized_added = tok::AddedTokenMatcher(std::move(normalized), normalized_text);
    impl->id_count = max_id + 1;
    if (impl->eos < 0) {
      for (int32_t id = 0; id <= impl->bpe.max_id() && impl->eos < 0; ++id) {
        const std::string* t = impl->bpe.token(id);
        if (t && *t == kEos) impl->eos = id;
      }
    }
    if (impl->eos < 0)
      throw Error("no <|endoftext|> token among added_tokens or model.vocab (ember needs it as end of sequence)");
    impl->model_suffix = impl->post.adds_tokens() ? impl->post.suffix : std::vector<int32_t>{impl->eos};
  } catch (const nlohmann::json::exception& e) {
    throw Error(tokenizer_json.string() + ": unexpected structure: " + e.what());
  } catch (const Error& e) {
    throw Error(tokenizer_json.string() + ": " + e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode(text, ids);
  return ids;
}

Tokenizer::Limited Tokenizer::encode(std::string_view text, size_t max_tokens) const {
  Limited out;
  try {
    impl_->encode(text, out.ids, max_tokens + 1);
  } catch (const EnoughTokens&) {
  }
  out.over_limit = out.ids.size() > max_tokens;
  if (out.over_limit) out.ids.resize(max_tokens);
  return out;
}

Tokenizer::Limited Tokenizer::encode_for_model(std::string_view text, size_t max_tokens, bool keep_truncation) const {
  const std::vector<int32_t>& suffix = impl_->model_suffix;
  Limited out;
  out.ids = impl_->post.prefix;
  // Enough text ids that prefix + text + suffix is known to pass max_tokens, if it does.
  const size_t enough = max_tokens + 1 > suffix.size() ? max_tokens + 1 - suffix.size() : 0;
  bool stopped = false;
  try {
    impl_->encode(text, out.ids, enough, !keep_truncation);
  } catch (const EnoughTokens&) {
    stopped = true;
  }
  if (stopped && !keep_truncation) {
    out.ids.clear();
    out.over_limit = true;
    return out;
  }
  out.ids.insert(out.ids.end(), suffix.begin(), suffix.end());
  out.over_limit = out.ids.size() > max_tokens;
  if (out.over_limit && max_tokens > 0) {
    const int32_t last = out.ids.back();
    out.ids.resize(max_tokens);
    out.ids.back() = last;
  } else if (out.over_limit) {
    out.ids.clear();
  }
  return out;
}

std::vector<int32_t> Tokenizer::encode_for_model(std::string_view text) const {
  std::vector<int32_t> ids(impl_->post.prefix);
  ids.reserve(text.size() / 3 + 4 + ids.size() + impl_->model_suffix.size());
  impl_->encode(text, ids);
  ids.insert(ids.end(), impl_->model_suffix.begin(), impl_->model_suffix.end());
  return ids;
}

int32_t Tokenizer::eos_id() const { return impl_->eos; }

int64_t Tokenizer::id_count() const { return impl_->id_count; }

std::string Tokenizer::token_text(int32_t id) const {
  if (const auto it = impl_->added_text.find(id); it != impl_->added_text.end()) return it->second;
  if (const std::string* t = impl_->bpe.token(id)) return *t;
  throw Error(fmt::format("token id {} is not in the vocabulary (ids run from 0 to {})", id, impl_->id_count - 1));
}

Tokenizer::Piece Tokenizer::piece(int32_t id) const {
  if (const auto it = impl_->added_text.find(id); it != impl_->added_text.end()) {
    return {it->second, impl_->special_ids.contains(id)};
  }
  const std::string text = token_text(id);
  return {tok::byte_level_to_bytes(text).value_or(text), false};
}

}  // namespace ember

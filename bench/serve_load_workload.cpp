#include "serve_load_workload.h"

#include <nlohmann/json.hpp>

#include "bench_workloads.h"
#include "ember/error.h"

namespace ember::bench {

namespace {

// " word" pieces of 3-10 lowercase ASCII letters that the tokenizer encodes as one token, in id
// order (roughly by frequency in BPE vocabularies). The text pre-tokenizer splits before every
// space, so a run of such words is one token per word.
std::vector<std::string> single_token_words(const Tokenizer& tokenizer) {
  constexpr size_t kWords = 4096;
  std::vector<std::string> words;
  for (int32_t id = 0; id < tokenizer.id_count() && words.size() < kWords; ++id) {
    const Tokenizer::Piece piece = tokenizer.piece(id);
    const std::string& b = piece.bytes;
    if (piece.special || b.size() < 4 || b.size() > 11 || b[0] != ' ') continue;
    bool letters = true;
    for (size_t i = 1; i < b.size() && letters; ++i) letters = b[i] >= 'a' && b[i] <= 'z';
    if (letters && tokenizer.encode(b).size() == 1) words.push_back(b);
  }
  if (words.size() < 256) throw Error("the tokenizer has too few single-token words to build benchmark texts");
  return words;
}

// A text of exactly `tokens` model-input tokens; `salt` varies the words.
std::string text_of(const std::vector<std::string>& words, int64_t tokens, int64_t salt) {
  std::string text;
  for (int64_t i = 0; i + 1 < tokens; ++i) {
    const uint64_t v = static_cast<uint64_t>(i) * 2654435761ull + static_cast<uint64_t>(salt) * 40503ull + 17;
    text += words[v % words.size()];
  }
  return text;
}

// Texts per request and tokens per text of each request of the pool.
std::vector<std::vector<int64_t>> shapes(const std::string& name, int pool) {
  std::vector<std::vector<int64_t>> out;
  if (name == "query") {
    out.assign(static_cast<size_t>(pool), {16});
  } else if (name == "docs") {
    out.assign(static_cast<size_t>(pool), std::vector<int64_t>(8, 512));
  } else if (name == "mixed") {
    const std::vector<int64_t> counts = cli::mixed_lengths(pool, 1, 32);
    int64_t total = 0;
    for (int64_t c : counts) total += c;
    const std::vector<int64_t> lengths = cli::mixed_lengths(total, 20, 1000);
    size_t next = 0;
    for (int64_t c : counts) {
      out.emplace_back(lengths.begin() + static_cast<std::ptrdiff_t>(next),
                       lengths.begin() + static_cast<std::ptrdiff_t>(next + static_cast<size_t>(c)));
      next += static_cast<size_t>(c);
    }
  } else {
    throw Error("--workload must be query, docs or mixed, got '" + name + "'");
  }
  return out;
}

}  // namespace

Workload make_workload(const std::string& name, int pool, const Tokenizer& tokenizer, const std::string& model_name,
                       bool base64) {
  if (pool < 1) throw Error("--pool must be at least 1");
  const std::vector<std::string> words = single_token_words(tokenizer);
  Workload w;
  w.name = name;
  int64_t salt = 0;
  for (const std::vector<int64_t>& lengths : shapes(name, pool)) {
    LoadRequest r;
    for (int64_t n : lengths) {
      r.texts.push_back(text_of(words, n, salt++));
      r.sequences.push_back(tokenizer.encode_for_model(r.texts.back()));
      const auto got = static_cast<int64_t>(r.sequences.back().size());
      if (got != n) {
        throw Error("a " + name + " text meant to be " + std::to_string(n) + " tokens tokenizes to " +
                    std::to_string(got) + ": the word list assumption (one token per word) does not hold");
      }
      r.tokens += n;
    }
    nlohmann::json body = {{"model", model_name}, {"encoding_format", base64 ? "base64" : "float"}};
    body["input"] = r.texts.size() == 1 && name == "query" ? nlohmann::json(r.texts[0]) : nlohmann::json(r.texts);
    r.body = body.dump();
    w.tokens += r.tokens;
    w.max_tokens = std::max(w.max_tokens, r.tokens);
    w.requests.push_back(std::move(r));
  }
  return w;
}

}  // namespace ember::bench

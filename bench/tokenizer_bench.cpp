// Single-thread tokenizer throughput on a mixed multilingual text: the test corpus
// (tests/data/tokenizer_corpus.jsonl: many scripts, code, emoji, whitespace runs, long words),
// repeated. tests/golden/hf_tokenize.py --bench-out measures HF tokenizers on the same texts.
//
//   tokenizer_bench [repeats=20] [tokenizer_dir]
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ember/tokenizer.h"
#include "tokenizer/word_cache.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> read_corpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream all;
  all << in.rdbuf();
  std::vector<std::string> texts;
  std::istringstream lines(all.str());
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  }
  return texts;
}

struct Result {
  double seconds = 0;
  size_t bytes = 0;
  size_t tokens = 0;
};

Result run(const ember::Tokenizer& tok, const std::vector<std::string>& texts, int repeats) {
  Result r;
  const auto t0 = Clock::now();
  for (int k = 0; k < repeats; ++k) {
    for (const auto& t : texts) {
      r.tokens += tok.encode(t).size();
      r.bytes += t.size();
    }
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

void print(const char* label, const Result& r) {
  fmt::print("{:<44} {:8.2f} MB/s {:10.0f} tokens/s  ({:.1f} MB, {} tokens, {:.3f} s)\n", label,
             r.bytes / r.seconds / 1e6, r.tokens / r.seconds, r.bytes / 1e6, r.tokens, r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  const std::string dir = argc > 2 ? argv[2] : EMBER_TOKENIZER_DIR;
  const auto texts = read_corpus(std::string(EMBER_TEST_DATA_DIR) + "/tokenizer_corpus.jsonl");

  const auto t0 = Clock::now();
  const ember::Tokenizer tok = ember::Tokenizer::from_dir(dir);
  fmt::print("load {}: {:.3f} s\n", dir, std::chrono::duration<double>(Clock::now() - t0).count());
  fmt::print("text: {} corpus texts x {} repeats, single thread\n", texts.size(), repeats);

  // Cold: a fresh tokenizer's first pass, its word cache filling as it goes.
  print("cold (first pass over the corpus)", run(tok, texts, 1));
  ember::tok::word_cache_enabled() = false;
  print("no word cache", run(tok, texts, repeats));
  ember::tok::word_cache_enabled() = true;
  print("warm (word cache filled)", run(tok, texts, repeats));
}

#pragma once
// The requests serve_load sends: deterministic English-like texts built from words that are one
// token each, so a text of n-1 words is exactly n model-input tokens (with <|endoftext|>); every
// text is checked against the engine's tokenizer.
#include <cstdint>
#include <string>
#include <vector>

#include "ember/tokenizer.h"

namespace ember::bench {

struct LoadRequest {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> sequences;  // the tokenizer's model-input ids of each text
  int64_t tokens = 0;                           // sum of the sequence lengths
  std::string body;                             // the POST /v1/embeddings JSON body
};

struct Workload {
  std::string name;
  std::vector<LoadRequest> requests;
  int64_t tokens = 0;      // over all requests
  int64_t max_tokens = 0;  // of the largest request
};

// "query": 1 text of 16 tokens per request; "docs": 8 texts of 512 tokens; "mixed": 1-32 texts of
// 20-1000 tokens. `pool` distinct requests. `base64`: encoding_format "base64" (as the OpenAI SDK
// sends it) instead of "float". Throws ember::Error when a text does not tokenize to its length.
Workload make_workload(const std::string& name, int pool, const Tokenizer& tokenizer, const std::string& model_name,
                       bool base64);

}  // namespace ember::bench

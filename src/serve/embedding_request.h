#pragma once
// The request bodies the server accepts, parsed and checked before any work is queued, and the
// response bodies it writes. No model needed: limits that depend on the model (dimensions, token
// counts, vocabulary) are checked by the routes. Every malformed body throws ApiError (400) naming
// the field; no body — deep nesting, huge numbers, invalid UTF-8, 10^6 inputs — crashes or stalls.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ember::serve {

struct RequestLimits {
  size_t max_inputs = 2048;  // --max-client-batch-size: inputs in one request
  int max_json_depth = 64;   // deeper nesting is rejected while parsing, before it is built
  // POST /tokenize: tokens in one answer, all texts together (each token is ~50 bytes of JSON, so
  // the answer stays under ~13 MB); tokenizing stops once it is passed.
  size_t max_tokenize_tokens = size_t{1} << 18;
};

// `input` as a client sent it: texts, or token-id sequences (OpenAI allows both; never mixed).
struct EmbeddingInputs {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> token_ids;
  bool is_tokens = false;
  size_t size() const { return is_tokens ? token_ids.size() : texts.size(); }
};

// POST /v1/embeddings
struct OpenAiEmbeddingRequest {
  EmbeddingInputs input;
  std::string model;    // may be empty; the route checks it against --served-model-name
  bool base64 = false;  // encoding_format: "float" (default) | "base64"
  int dimensions = 0;   // 0: not given
  std::optional<std::string> user;
};
OpenAiEmbeddingRequest parse_openai_embedding_request(std::string_view body, const RequestLimits& limits);

// POST /embed (text-embeddings-inference)
struct TeiEmbedRequest {
  EmbeddingInputs inputs;  // "inputs": string | [string] | [int] | [[int]]
  bool normalize = true;
  std::optional<bool> truncate;  // not given: the server's --auto-truncate decides
  int dimensions = 0;
  std::string prompt_name;  // accepted; only "" is supported, anything else is a 400
};
TeiEmbedRequest parse_tei_embed_request(std::string_view body, const RequestLimits& limits);

// POST /tokenize (TEI): {"inputs": string | [string], "add_special_tokens": bool}
struct TokenizeRequest {
  std::vector<std::string> texts;
  bool add_special_tokens = true;
};
TokenizeRequest parse_tokenize_request(std::string_view body, const RequestLimits& limits);

// {"object":"list","data":[{"object":"embedding","index":i,"embedding":[...] or "base64"}],
//  "model":..., "usage":{"prompt_tokens":n,"total_tokens":n}}. base64 is the little-endian
// float32 bytes of each vector, as OpenAI sends it.
std::string write_openai_embeddings(const std::vector<std::vector<float>>& embeddings, bool base64,
                                    const std::string& model, int64_t prompt_tokens);

// TEI's /embed answer: [[...], [...]]
std::string write_tei_embeddings(const std::vector<std::vector<float>>& embeddings);

// TEI's /tokenize answer: one array per text of {"id","text","special","start","stop"} tokens;
// start/stop (character offsets) are null: the tokenizer does not track offsets.
struct TokenView {
  int32_t id;
  std::string text;
  bool special;
};
std::string write_tokenize_response(const std::vector<std::vector<TokenView>>& tokens);

// Standard base64 (RFC 4648, with padding).
std::string base64_encode(const void* data, size_t size);

}  // namespace ember::serve

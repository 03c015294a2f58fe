// Response bodies, written straight into one std::string: a full batch (2048 inputs x 4096
// dimensions) is 8M floats, too many to build as a JSON tree first.
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "serve/api_error.h"
#include "serve/embedding_request.h"

namespace ember::serve {
namespace {

static_assert(std::endian::native == std::endian::little,
              "base64 embeddings are the little-endian float32 bytes; this target needs a byte swap");

// std::to_chars' shortest form of a float is at most 15 characters ("-1.17549435e-38").
constexpr size_t kMaxFloatChars = 16;

// The shortest decimal that reads back as the same float32 (also when read as a double and then
// rounded to float32: 53 >= 2 * 24 + 2 bits, so that double rounding is exact). JSON has no NaN
// or Infinity; a non-finite value is written as null, as nlohmann does, so the body stays JSON.
void append_floats(std::string& out, const std::vector<float>& values) {
  const size_t start = out.size();
  out.resize(start + 2 + values.size() * (kMaxFloatChars + 1));
  char* p = out.data() + start;
  char* const end = out.data() + out.size();
  *p++ = '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) *p++ = ',';
    const float v = values[i];
    if (!std::isfinite(v)) {
      std::memcpy(p, "null", 4);
      p += 4;
      continue;
    }
    const auto [next, ec] = std::to_chars(p, end, v);
    if (ec != std::errc()) throw ApiError(500, "internal error: a float did not fit its output bound", "server_error");
    p = next;
  }
  *p++ = ']';
  out.resize(static_cast<size_t>(p - out.data()));
}

template <typename Int>
void append_int(std::string& out, Int value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, result.ptr);
}

// A JSON string literal; bytes that are not UTF-8 (byte-level tokens, a model name) become U+FFFD
// instead of failing the response.
void append_json_string(std::string& out, const std::string& text) {
  out += nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

constexpr char kBase64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void append_base64(std::string& out, const unsigned char* data, size_t size) {
  const size_t start = out.size();
  out.resize(start + (size + 2) / 3 * 4);
  char* p = out.data() + start;
  size_t i = 0;
  for (; i + 3 <= size; i += 3) {
    const uint32_t group = uint32_t{data[i]} << 16 | uint32_t{data[i + 1]} << 8 | data[i + 2];
    *p++ = kBase64Alphabet[group >> 18];
    *p++ = kBase64Alphabet[group >> 12 & 63];
    *p++ = kBase64Alphabet[group >> 6 & 63];
    *p++ = kBase64Alphabet[group & 63];
  }
  if (i < size) {
    const bool two = i + 1 < size;
    const uint32_t group = uint32_t{data[i]} << 16 | (two ? uint32_t{data[i + 1]} << 8 : 0);
    *p++ = kBase64Alphabet[group >> 18];
    *p++ = kBase64Alphabet[group >> 12 & 63];
    *p++ = two ? kBase64Alphabet[group >> 6 & 63] : '=';
    *p++ = '=';
  }
}

size_t total_values(const std::vector<std::vector<float>>& embeddings) {
  size_t n = 0;
  for (const auto& e : embeddings) n += e.size();
  return n;
}

}  // namespace

std::string base64_encode(const void* data, size_t size) {
  std::string out;
  append_base64(out, static_cast<const unsigned char*>(data), size);
  return out;
}

std::string write_openai_embeddings(const std::vector<std::vector<float>>& embeddings, bool base64,
                                    const std::string& model, int64_t prompt_tokens) {
  std::string out;
  const size_t per_value = base64 ? 6 : kMaxFloatChars / 2;  // a reservation, not a bound
  out.reserve(128 + model.size() + embeddings.size() * 64 + total_values(embeddings) * per_value);
  out += R"({"object":"list","data":[)";
  for (size_t i = 0; i < embeddings.size(); ++i) {
    if (i > 0) out += ',';
    out += R"({"object":"embedding","index":)";
    append_int(out, i);
    out += R"(,"embedding":)";
    if (base64) {
      out += '"';
      append_base64(out, reinterpret_cast<const unsigned char*>(embeddings[i].data()),
                    embeddings[i].size() * sizeof(float));
      out += '"';
    } else {
      append_floats(out, embeddings[i]);
    }
    out += '}';
  }
  out += R"(],"model":)";
  append_json_string(out, model);
  out += R"(,"usage":{"prompt_tokens":)";
  append_int(out, prompt_tokens);
  out += R"(,"total_tokens":)";
  append_int(out, prompt_tokens);
  out += "}}";
  return out;
}

std::string write_tei_embeddings(const std::vector<std::vector<float>>& embeddings) {
  std::string out;
  out.reserve(2 + embeddings.size() * 2 + total_values(embeddings) * (kMaxFloatChars / 2));
  out += '[';
  for (size_t i = 0; i < embeddings.size(); ++i) {
    if (i > 0) out += ',';
    append_floats(out, embeddings[i]);
  }
  out += ']';
  return out;
}

// TEI reports each token's byte offsets in the input as start/stop; ember's tokenizer does not
// track offsets, so both are always null (TEI also sends null, for special tokens).
std::string write_tokenize_response(const std::vector<std::vector<TokenView>>& tokens) {
  std::string out = "[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ',';
    out += '[';
    for (size_t j = 0; j < tokens[i].size(); ++j) {
      const TokenView& token = tokens[i][j];
      if (j > 0) out += ',';
      out += R"({"id":)";
      append_int(out, token.id);
      out += R"(,"text":)";
      append_json_string(out, token.text);
      out += token.special ? R"(,"special":true)" : R"(,"special":false)";
      out += R"(,"start":null,"stop":null})";
    }
    out += ']';
  }
  out += ']';
  return out;
}

}  // namespace ember::serve

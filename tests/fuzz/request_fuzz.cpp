// libFuzzer target for the serve protocol layer: HTTP framing (Boost.Beast's request parser, with
// the server's header and body limits), the three request-body parsers and the response writers.
// ApiError (400) is the expected way to refuse input; any other exception, a sanitizer report or a
// failed check below is a bug.
//
// The first byte picks the mode: odd -> the rest is a request body given to all three parsers
// directly (so JSON gets fuzzed even when no HTTP framing parses); even -> the rest is an HTTP
// request, whose body goes to the parser its target names and then to all three. Bits 1 and 2
// shrink max_inputs and max_json_depth so those limits are reached by small inputs.
#include <bit>
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "serve/api_error.h"
#include "serve/embedding_request.h"
#include "serve/http_framing.h"

namespace http = boost::beast::http;
using nlohmann::json;
using namespace ember::serve;

namespace {

[[noreturn]] void fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "request_fuzz: %s %.*s\n", what, static_cast<int>(std::min<size_t>(detail.size(), 400)),
               detail.data());
  std::abort();
}

#define CHECK(condition, detail)                                 \
  do {                                                           \
    if (!(condition)) fail("check failed: " #condition, detail); \
  } while (0)

// Floats of every class (NaN, infinities, subnormals, -0) taken from the input's own bytes.
std::vector<float> floats_from(std::string_view bytes) {
  std::vector<float> values;
  for (size_t i = 0; i + 4 <= bytes.size() && values.size() < 8; i += 4) {
    uint32_t bits;
    std::memcpy(&bits, bytes.data() + i, 4);
    values.push_back(std::bit_cast<float>(bits));
  }
  values.push_back(static_cast<float>(bytes.size()) * 0.1f);
  return values;
}

std::vector<unsigned char> base64_decode(const std::string& text) {
  static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  CHECK(text.size() % 4 == 0, text);
  std::vector<unsigned char> bytes;
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t group = 0;
    int pad = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = text[i + k];
      const size_t v = c == '=' ? 0 : alphabet.find(c);
      CHECK(v != std::string::npos, text);
      pad += c == '=';
      group = group << 6 | static_cast<uint32_t>(v);
    }
    bytes.push_back(static_cast<unsigned char>(group >> 16));
    if (pad < 2) bytes.push_back(static_cast<unsigned char>(group >> 8));
    if (pad < 1) bytes.push_back(static_cast<unsigned char>(group));
  }
  return bytes;
}

// A written float: null for a non-finite value, else the same float32 (-0 may read back as 0).
void check_float(const json& written, float value) {
  if (!std::isfinite(value)) {
    CHECK(written.is_null(), written.dump());
    return;
  }
  CHECK(written.is_number(), written.dump());
  const float back = static_cast<float>(written.get<double>());
  CHECK(value == 0.0f ? back == 0.0f : std::bit_cast<uint32_t>(back) == std::bit_cast<uint32_t>(value), written.dump());
}

void check_writers(const std::vector<std::vector<float>>& embeddings, const std::string& model) {
  const json floats = json::parse(write_openai_embeddings(embeddings, false, model, 42));
  const json base64 = json::parse(write_openai_embeddings(embeddings, true, model, 42));
  const json tei = json::parse(write_tei_embeddings(embeddings));
  CHECK(floats["object"] == "list" && floats["usage"]["total_tokens"] == 42, floats.dump());
  CHECK(floats["data"].size() == embeddings.size() && base64["data"].size() == embeddings.size(), "");
  CHECK(tei.size() == embeddings.size(), "");
  for (size_t i = 0; i < embeddings.size(); ++i) {
    const std::vector<float>& e = embeddings[i];
    const json& vector = floats["data"][i]["embedding"];
    CHECK(floats["data"][i]["index"] == i && vector.size() == e.size() && tei[i].size() == e.size(), vector.dump());
    for (size_t k = 0; k < e.size(); ++k) {
      check_float(vector[k], e[k]);
      check_float(tei[i][k], e[k]);
    }
    const std::vector<unsigned char> bytes = base64_decode(base64["data"][i]["embedding"].get<std::string>());
    CHECK(bytes.size() == e.size() * sizeof(float) && std::memcmp(bytes.data(), e.data(), bytes.size()) == 0,
          base64["data"][i]["embedding"].dump());
  }
}

// Texts cut into 1..3-byte pieces, which splits UTF-8 sequences: the writer must still emit JSON.
void check_tokenize_writer(const std::vector<std::string>& texts) {
  std::vector<std::vector<TokenView>> tokens;
  for (const std::string& text : texts) {
    auto& row = tokens.emplace_back();
    for (size_t i = 0; i < text.size() && row.size() < 64;) {
      const size_t n = 1 + (static_cast<unsigned char>(text[i]) % 3);
      row.push_back({static_cast<int32_t>(i), text.substr(i, n), (text[i] & 8) != 0});
      i += n;
    }
  }
  const json written = json::parse(write_tokenize_response(tokens));
  CHECK(written.size() == tokens.size(), "");
  for (size_t i = 0; i < tokens.size(); ++i) {
    CHECK(written[i].size() == tokens[i].size(), "");
    for (size_t j = 0; j < tokens[i].size(); ++j) {
      CHECK(written[i][j]["id"] == tokens[i][j].id && written[i][j]["special"] == tokens[i][j].special, "");
      CHECK(written[i][j]["text"].is_string() && written[i][j]["stop"].is_null(), "");
    }
  }
}

// Texts must come out of the parser as valid UTF-8: a strict dump throws on anything else.
void check_utf8(const std::string& text) { (void)json(text).dump(); }

void check_inputs(const EmbeddingInputs& inputs, const RequestLimits& limits, std::string_view body) {
  CHECK(inputs.size() >= 1 && inputs.size() <= limits.max_inputs, body);
  std::vector<std::vector<float>> embeddings;
  if (inputs.is_tokens) {
    CHECK(inputs.texts.empty(), body);
    for (const auto& ids : inputs.token_ids) {
      CHECK(!ids.empty(), body);
      for (int32_t id : ids) CHECK(id >= 0, body);
      embeddings.push_back(floats_from({reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t)}));
    }
  } else {
    CHECK(inputs.token_ids.empty(), body);
    for (const std::string& text : inputs.texts) {
      CHECK(!text.empty(), body);
      check_utf8(text);
      embeddings.push_back(floats_from(text));
    }
  }
  check_writers(embeddings, inputs.is_tokens ? std::string("m\xFF\"") : inputs.texts.front());
}

// An accepted body is JSON; a refusal is a 400 whose error body is JSON.
template <typename Parse>
void run_parser(std::string_view body, Parse parse) {
  try {
    parse();
  } catch (const ApiError& e) {
    CHECK(e.status == 400, e.what());
    CHECK(std::strlen(e.what()) > 0 && std::strlen(e.what()) < 1024, e.what());
    CHECK(json::accept(error_body(e)), e.what());
    return;
  }
  CHECK(json::accept(body), body);
}

void parse_openai(std::string_view body, const RequestLimits& limits) {
  run_parser(body, [&] {
    const OpenAiEmbeddingRequest r = parse_openai_embedding_request(body, limits);
    CHECK(r.dimensions >= 0, body);
    check_utf8(r.model);
    if (r.user) check_utf8(*r.user);
    check_inputs(r.input, limits, body);
  });
}

void parse_tei(std::string_view body, const RequestLimits& limits) {
  run_parser(body, [&] {
    const TeiEmbedRequest r = parse_tei_embed_request(body, limits);
    CHECK(r.dimensions >= 0 && r.prompt_name.empty(), body);
    check_inputs(r.inputs, limits, body);
  });
}

void parse_tokenize(std::string_view body, const RequestLimits& limits) {
  run_parser(body, [&] {
    const TokenizeRequest r = parse_tokenize_request(body, limits);
    CHECK(!r.texts.empty() && r.texts.size() <= limits.max_inputs, body);
    for (const std::string& text : r.texts) check_utf8(text);
    check_tokenize_writer(r.texts);
  });
}

void parse_all(std::string_view body, const RequestLimits& limits) {
  parse_openai(body, limits);
  parse_tei(body, limits);
  parse_tokenize(body, limits);
}

void fuzz_http(const uint8_t* data, size_t size, const RequestLimits& limits) {
  http::request_parser<http::string_body> parser;
  parser.header_limit(16 * 1024);
  parser.body_limit(1024 * 1024);
  parser.eager(true);
  boost::beast::error_code ec;
  while (!parser.is_done()) {
    const size_t used = parser.put(boost::asio::buffer(data, size), ec);
    data += used;
    size -= used;
    if (ec == http::error::need_more) {
      ec = {};
      if (used == 0 || size == 0) {
        // As http::read does: end of stream before any byte is no message; put_eof asserts on it.
        if (parser.got_some()) parser.put_eof(ec);
        break;
      }
      continue;
    }
    if (ec || used == 0) break;
  }
  if (parser.is_header_done()) {
    // The server's own checks of a head (RFC 9112 framing) and its capped quoting of request text.
    const auto& head = parser.get().base();
    const auto why = framing_error(head, parser.chunked());
    if (head.count(http::field::transfer_encoding) > 0 && !parser.chunked()) CHECK(why.has_value(), "TE not chunked");
    for (const std::string_view text : {head.method_string(), head.target()}) {
      const std::string quoted = quoted_prefix(text, 40);
      CHECK(quoted.size() <= 40 + 32, quoted);
      CHECK(text.size() > 40 || quoted == text, quoted);
    }
  }
  if (ec || !parser.is_done()) return;
  const auto& request = parser.get();
  const std::string_view target = request.target();
  const std::string& body = request.body();
  if (target == "/v1/embeddings" || target == "/embeddings") {
    parse_openai(body, limits);
  } else if (target == "/embed") {
    parse_tei(body, limits);
  } else if (target == "/tokenize") {
    parse_tokenize(body, limits);
  }
  parse_all(body, limits);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  RequestLimits limits;
  if (mode & 2) limits.max_inputs = 3;
  if (mode & 4) limits.max_json_depth = 4;
  if (mode & 1) {
    parse_all({reinterpret_cast<const char*>(data + 1), size - 1}, limits);
  } else {
    fuzz_http(data + 1, size - 1, limits);
  }
  return 0;
}

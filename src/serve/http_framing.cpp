#include "serve/http_framing.h"

namespace ember::serve {

namespace http = boost::beast::http;

std::optional<std::string> framing_error(const http::request_header<>& head, bool chunked) {
  const size_t hosts = head.count(http::field::host);
  if (head.version() >= 11 && hosts == 0) return "an HTTP/1.1 request needs a Host header";
  if (hosts > 1) return "the request has more than one Host header";
  if (head.count(http::field::transfer_encoding) > 0) {
    if (!chunked) {
      return "Transfer-Encoding '" + quoted_prefix(head[http::field::transfer_encoding], 100) +
             "' does not end in chunked, so the body length is unknown";
    }
    if (head.count(http::field::content_length) > 0) {
      return "the request has both Transfer-Encoding and Content-Length";
    }
  }
  return std::nullopt;
}

std::string quoted_prefix(std::string_view text, size_t limit) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "...(" + std::to_string(text.size()) + " bytes)";
}

}  // namespace ember::serve

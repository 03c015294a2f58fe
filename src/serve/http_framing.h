#pragma once
// Checks of a parsed request head that Boost.Beast leaves to the server (RFC 9112), and the capped
// quoting of request text (method, target) in errors and logs.
#include <boost/beast/http.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace ember::serve {

// Why a request head must be refused with 400 and the connection closed, or nullopt. `chunked` is
// what the parser made of Transfer-Encoding (true only when its last coding is chunked).
//  - HTTP/1.1 without exactly one Host header (RFC 9112 §3.2);
//  - a Transfer-Encoding whose last coding is not chunked: the body length cannot be known, and
//    reading on would take the body for the next request (RFC 9112 §6.3);
//  - Transfer-Encoding together with Content-Length (a request-smuggling vector, RFC 9112 §6.1).
std::optional<std::string> framing_error(const boost::beast::http::request_header<>& head, bool chunked);

// `text` for an error message or a log line: at most `limit` bytes, then how much was left out.
std::string quoted_prefix(std::string_view text, size_t limit = 200);

}  // namespace ember::serve

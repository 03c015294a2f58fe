#pragma once
// HTTP/1.1 on Boost.Beast: keep-alive, many concurrent connections (one strand each, at most
// max_connections), a body size limit, read and idle timeouts, `Expect: 100-continue`, HEAD, the
// framing checks of RFC 9112 (http_framing.h), and a graceful stop that lets responses in progress
// finish. It knows nothing of routes: every parsed request goes to one Handler, which answers
// through a Respond callback that may run later on any thread (exactly once). A request's head can
// be answered before its body is read (HeaderCheck: authentication), and a connection that closes
// while its request is being handled is reported to the handler (RequestContext::abandoned).
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ember::serve {

struct SessionContext;

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;
using Respond = std::function<void(HttpResponse)>;

// Set when the client closed its connection (or reset it) before its answer was written, so queued
// work for it can be dropped. Read from any thread.
struct RequestContext {
  std::shared_ptr<const std::atomic<bool>> abandoned;
};
using Handler = std::function<void(HttpRequest&&, Respond, RequestContext)>;

// What the HTTP layer did on its own, for the metrics and the log.
enum class HttpEvent {
  Refused,       // a request answered by the layer itself: framing 400, 413, 431, 503 over max_connections
  ReadTimeout,   // a request started but not completed within read_timeout
  AcceptFailed,  // accept() failed (out of file descriptors, say); retried after 50 ms
};

struct HttpHooks {
  // The response to a request the layer refuses before any handler sees it.
  std::function<HttpResponse(int status, const std::string& message)> on_error;
  // Called with a request's head before its body is read or `100 Continue` is sent; a response
  // returned answers the request at once (the body is not read).
  std::function<std::optional<HttpResponse>(const boost::beast::http::request_header<>&)> check_header;
  // The layer's events with a detail (the status and message, the error): may be empty.
  std::function<void(HttpEvent, int status, const std::string& detail)> observe;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;                   // 0: any free port (see HttpServer::port())
  uint64_t body_limit = 2ull << 20;       // bytes; larger bodies get 413 (TEI: 2 MB)
  uint32_t header_limit = 64u << 10;      // bytes of request line + headers
  std::chrono::seconds read_timeout{30};  // to read one whole request once it has started
  std::chrono::seconds idle_timeout{75};  // keep-alive connection with no request
  std::chrono::seconds write_timeout{60};
  size_t max_connections = 4096;  // more are answered 503 and closed
};

class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, HttpServerOptions options, Handler handler, HttpHooks hooks);
  ~HttpServer();

  // Binds and listens (throws ember::Error naming the address when it cannot), then accepts.
  void start();
  // Adopts an already listening socket (socket activation) instead of binding.
  void start_on(int listening_fd);
  uint16_t port() const;

  // Stops accepting and closes idle keep-alive connections; connections with a request in
  // progress close after their response is written.
  void stop();
  // Answers every request that is still unanswered with `make_response()` (503 at the drain
  // timeout), on the sessions' own threads; the handler's later answer is dropped.
  void answer_pending(const std::function<HttpResponse()>& make_response);
  size_t open_connections() const;

 private:
  class Session;
  void accept();
  void track(const std::shared_ptr<Session>& session);

  boost::asio::io_context& io_;
  const HttpServerOptions options_;
  std::shared_ptr<const SessionContext> context_;  // what every session shares
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer retry_timer_;
  mutable std::mutex sessions_mutex_;
  std::vector<std::weak_ptr<Session>> sessions_;
  bool stopped_ = false;
  bool accept_failing_ = false;  // on the acceptor's strand
};

}  // namespace ember::serve

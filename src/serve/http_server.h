#pragma once
// HTTP/1.1 on Boost.Beast: keep-alive, many concurrent connections (one strand each), a body size
// limit, read and idle timeouts, `Expect: 100-continue`, and a graceful stop that lets responses in
// progress finish. It knows nothing of routes: every parsed request goes to one Handler, which
// answers through a Respond callback that may run later on any thread (exactly once).
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ember::serve {

struct SessionContext;

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;
using Respond = std::function<void(HttpResponse)>;
using Handler = std::function<void(HttpRequest&&, Respond)>;
// Answers a request the HTTP layer rejects before any handler sees it (body too large, bad framing).
using ErrorResponder = std::function<HttpResponse(int status, const std::string& message)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;                   // 0: any free port (see HttpServer::port())
  uint64_t body_limit = 64ull << 20;      // bytes; larger bodies get 413
  uint32_t header_limit = 64u << 10;      // bytes of request line + headers
  std::chrono::seconds read_timeout{30};  // to read one whole request once it has started
  std::chrono::seconds idle_timeout{75};  // keep-alive connection with no request
  std::chrono::seconds write_timeout{60};
};

class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, HttpServerOptions options, Handler handler, ErrorResponder on_error);
  ~HttpServer();

  // Binds and listens (throws ember::Error naming the address when it cannot), then accepts.
  void start();
  // Adopts an already listening socket (socket activation) instead of binding.
  void start_on(int listening_fd);
  uint16_t port() const;

  // Stops accepting and closes idle keep-alive connections; connections with a request in
  // progress close after their response is written.
  void stop();
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
};

}  // namespace ember::serve

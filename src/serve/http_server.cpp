#include "serve/http_server.h"

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <optional>

#include "ember/error.h"

namespace ember::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// What sessions share with the server; held by shared_ptr so a session never outlives it.
struct SessionContext {
  HttpServerOptions options;
  Handler handler;
  ErrorResponder on_error;
};

class HttpServer::Session : public std::enable_shared_from_this<HttpServer::Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<const SessionContext> context)
      : stream_(std::move(socket)), context_(std::move(context)) {}

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  // Called from any thread at shutdown.
  void stop() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      if (!self->busy_) self->close();
    });
  }

 private:
  void read_header() {
    if (stopping_) return close();
    parser_.emplace();
    parser_->body_limit(context_->options.body_limit);
    parser_->header_limit(context_->options.header_limit);
    stream_.expires_after(served_any_ ? context_->options.idle_timeout : context_->options.read_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    busy_ = true;
    stream_.expires_after(context_->options.read_timeout);
    const auto& req = parser_->get();
    if (beast::iequals(req[http::field::expect], "100-continue") && !parser_->is_done()) {
      // Clients such as curl wait for this before sending a large body.
      auto interim = std::make_shared<http::response<http::empty_body>>(http::status::continue_, req.version());
      http::async_write(stream_, *interim, [self = shared_from_this(), interim](beast::error_code ec2, size_t) {
        if (ec2) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_request(ec); });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return reject(413, "the request body is larger than the server's limit of " +
                             std::to_string(context_->options.body_limit) + " bytes");
    }
    if (ec == http::error::header_limit) return reject(431, "the request headers are too large");
    if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return reject(400, "malformed HTTP request: " + ec.message());
    }
    close();  // end of stream, timeout, reset, or shutdown
  }

  void reject(int status, const std::string& message) {
    busy_ = true;
    keep_alive_ = false;
    unread_request_ = true;
    write(context_->on_error(status, message));
  }

  void on_request(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    stream_.expires_never();  // the handler's own limits bound the wait; the response gets a timeout
    HttpRequest req = parser_->release();
    keep_alive_ = req.keep_alive();
    served_any_ = true;
    auto answered = std::make_shared<std::atomic<bool>>(false);
    Respond respond = [self = shared_from_this(), answered](HttpResponse res) {
      if (answered->exchange(true)) return;
      asio::post(self->stream_.get_executor(), [self, res = std::move(res)]() mutable { self->write(std::move(res)); });
    };
    try {
      context_->handler(std::move(req), respond);
    } catch (const std::exception& e) {
      respond(context_->on_error(500, std::string("internal error: ") + e.what()));
    }
  }

  void write(HttpResponse res) {
    res.keep_alive(keep_alive_ && !stopping_);
    res.prepare_payload();
    response_ = std::make_shared<HttpResponse>(std::move(res));
    stream_.expires_after(context_->options.write_timeout);
    http::async_write(stream_, *response_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->busy_ = false;
      const bool again = !ec && self->response_->keep_alive();
      self->response_.reset();
      if (!again) return self->unread_request_ ? self->linger() : self->close();
      self->read_header();
    });
  }

  // After answering a request whose body was not read (413, say): closing at once would make the
  // kernel reset the connection, and a client still uploading would see the reset, not the answer.
  // So stop sending, read and drop what the client still sends for a short while, then close.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::chrono::seconds(2));
    discard();
  }

  void discard() {
    stream_.async_read_some(asio::buffer(discard_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->discarded_ += n;
      if (ec || self->discarded_ > kMaxDiscardBytes) return self->close();
      self->discard();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  std::shared_ptr<const SessionContext> context_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpResponse> response_;
  static constexpr size_t kMaxDiscardBytes = size_t{256} << 20;
  std::array<char, 16384> discard_;
  size_t discarded_ = 0;
  bool unread_request_ = false;  // the last request was answered before it was read in full
  bool keep_alive_ = true;
  bool busy_ = false;  // a request is being read, handled or answered
  bool stopping_ = false;
  bool served_any_ = false;
};

HttpServer::HttpServer(asio::io_context& io, HttpServerOptions options, Handler handler, ErrorResponder on_error)
    : io_(io),
      options_(std::move(options)),
      context_(std::make_shared<SessionContext>(SessionContext{options_, std::move(handler), std::move(on_error)})),
      acceptor_(asio::make_strand(io)),
      retry_timer_(acceptor_.get_executor()) {}

HttpServer::~HttpServer() = default;

void HttpServer::start() {
  beast::error_code ec;
  const auto address = asio::ip::make_address(options_.host, ec);
  if (ec) throw Error("--host '" + options_.host + "' is not an IP address");
  const tcp::endpoint endpoint(address, options_.port);
  const std::string where = options_.host + ":" + std::to_string(options_.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + where + ": " + ec.message());
  accept();
}

void HttpServer::start_on(int listening_fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(listening_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw Error("socket " + std::to_string(listening_fd) + " passed to the server is not a socket");
  }
  beast::error_code ec;
  acceptor_.assign(addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), listening_fd, ec);
  if (ec) throw Error("cannot accept on socket " + std::to_string(listening_fd) + ": " + ec.message());
  accept();
}

uint16_t HttpServer::port() const {
  beast::error_code ec;
  const auto endpoint = acceptor_.local_endpoint(ec);
  return ec ? 0 : endpoint.port();
}

void HttpServer::accept() {
  acceptor_.async_accept(asio::make_strand(io_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      auto session = std::make_shared<Session>(std::move(socket), context_);
      track(session);
      session->start();
    }
    std::lock_guard lock(sessions_mutex_);
    if (stopped_) return;
    if (!ec) return accept();
    // A transient failure (out of file descriptors, say) must neither stop accepting nor spin.
    retry_timer_.expires_after(std::chrono::milliseconds(50));
    retry_timer_.async_wait([this](beast::error_code timer_ec) {
      if (!timer_ec) accept();
    });
  });
}

void HttpServer::track(const std::shared_ptr<Session>& session) {
  std::lock_guard lock(sessions_mutex_);
  std::erase_if(sessions_, [](const std::weak_ptr<Session>& s) { return s.expired(); });
  sessions_.push_back(session);
  // Accepted while stop() ran, after it collected the sessions: without this, such a connection
  // stayed open (keep-alive) until the shutdown gave up waiting for connections to close.
  if (stopped_) session->stop();
}

void HttpServer::stop() {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(sessions_mutex_);
    stopped_ = true;
    for (const auto& weak : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  asio::post(acceptor_.get_executor(), [this] {
    beast::error_code ignored;
    acceptor_.close(ignored);
  });
  for (const auto& s : live) s->stop();
}

size_t HttpServer::open_connections() const {
  std::lock_guard lock(sessions_mutex_);
  size_t n = 0;
  for (const auto& s : sessions_) n += s.expired() ? 0 : 1;
  return n;
}

}  // namespace ember::serve

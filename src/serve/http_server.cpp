#include "serve/http_server.h"

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <cerrno>
#include <optional>

#include "ember/error.h"
#include "serve/http_framing.h"

namespace ember::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// What sessions share with the server; held by shared_ptr so a session never outlives it.
struct SessionContext {
  HttpServerOptions options;
  Handler handler;
  HttpHooks hooks;
  mutable std::atomic<size_t> sessions{0};  // live Session objects

  void observe(HttpEvent event, int status, const std::string& detail) const {
    if (hooks.observe) hooks.observe(event, status, detail);
  }
};

class HttpServer::Session : public std::enable_shared_from_this<HttpServer::Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<const SessionContext> context)
      : stream_(std::move(socket)), context_(std::move(context)) {
    context_->sessions.fetch_add(1);
  }
  ~Session() { context_->sessions.fetch_sub(1); }

  // From any thread: answers the request being handled, if it has no answer yet.
  void answer_pending(std::function<HttpResponse()> make_response) {
    asio::post(stream_.get_executor(), [self = shared_from_this(), make_response = std::move(make_response)] {
      if (!self->answered_ || self->answered_->exchange(true)) return;
      self->keep_alive_ = false;
      self->write(make_response());
    });
  }

  // Answers 503 at once and closes: the server holds max_connections already.
  void refuse() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      HttpResponse res = self->context_->hooks.on_error(
          503, "the server has its maximum of " + std::to_string(self->context_->options.max_connections) +
                   " connections open; retry shortly");
      res.set(http::field::retry_after, "1");
      self->context_->observe(HttpEvent::Refused, 503, "connection limit");
      self->busy_ = true;
      self->keep_alive_ = false;
      self->unread_request_ = true;
      self->write(std::move(res));
    });
  }

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
    if (auto why = framing_error(req, parser_->chunked())) return reject(400, "malformed HTTP request: " + *why);
    if (context_->hooks.check_header) {
      if (auto early = context_->hooks.check_header(req)) {
        // Answered from the head alone: a body still to come is never read, so the connection closes.
        keep_alive_ = req.keep_alive() && parser_->is_done();
        unread_request_ = !parser_->is_done();
        head_ = req.method() == http::verb::head;
        return write(std::move(*early));
      }
    }
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
    if (ec == beast::error::timeout && (busy_ || buffer_.size() > 0 || (parser_ && parser_->got_some()))) {
      context_->observe(HttpEvent::ReadTimeout, 0, "no complete request within the read timeout");
    }
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
    context_->observe(HttpEvent::Refused, status, message);
    write(context_->hooks.on_error(status, message));
  }

  void on_request(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    stream_.expires_never();  // the handler's own limits bound the wait; the response gets a timeout
    HttpRequest req = parser_->release();
    keep_alive_ = req.keep_alive();
    head_ = req.method() == http::verb::head;
    served_any_ = true;
    abandoned_ = std::make_shared<std::atomic<bool>>(false);
    watch();
    auto answered = std::make_shared<std::atomic<bool>>(false);
    answered_ = answered;
    Respond respond = [self = shared_from_this(), answered](HttpResponse res) {
      if (answered->exchange(true)) return;
      asio::post(self->stream_.get_executor(), [self, res = std::move(res)]() mutable { self->write(std::move(res)); });
    };
    try {
      context_->handler(std::move(req), respond, RequestContext{abandoned_});
    } catch (const std::exception& e) {
      respond(context_->hooks.on_error(500, std::string("internal error: ") + e.what()));
    }
  }

  // While a request is handled, waits for the socket to become readable: end of stream or a reset
  // means the client left (nginx's 499); bytes mean a pipelined request, left for read_header().
  void watch() {
    watching_ = true;
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->watching_) return;
      self->watching_ = false;
      char byte;
      const ssize_t n = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        self->abandoned_->store(true);
      }
    });
  }

  void write(HttpResponse res) {
    answered_.reset();
    if (watching_) {
      watching_ = false;
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
    }
    res.keep_alive(keep_alive_ && !stopping_);
    if (head_) {
      // HEAD: the headers a GET would get, Content-Length included, and no body.
      const size_t length = res.body().size();
      res.body().clear();
      res.content_length(length);
    } else {
      res.prepare_payload();
    }
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
  bool unread_request_ = false;                  // the last request was answered before it was read in full
  bool head_ = false;                            // the request being answered is a HEAD
  bool watching_ = false;                        // watch() waits for the client to leave
  std::shared_ptr<std::atomic<bool>> answered_;  // the request being handled; set once it is answered
  std::shared_ptr<std::atomic<bool>> abandoned_ = std::make_shared<std::atomic<bool>>(false);
  bool keep_alive_ = true;
  bool busy_ = false;  // a request is being read, handled or answered
  bool stopping_ = false;
  bool served_any_ = false;
};

HttpServer::HttpServer(asio::io_context& io, HttpServerOptions options, Handler handler, HttpHooks hooks)
    : io_(io),
      options_(std::move(options)),
      context_(std::make_shared<SessionContext>(options_, std::move(handler), std::move(hooks))),
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
      if (context_->sessions.load() > options_.max_connections) {
        session->refuse();
      } else {
        track(session);
        session->start();
      }
      accept_failing_ = false;
    } else if (!accept_failing_) {
      accept_failing_ = true;  // reported once per run of failures, not every 50 ms
      context_->observe(HttpEvent::AcceptFailed, 0, ec.message());
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

size_t HttpServer::open_connections() const { return context_->sessions.load(); }

void HttpServer::answer_pending(const std::function<HttpResponse()>& make_response) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(sessions_mutex_);
    for (const auto& weak : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (const auto& s : live) s->answer_pending(make_response);
}

}  // namespace ember::serve

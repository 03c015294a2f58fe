#include "serve_load_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace ember::bench {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

tcp::endpoint loopback(uint16_t port) { return {asio::ip::make_address_v4("127.0.0.1"), port}; }

// The usage.prompt_tokens the server reports, read from the end of the body; -1 when absent.
int64_t prompt_tokens(const std::string& body) {
  static constexpr std::string_view kKey = "\"prompt_tokens\":";
  const size_t at = body.rfind(kKey);
  if (at == std::string::npos) return -1;
  int64_t n = -1;
  const char* begin = body.data() + at + kKey.size();
  std::from_chars(begin, body.data() + body.size(), n);
  return n;
}

}  // namespace

BlockingClient::BlockingClient(uint16_t port) : stream_(io_) { stream_.connect(loopback(port)); }

HttpResult BlockingClient::request(const std::string& method, const std::string& target, const std::string& body) {
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!body.empty()) req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();
  http::write(stream_, req);
  http::response_parser<http::string_body> parser;
  parser.body_limit(boost::none);
  http::read(stream_, buffer_, parser);
  return {static_cast<int>(parser.get().result_int()), std::move(parser.get().body())};
}

std::string raw_embedding_request(const LoadRequest& request) {
  return "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Content-Length: " +
         std::to_string(request.body.size()) + "\r\n\r\n" + request.body;
}

namespace {

// What the clients of one level share.
struct LevelState {
  LevelState(const Workload& w, const std::vector<std::string>& r, tcp::endpoint e)
      : workload(w), raw(r), endpoint(e) {}

  const Workload& workload;
  const std::vector<std::string>& raw;
  tcp::endpoint endpoint;
  Clock::time_point window_start, window_end;
  std::mutex mutex;
  std::string first_error;

  void note_error(const std::string& what) {
    std::lock_guard lock(mutex);
    if (first_error.empty()) first_error = what;
  }
};

struct ClientTally {
  int64_t requests = 0, tokens = 0, errors = 0;
  std::vector<double> latencies_ms;
};

class LoadClient : public std::enable_shared_from_this<LoadClient> {
 public:
  LoadClient(asio::io_context& io, LevelState& level, ClientTally& tally, size_t first)
      : stream_(asio::make_strand(io)), timer_(stream_.get_executor()), level_(level), tally_(tally), next_(first) {}

  void start() { connect(); }

 private:
  void connect() {
    stream_.async_connect(level_.endpoint, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->failed("connect: " + ec.message(), true);
      self->send();
    });
  }

  void send() {
    if (Clock::now() >= level_.window_end) return finish();
    current_ = next_++ % level_.raw.size();
    started_ = Clock::now();
    asio::async_write(stream_, asio::buffer(level_.raw[current_]),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        if (ec) return self->failed("write: " + ec.message(), true);
                        self->read();
                      });
  }

  void read() {
    parser_.emplace();
    parser_->body_limit(boost::none);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->failed("read: " + ec.message(), true);
      self->on_response();
    });
  }

  void on_response() {
    const auto done = Clock::now();
    const auto& res = parser_->get();
    const bool counted = done >= level_.window_start && done <= level_.window_end;
    const int64_t expected = level_.workload.requests[current_].tokens;
    const int status = static_cast<int>(res.result_int());
    if (status != 200) {
      const bool busy = status == 429 || status == 503;
      return failed("HTTP " + std::to_string(status) + ": " + res.body().substr(0, 300), !res.keep_alive(),
                    busy ? std::chrono::milliseconds(20) : std::chrono::milliseconds(0), counted);
    }
    if (const int64_t got = prompt_tokens(res.body()); got != expected) {
      return failed(
          "a response reports " + std::to_string(got) + " prompt tokens, the request has " + std::to_string(expected),
          !res.keep_alive(), std::chrono::milliseconds(0), counted);
    }
    if (counted) {
      ++tally_.requests;
      tally_.tokens += expected;
      tally_.latencies_ms.push_back(std::chrono::duration<double, std::milli>(done - started_).count());
    }
    if (!res.keep_alive()) return reconnect(std::chrono::milliseconds(0));
    send();
  }

  // A failed request counts as an error when it ended inside the window (network failures always
  // do); the client goes on, after `pause` for "busy" answers so that it does not spin.
  void failed(const std::string& what, bool reconnect_after, std::chrono::milliseconds pause = {},
              std::optional<bool> counted = std::nullopt) {
    const auto now = Clock::now();
    if (counted.value_or(now >= level_.window_start && now <= level_.window_end)) ++tally_.errors;
    level_.note_error(what);
    if (reconnect_after) return reconnect(std::chrono::milliseconds(10));
    if (pause.count() == 0) return send();
    timer_.expires_after(pause);
    timer_.async_wait([self = shared_from_this()](beast::error_code) { self->send(); });
  }

  void reconnect(std::chrono::milliseconds pause) {
    beast::error_code ignored;
    stream_.socket().close(ignored);
    buffer_.clear();
    if (Clock::now() >= level_.window_end) return finish();
    timer_.expires_after(pause);
    timer_.async_wait([self = shared_from_this()](beast::error_code) { self->connect(); });
  }

  void finish() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  LevelState& level_;
  ClientTally& tally_;
  size_t next_;
  size_t current_ = 0;
  Clock::time_point started_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
};

}  // namespace

LevelResult run_level(const Workload& workload, const std::vector<std::string>& raw_requests,
                      const LevelOptions& options) {
  asio::io_context io;
  LevelState level{workload, raw_requests, loopback(options.port)};
  const auto start = Clock::now();
  level.window_start =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.warmup_s));
  level.window_end =
      level.window_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.seconds));

  std::vector<ClientTally> tallies(static_cast<size_t>(options.concurrency));
  const size_t pool = raw_requests.size();
  for (int c = 0; c < options.concurrency; ++c) {
    // Clients start spread over the pool (7919 is prime) so concurrent requests differ.
    const size_t first = static_cast<size_t>(c) * 7919 % pool;
    std::make_shared<LoadClient>(io, level, tallies[static_cast<size_t>(c)], first)->start();
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, options.threads); ++t) threads.emplace_back([&io] { io.run(); });
  if (options.mark) {
    std::this_thread::sleep_until(level.window_start);
    options.mark(0);
    std::this_thread::sleep_until(level.window_end);
    options.mark(1);
  }
  for (auto& t : threads) t.join();

  LevelResult result;
  result.concurrency = options.concurrency;
  result.window_s = options.seconds;
  for (auto& t : tallies) {
    result.requests += t.requests;
    result.tokens += t.tokens;
    result.errors += t.errors;
    result.latencies_ms.insert(result.latencies_ms.end(), t.latencies_ms.begin(), t.latencies_ms.end());
  }
  result.first_error = level.first_error;
  return result;
}

}  // namespace ember::bench

#pragma once
// `ember serve` as a real process on loopback, and a small synchronous HTTP/1.1 client (Boost.Beast)
// to talk to it, for the server's integration tests.
//
// ServerProcess starts EMBER_BINARY with `serve --host 127.0.0.1 --port 0`, reads the bound port from
// the "listening on 127.0.0.1:PORT" log line, and waits until GET /health answers 200. Its log
// (stderr) is read continuously by a thread, so a chatty access log never blocks the server. The
// destructor kills a server still running, so a failing test leaves no server behind; the child also
// gets SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG), so start servers from the
// test's main thread.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ember/engine.h"
#include "model/make_model.h"
#include "test_support.h"

namespace ember_test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

using Response = http::response<http::string_body>;
using Headers = std::vector<std::pair<std::string, std::string>>;

inline nlohmann::json json_of(const Response& res) {
  try {
    return nlohmann::json::parse(res.body());
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("response body is not JSON (" + std::string(e.what()) + "): " + res.body().substr(0, 300));
  }
}

// One keep-alive connection. Every operation runs asynchronously under a deadline on the client's
// own io_context, so a stalled server fails the test with a message instead of hanging it. Use a
// client from one thread at a time.
class HttpClient {
 public:
  static constexpr std::chrono::seconds kDeadline{120};

  explicit HttpClient(uint16_t port) : stream_(io_) {
    beast::error_code ec;
    stream_.expires_after(kDeadline);
    run([&](auto done) { stream_.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), done); }, ec);
    if (ec) throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port) + ": " + ec.message());
  }

  // True when a new connection to the port is accepted (false: refused).
  static bool can_connect(uint16_t port) {
    try {
      HttpClient probe(port);
      return true;
    } catch (const std::runtime_error&) {
      return false;
    }
  }

  // Sends a request without waiting for its answer (read() it later). A server may answer and close
  // before a large body is all sent (413): a failed write is then left for read() to report.
  void send(http::verb method, const std::string& target, const std::string& body = "", const Headers& headers = {}) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::user_agent, "ember-serve-test");
    if (method == http::verb::post) req.set(http::field::content_type, "application/json");
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    stream_.expires_after(kDeadline);
    run([&](auto done) { http::async_write(stream_, req, done); }, write_error_);
  }

  Response request(http::verb method, const std::string& target, const std::string& body = "",
                   const Headers& headers = {}) {
    send(method, target, body, headers);
    return read();
  }
  Response get(const std::string& target, const Headers& headers = {}) {
    return request(http::verb::get, target, "", headers);
  }
  Response post(const std::string& target, const std::string& body, const Headers& headers = {}) {
    return request(http::verb::post, target, body, headers);
  }
  Response post(const std::string& target, const nlohmann::json& body, const Headers& headers = {}) {
    return request(http::verb::post, target, body.dump(), headers);
  }

  // Bytes as they are, for malformed requests; then read() the answer.
  void write_raw(std::string_view bytes) {
    stream_.expires_after(kDeadline);
    run([&](auto done) { asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()), done); }, write_error_);
  }

  // The next response on the connection (a 100 Continue is a response of its own). The answer to a
  // HEAD has no body whatever its Content-Length says: pass `head`.
  Response read(bool head = false) {
    http::response_parser<http::string_body> parser;
    parser.skip(head);
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.header_limit(1u << 20);
    beast::error_code ec;
    stream_.expires_after(kDeadline);
    run([&](auto done) { http::async_read(stream_, buffer_, parser, done); }, ec);
    if (ec) {
      const std::string sent = write_error_ ? " (sending the request failed too: " + write_error_.message() + ")" : "";
      if (ec == http::error::end_of_stream) throw std::runtime_error("the server closed the connection" + sent);
      throw std::runtime_error("cannot read a response: " + ec.message() + sent);
    }
    write_error_ = {};
    return parser.release();
  }

  // True when the server has closed the connection: a read ends without data within `wait`.
  bool closed_by_server(std::chrono::seconds wait = std::chrono::seconds(10)) {
    char byte;
    beast::error_code ec;
    stream_.expires_after(wait);
    run([&](auto done) { stream_.async_read_some(asio::buffer(&byte, 1), done); }, ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }

 private:
  template <typename Start>
  void run(Start start, beast::error_code& result) {
    bool finished = false;
    start([&](beast::error_code ec, auto&&...) {
      result = ec;
      finished = true;
    });
    io_.restart();
    io_.run();
    if (!finished) throw std::runtime_error("an HTTP operation never completed");
  }

  asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  beast::error_code write_error_;
};

// The exit of a process as a shell reports it: its exit code, or 128 + the signal that ended it.
inline int shell_status(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

class ServerProcess {
 public:
  // `model`: a model folder; `extra`: more `serve` flags.
  explicit ServerProcess(const std::string& model, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {EMBER_BINARY, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    start(args);
    try {
      wait_until_healthy();
    } catch (...) {
      kill_and_reap();
      throw;
    }
  }

  ~ServerProcess() { kill_and_reap(); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  HttpClient client() const { return HttpClient(port_); }
  // A fresh connection's GET /health status, or 0 when the server does not answer.
  int health() const {
    try {
      return HttpClient(port_).get("/health").result_int();
    } catch (const std::runtime_error&) {
      return 0;
    }
  }

  void signal(int sig) {
    if (pid_ > 0 && !exited_) ::kill(pid_, sig);
  }

  // True while the process has not exited.
  bool running() {
    if (exited_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) record_exit(status);
    return !exited_;
  }

  // Waits for the process to exit (at most `timeout`, then SIGKILL) and returns its shell status.
  int wait_exit(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!exited_) kill_and_reap();
    if (reader_.joinable()) reader_.join();  // the whole log is in
    return exit_status_;
  }

  std::string log() const {
    std::lock_guard lock(mutex_);
    return log_;
  }

  // Waits until the log contains `text` (at most `timeout`); returns whether it does.
  bool wait_for_log(std::string_view text, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    std::unique_lock lock(mutex_);
    return log_changed_.wait_for(lock, timeout, [&] { return log_.find(text) != std::string::npos || log_closed_; }) &&
           log_.find(text) != std::string::npos;
  }

 private:
  void start(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    // Everything the child needs is built before fork: only async-signal-safe calls after it.
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      // No inherited sockets or pipes of other servers: they would keep connections open.
      if (::syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
        for (int fd = 3; fd < 4096; ++fd) ::close(fd);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    ::close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] { read_log(fd); });
  }

  void read_log(int fd) {
    char chunk[4096];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard lock(mutex_);
      if (n <= 0) {
        log_closed_ = true;
        log_changed_.notify_all();
        break;
      }
      log_.append(chunk, static_cast<size_t>(n));
      log_changed_.notify_all();
    }
    ::close(fd);
  }

  void wait_until_healthy() {
    constexpr std::string_view kListening = "listening on 127.0.0.1:";
    if (!wait_for_log(kListening)) throw std::runtime_error("the server did not start listening; its log:\n" + log());
    {
      std::lock_guard lock(mutex_);
      const size_t at = log_.find(kListening) + kListening.size();
      port_ = static_cast<uint16_t>(std::stoi(log_.substr(at, 6)));
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (!running()) break;
      try {
        if (HttpClient(port_).get("/health").result_int() == 200) return;
      } catch (const std::runtime_error&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("the server on port " + std::to_string(port_) + " never became healthy; its log:\n" +
                             log());
  }

  void record_exit(int status) {
    exited_ = true;
    exit_status_ = shell_status(status);
  }

  void kill_and_reap() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      record_exit(status);
    }
    if (reader_.joinable()) reader_.join();
  }

  pid_t pid_ = -1;
  uint16_t port_ = 0;
  bool exited_ = false;
  int exit_status_ = -1;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable log_changed_;
  std::string log_;
  bool log_closed_ = false;
};

}  // namespace ember_test

namespace ember_test {

// The little-endian float32 values of a base64 string (RFC 4648, padded), decoded independently of
// the server's encoder.
inline std::vector<float> decode_base64_floats(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0)
    throw std::runtime_error("base64 length " + std::to_string(text.size()) + " is not a multiple of 4");
  std::string bytes;
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t group = 0;
    int pad = 0;
    for (size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++pad;
        group <<= 6;
        continue;
      }
      const int v = value(c);
      if (v < 0 || pad > 0) throw std::runtime_error("invalid base64 at " + std::to_string(i + j));
      group = group << 6 | static_cast<uint32_t>(v);
    }
    bytes.push_back(static_cast<char>(group >> 16));
    if (pad < 2) bytes.push_back(static_cast<char>(group >> 8 & 0xFF));
    if (pad < 1) bytes.push_back(static_cast<char>(group & 0xFF));
  }
  if (bytes.size() % sizeof(float) != 0) throw std::runtime_error("base64 bytes are not whole float32 values");
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// An "embedding" value as OpenAI sends it: an array of numbers, or base64 float32 bytes.
inline std::vector<float> embedding_of(const nlohmann::json& value) {
  if (value.is_string()) return decode_base64_floats(value.get<std::string>());
  return value.get<std::vector<float>>();
}

// Equal sizes and every value within `tolerance` (0: bit-for-bit the same floats).
inline ::testing::AssertionResult same_floats(const std::vector<float>& got, const std::vector<float>& want,
                                              float tolerance = 0.0f) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: got " << got.size() << ", want " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= tolerance)) {
      return ::testing::AssertionFailure() << "value " << i << " is " << got[i] << ", want " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

inline double l2_norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double{x} * x;
  return std::sqrt(s);
}

// An error response in OpenAI's shape: {"error":{"message","type","param","code"}}, message non-empty,
// param and code a string or null. `param`/`code` empty: expected null.
inline void expect_api_error(const Response& res, int status, const std::string& type, const std::string& param = "",
                             const std::string& code = "") {
  EXPECT_EQ(res.result_int(), status) << res.body();
  EXPECT_EQ(res[http::field::content_type], "application/json");
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(res.body());
  } catch (const nlohmann::json::exception&) {
    ADD_FAILURE() << "error body is not JSON: " << res.body();
    return;
  }
  ASSERT_TRUE(body.is_object() && body.size() == 1 && body.contains("error")) << res.body();
  const auto& e = body["error"];
  ASSERT_TRUE(e.is_object() && e.size() == 4) << res.body();
  ASSERT_TRUE(e["message"].is_string()) << res.body();
  EXPECT_FALSE(e["message"].get<std::string>().empty());
  EXPECT_EQ(e["type"], type) << res.body();
  if (param.empty()) {
    EXPECT_TRUE(e["param"].is_null()) << res.body();
  } else {
    EXPECT_EQ(e["param"], param) << res.body();
  }
  if (code.empty()) {
    EXPECT_TRUE(e["code"].is_null()) << res.body();
  } else {
    EXPECT_EQ(e["code"], code) << res.body();
  }
}

// Prometheus text: `name{labels}` (as written) -> value, for every sample line.
inline std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) throw std::runtime_error("metrics line without a value: " + line);
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// A sample's value; 0 when absent (counters appear with their first event).
inline double metric(const std::map<std::string, double>& metrics, const std::string& key) {
  const auto it = metrics.find(key);
  return it == metrics.end() ? 0.0 : it->second;
}

// A tiny model (real tokenizer, random weights) made once per test process, the default server on
// it (started on first use), and an in-process engine of the same precision the expected values
// come from.
// Polls /metrics on `c` until `key` is at least `value` or `timeout` passes; returns its last value.
inline double wait_for_metric(HttpClient& c, const std::string& key, double value,
                              std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  double now = metric(parse_metrics(c.get("/metrics").body()), key);
  while (now < value && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    now = metric(parse_metrics(c.get("/metrics").body()), key);
  }
  return now;
}

class ServeFixture : public ::testing::Test {
 protected:
  static constexpr const char* kServedName = "ember-tiny";

  static void SetUpTestSuite() {
    root_ = std::make_unique<TempDir>("ember_serve_test");
    ember::MakeModelOptions options;
    options.tokenizer_dir = EMBER_TOKENIZER_DIR;
    ember::make_model(ember::preset_config("tiny"), options, root_->path / "tiny");
  }
  static void TearDownTestSuite() {
    server_.reset();
    engine_.reset();
    root_.reset();
  }

  static std::string model() { return (root_->path / "tiny").string(); }
  static const std::filesystem::path& root() { return root_->path; }

  // --precision exact (the CPU default, named so that the engine below surely matches); a 64 MiB body
  // limit so that the parser's own limits (a million inputs) are reached before the 2 MiB default.
  static ServerProcess& server() {
    if (!server_) {
      server_ = std::make_unique<ServerProcess>(
          model(), std::vector<std::string>{"--served-model-name", kServedName, "--precision", "exact",
                                            "--body-limit-mb", "64"});
    }
    return *server_;
  }

  static ember::Engine& engine() {
    if (!engine_) {
      ember::EngineOptions options;
      options.model = model();
      options.precision = ember::Precision::Exact;
      engine_ = ember::Engine::open(options);
    }
    return *engine_;
  }

  static std::vector<int32_t> ids_of(const std::string& text) { return engine().tokenizer().encode_for_model(text); }
  static std::vector<float> pooled(const std::vector<int32_t>& ids) { return engine().pooled_states({ids})[0]; }
  static std::vector<float> expected(const std::vector<int32_t>& ids, int dimensions = 0, bool normalize = true) {
    return ember::finish_embedding(pooled(ids), dimensions, normalize);
  }
  static std::vector<float> expected(const std::string& text, int dimensions = 0, bool normalize = true) {
    return expected(ids_of(text), dimensions, normalize);
  }

  // The server answers /health with 200 on a new connection, its process is alive, and it has
  // logged no error (a 5xx answer or a failure) but the 503s of /health while the model loaded.
  static void expect_alive(ServerProcess& s) {
    EXPECT_TRUE(s.running()) << s.log();
    EXPECT_EQ(s.health(), 200) << s.log();
    std::istringstream lines(s.log());
    for (std::string line; std::getline(lines, line);) {
      if (line.find("Z error ") != std::string::npos && line.find(" GET /health 503 ") == std::string::npos) {
        ADD_FAILURE() << line;
      }
    }
  }

 private:
  static inline std::unique_ptr<TempDir> root_;
  static inline std::unique_ptr<ServerProcess> server_;
  static inline std::unique_ptr<ember::Engine> engine_;
};

}  // namespace ember_test

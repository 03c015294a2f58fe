#pragma once
// serve_load's HTTP side: a blocking keep-alive connection for probes and checks, and closed-loop
// load levels of C asynchronous keep-alive clients (Boost.Beast) on a small thread pool.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "serve_load_workload.h"

namespace ember::bench {

struct HttpResult {
  int status = 0;
  std::string body;
};

// One keep-alive connection to 127.0.0.1:port, used from one thread.
class BlockingClient {
 public:
  explicit BlockingClient(uint16_t port);
  // Throws boost::system::system_error on a network failure.
  HttpResult request(const std::string& method, const std::string& target, const std::string& body = "");

 private:
  boost::asio::io_context io_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
};

// The raw HTTP/1.1 POST /v1/embeddings request (headers and body) for a workload request.
std::string raw_embedding_request(const LoadRequest& request);

struct LevelOptions {
  uint16_t port = 0;
  int concurrency = 1;
  double warmup_s = 2.0;
  double seconds = 10.0;
  int threads = 1;  // client io threads
  // Called on the calling thread when the measured window opens (0) and closes (1).
  std::function<void(int)> mark;
};

struct LevelResult {
  int concurrency = 0;
  double window_s = 0.0;             // measured window
  int64_t requests = 0;              // answered with 200 and the right token count inside the window
  int64_t tokens = 0;                // their input tokens
  int64_t errors = 0;                // inside the window: non-200, wrong token count, network errors
  std::vector<double> latencies_ms;  // of the window's successful requests
  std::string first_error;           // "" when none (anywhere in the level)
};

// Runs C closed-loop clients: each sends its next request as soon as the last one is answered,
// cycling through the workload from its own offset. Requests answered inside
// [warm-up end, warm-up end + seconds] are measured; then clients stop sending and the level
// returns when every request in flight is answered.
LevelResult run_level(const Workload& workload, const std::vector<std::string>& raw_requests,
                      const LevelOptions& options);

}  // namespace ember::bench

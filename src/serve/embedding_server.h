#pragma once
// `ember serve` as a library object: the model slot, the scheduler, the routes and the HTTP server,
// started and stopped in the right order. The CLI owns signals and printing.
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/model_slot.h"
#include "serve/routes.h"
#include "serve/serve_options.h"
#include "serve/token_budget_batcher.h"

namespace ember::serve {

class EmbeddingServer {
 public:
  EmbeddingServer(ServeOptions options, ServerLog log);
  ~EmbeddingServer();
  EmbeddingServer(const EmbeddingServer&) = delete;
  EmbeddingServer& operator=(const EmbeddingServer&) = delete;

  // Listens (on `listening_fd` when >= 0, else on --host/--port), then loads the model; /health
  // answers "loading" meanwhile. Throws ember::Error when it cannot listen or the model fails to load.
  void start(int listening_fd = -1);
  uint16_t port() const;

  // Asks wait() to drain and return. Safe from any thread (not from a signal handler).
  void request_stop();
  // Blocks until request_stop(), then stops accepting, lets requests in flight finish (at most
  // --drain-timeout; what is left then is answered 503), closes connections and unloads the model.
  // Returns true when every accepted request was answered by its handler; false means work may still
  // be running and the caller should exit the process rather than destroy the server.
  bool wait();

  ModelSlot& slot() { return slot_; }

 private:
  void wait_for_connections_to_close(std::chrono::milliseconds timeout);
  void observe_http(HttpEvent event, int status, const std::string& detail);

  ServeOptions options_;
  ServerLog log_;
  ServerMetrics metrics_;
  ModelSlot slot_;
  boost::asio::io_context io_;
  boost::asio::thread_pool work_;  // parsing and tokenizing of work routes
  std::unique_ptr<TokenBudgetBatcher> batcher_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<HttpServer> http_;
  std::vector<std::thread> io_threads_;
  std::mutex stop_mutex_;
  std::condition_variable stop_requested_cv_;
  bool stop_requested_ = false;
};

// The name a model is served under when --served-model-name is not given: the folder's name for a
// path, the hub id as written otherwise.
std::string default_served_name(const std::string& model);

}  // namespace ember::serve

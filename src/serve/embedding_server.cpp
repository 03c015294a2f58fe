#include "serve/embedding_server.h"

#include <fmt/format.h>

#include <boost/asio/executor_work_guard.hpp>
#include <filesystem>

#include "ember/error.h"

namespace ember::serve {

namespace {

// `requested` threads, or one per core (at least `fewest`) when it is 0.
int thread_count(int requested, int fewest) {
  if (requested > 0) return requested;
  return std::max(fewest, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

std::string default_served_name(const std::string& model) {
  std::error_code ec;
  const std::filesystem::path p(model);
  if (std::filesystem::is_directory(p, ec)) {
    const auto name = std::filesystem::weakly_canonical(p, ec).filename().string();
    if (!name.empty()) return name;
  }
  return model;
}

EmbeddingServer::EmbeddingServer(ServeOptions options, ServerLog log)
    : options_(std::move(options)),
      log_(std::move(log)),
      slot_(
          options_.served_model_name.empty() ? default_served_name(options_.engine.model) : options_.served_model_name,
          options_.engine),
      work_(static_cast<size_t>(thread_count(options_.work_threads, 1))) {
  options_.batch.max_batch_tokens = options_.engine.max_batch_tokens;
  batcher_ = std::make_unique<TokenBudgetBatcher>(slot_, metrics_, options_.batch);
  router_ = std::make_unique<Router>(RouteContext{slot_, *batcher_, metrics_, options_, log_, io_, work_,
                                                  std::chrono::system_clock::now(),
                                                  [this] { return http_ ? http_->open_connections() : 0; }});
  HttpHooks hooks;
  hooks.on_error = [](int status, const std::string& message) { return error_response(ApiError(status, message), 11); };
  hooks.check_header = [this](const boost::beast::http::request_header<>& head) { return router_->check_header(head); };
  hooks.observe = [this](HttpEvent event, int status, const std::string& detail) {
    observe_http(event, status, detail);
  };
  http_ = std::make_unique<HttpServer>(
      io_, options_.http,
      [this](HttpRequest&& req, Respond respond, RequestContext context) {
        router_->handle(std::move(req), std::move(respond), std::move(context));
      },
      std::move(hooks));
}

EmbeddingServer::~EmbeddingServer() {
  if (!io_threads_.empty()) {
    io_.stop();
    for (auto& t : io_threads_) t.join();
  }
  work_.join();
}

void EmbeddingServer::start(int listening_fd) {
  if (listening_fd >= 0) {
    http_->start_on(listening_fd);
  } else {
    http_->start();
  }
  const int threads = thread_count(options_.io_threads, 2);
  for (int i = 0; i < threads; ++i) {
    io_threads_.emplace_back([this] {
      auto guard = boost::asio::make_work_guard(io_);
      io_.run();
    });
  }
  log_.event(LogLevel::Info, fmt::format("listening on {}:{} ({} HTTP threads, authentication {}); loading model '{}'",
                                         options_.http.host, port(), threads,
                                         options_.api_key.empty() ? "off: every route is open" : "on: API key required",
                                         options_.engine.model));
  if (slot_.load() != ModelState::Ready) throw Error("cannot load the model: " + slot_.last_error());
  const auto facts = slot_.facts();
  log_.event(LogLevel::Info, fmt::format("model '{}' ready in {:.2f} s: {} layers, hidden {}, {} MB of device memory",
                                         slot_.served_name(), facts->load_seconds, facts->config.num_hidden_layers,
                                         facts->config.hidden_size, facts->device_memory_bytes >> 20));
}

uint16_t EmbeddingServer::port() const { return http_->port(); }

void EmbeddingServer::observe_http(HttpEvent event, int status, const std::string& detail) {
  switch (event) {
    case HttpEvent::Refused:
      metrics_.observe_http_refusal(status);
      log_.event(LogLevel::Info, fmt::format("refused a request: {} {}", status, detail));
      break;
    case HttpEvent::ReadTimeout:
      metrics_.observe_read_timeout();
      log_.event(LogLevel::Info, "closed a connection: " + detail);
      break;
    case HttpEvent::AcceptFailed:
      metrics_.observe_accept_failure();
      log_.event(LogLevel::Warning, "cannot accept connections: " + detail + " (retrying every 50 ms)");
      break;
  }
}

void EmbeddingServer::request_stop() {
  {
    std::lock_guard lock(stop_mutex_);
    stop_requested_ = true;
  }
  stop_requested_cv_.notify_all();
}

bool EmbeddingServer::wait() {
  {
    std::unique_lock lock(stop_mutex_);
    stop_requested_cv_.wait(lock, [&] { return stop_requested_; });
  }
  const auto in_flight = batcher_->load().requests_in_flight;
  log_.event(LogLevel::Info, fmt::format("stopping: no new connections; {} requests in flight", in_flight));
  http_->stop();
  const bool was_ready = slot_.begin_drain();
  const auto deadline = std::chrono::steady_clock::now() + options_.drain_timeout;
  const bool answered = batcher_->drain(options_.drain_timeout);
  if (!answered) {
    log_.event(LogLevel::Warning, fmt::format("drain timeout ({} ms) passed with {} requests unanswered: "
                                              "answering them 503",
                                              options_.drain_timeout.count(), batcher_->load().requests_in_flight));
    http_->answer_pending([] {
      ApiError e = unavailable("the server is stopping and could not finish this request in its drain timeout", 1);
      return error_response(e, 11);
    });
  }
  // Time for the last answers to be written; never much past the drain timeout.
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  wait_for_connections_to_close(std::max(left, std::chrono::milliseconds(500)));
  io_.stop();
  for (auto& t : io_threads_) t.join();
  io_threads_.clear();
  if (!answered) {
    // A forward pass may still run; waiting for it would overrun the drain timeout.
    log_.event(LogLevel::Info, "stopped (a forward pass was still running)");
    return false;
  }
  batcher_.reset();
  if (was_ready) slot_.finish_drain();
  log_.event(LogLevel::Info, "stopped");
  return true;
}

void EmbeddingServer::wait_for_connections_to_close(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (http_->open_connections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace ember::serve

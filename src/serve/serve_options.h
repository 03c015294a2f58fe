#pragma once
// Everything `ember serve` is configured with; tools/ember fills it from the
// command line.
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "ember/engine.h"
#include "serve/embedding_request.h"
#include "serve/http_server.h"
#include "serve/token_budget_batcher.h"

namespace ember::serve {

// One answered request, for the access log.
struct RequestRecord {
  std::string method;
  std::string target;
  std::string route;  // the matched route, or "other"
  int status = 0;
  double seconds = 0.0;
  int64_t inputs = 0;  // embedding and tokenize routes only
  int64_t tokens = 0;
  std::string error;  // the error message for 4xx/5xx
};

enum class LogLevel { Info, Warning, Error };

// Where the server reports: events (listening, model loaded, draining) and,
// unless disabled, each request. The library never prints; the CLI decides the
// format and the destination.
struct ServerLog {
  std::function<void(LogLevel, const std::string&)> event = [](LogLevel, const std::string&) {};
  std::function<void(const RequestRecord&)> request;  // empty: requests are not logged
};

struct ServeOptions {
  EngineOptions engine;
  std::string served_model_name;  // "": the model folder's name
  HttpServerOptions http;
  BatchLimits batch;
  RequestLimits request;
  int64_t max_input_tokens = 0;                    // 0: the model's maximum
  bool auto_truncate = false;                      // over-long inputs are cut instead of refused
  std::string api_key;                             // non-empty: every route but /health and /metrics needs
                                                   // "Bearer <key>"
  int io_threads = 0;                              // 0: one per core, at least 2
  int work_threads = 0;                            // parse + tokenize; 0: one per core
  std::chrono::milliseconds drain_timeout{30000};  // SIGTERM: time allowed for requests in flight
};

}  // namespace ember::serve

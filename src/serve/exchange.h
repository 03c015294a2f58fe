#pragma once
// One request's way back to its client: sends the response once, and records it in the metrics and
// the access log. Shared by the asynchronous steps of a route (tokenize, queue, compute, write).
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "serve/api_error.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/serve_options.h"

namespace ember::serve {

class Exchange {
 public:
  Exchange(const boost::beast::http::request_header<>& request, std::string route, Respond respond,
           ServerMetrics& metrics, const ServerLog& log, RequestContext context = {});

  void reply(int status, std::string body, const char* content_type = "application/json");
  void fail(const ApiError& error);
  // Inputs and tokens of an embedding or tokenize request, for the log and the metrics.
  void set_work(int64_t inputs, int64_t tokens);
  const std::string& route() const { return record_.route; }
  // Whether the client has left: its work may be dropped, and it is answered 499 (logged, counted).
  bool abandoned() const { return context_.abandoned && context_.abandoned->load(); }
  const std::shared_ptr<const std::atomic<bool>>& abandoned_flag() const { return context_.abandoned; }
  // Records the request as abandoned (499, as nginx logs it) without sending anything.
  void drop();
  // The request's slot among --max-concurrent-requests: held until it is answered or taken.
  void hold(Admission admission) { admission_ = std::move(admission); }
  Admission take_admission() { return std::move(admission_); }

 private:
  void send(HttpResponse response, const std::string& error);

  unsigned version_;
  Respond respond_;
  ServerMetrics& metrics_;
  const ServerLog& log_;
  RequestContext context_;
  Admission admission_;
  RequestRecord record_;
  std::chrono::steady_clock::time_point start_;
};

// A complete error response in OpenAI's shape, with Retry-After / WWW-Authenticate where they apply.
HttpResponse error_response(const ApiError& error, unsigned version);

}  // namespace ember::serve

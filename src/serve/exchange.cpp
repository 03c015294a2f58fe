#include "serve/exchange.h"

#include "serve/http_framing.h"

namespace ember::serve {

namespace http = boost::beast::http;

HttpResponse error_response(const ApiError& error, unsigned version) {
  HttpResponse res{static_cast<http::status>(error.status), version};
  res.set(http::field::server, "ember");
  res.set(http::field::content_type, "application/json");
  if (error.retry_after_s > 0) res.set(http::field::retry_after, std::to_string(error.retry_after_s));
  if (error.status == 401) res.set(http::field::www_authenticate, "Bearer");
  if (!error.allow.empty()) res.set(http::field::allow, error.allow);
  res.body() = error_body(error);
  return res;
}

Exchange::Exchange(const http::request_header<>& request, std::string route, Respond respond, ServerMetrics& metrics,
                   const ServerLog& log, RequestContext context)
    : version_(request.version()),
      respond_(std::move(respond)),
      metrics_(metrics),
      log_(log),
      context_(std::move(context)),
      start_(std::chrono::steady_clock::now()) {
  // A 10 KB method or 60 KB path is not copied into every log line.
  record_.method = quoted_prefix(request.method_string(), 40);
  record_.target = quoted_prefix(request.target());
  record_.route = std::move(route);
}

void Exchange::drop() {
  const ApiError gone = client_closed();
  record_.status = gone.status;
  record_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  record_.error = gone.what();
  admission_.release();
  metrics_.observe_request(record_.route, record_.status, record_.seconds);
  if (log_.request) log_.request(record_);
  respond_ = nullptr;
}

void Exchange::reply(int status, std::string body, const char* content_type) {
  HttpResponse res{static_cast<http::status>(status), version_};
  res.set(http::field::server, "ember");
  res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  send(std::move(res), "");
}

void Exchange::fail(const ApiError& error) { send(error_response(error, version_), error.what()); }

void Exchange::set_work(int64_t inputs, int64_t tokens) {
  record_.inputs = inputs;
  record_.tokens = tokens;
}

void Exchange::send(HttpResponse response, const std::string& error) {
  if (!respond_) return;  // dropped
  if (abandoned()) return drop();
  admission_.release();  // before the client can have the answer and send its next request
  record_.status = static_cast<int>(response.result_int());
  record_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  record_.error = error;
  metrics_.observe_request(record_.route, record_.status, record_.seconds);
  if (log_.request) log_.request(record_);
  respond_(std::move(response));
}

}  // namespace ember::serve

#include "serve/api_error.h"

#include <nlohmann/json.hpp>

namespace ember::serve {

ApiError::ApiError(int status_, std::string message, std::string type_, std::string param_, std::string code_)
    : std::runtime_error(std::move(message)),
      status(status_),
      type(std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

std::string error_body(const ApiError& error) {
  auto optional = [](const std::string& s) {
    return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
  };
  nlohmann::ordered_json body = {{"error",
                                  {{"message", error.what()},
                                   {"type", error.type},
                                   {"param", optional(error.param)},
                                   {"code", optional(error.code)}}}};
  // Invalid UTF-8 in an echoed value must not turn an error report into a second failure.
  return body.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

ApiError bad_request(std::string message, std::string param, std::string code) {
  return ApiError(400, std::move(message), "invalid_request_error", std::move(param), std::move(code));
}

ApiError overloaded(std::string message, int retry_after_s) {
  ApiError e(429, std::move(message), "rate_limit_error", "", "overloaded");
  e.retry_after_s = retry_after_s;
  return e;
}

ApiError client_closed() {
  return ApiError(kClientClosedRequest, "the client closed the connection before the answer", "client_closed_request");
}

ApiError unavailable(std::string message, int retry_after_s) {
  ApiError e(503, std::move(message), "service_unavailable", "", "model_not_ready");
  e.retry_after_s = retry_after_s;
  return e;
}

}  // namespace ember::serve

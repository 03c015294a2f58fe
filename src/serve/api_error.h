#pragma once
// An error a route answers with, in OpenAI's shape:
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
// Thrown by request parsing and the routes; the HTTP layer turns it into the response.
#include <stdexcept>
#include <string>

namespace ember::serve {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "");

  int status;             // HTTP status: 400, 401, 404, 405, 413, 429, 503, 500
  std::string type;       // OpenAI's error type, e.g. "invalid_request_error", "authentication_error"
  std::string param;      // the request field at fault, "" for none (written as null)
  std::string code;       // a machine-readable code, "" for none (written as null)
  int retry_after_s = 0;  // > 0: sent as Retry-After (429 and 503)
  std::string allow;      // 405: the methods the path accepts, sent as Allow
};

// The JSON body of an error response.
std::string error_body(const ApiError& error);

// Shorthands for the common kinds.
ApiError bad_request(std::string message, std::string param = "", std::string code = "");
ApiError overloaded(std::string message, int retry_after_s);   // 429
ApiError unavailable(std::string message, int retry_after_s);  // 503
// nginx's 499: the client closed the connection before its answer (logged and counted, never sent).
constexpr int kClientClosedRequest = 499;
ApiError client_closed();

}  // namespace ember::serve

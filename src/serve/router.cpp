#include <exception>

#include "ember/error.h"
#include "serve/routes.h"

namespace ember::serve {

namespace http = boost::beast::http;

namespace {

std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

bool authorized(const HttpRequest& req, const std::string& key) {
  const std::string_view header = req[http::field::authorization];
  constexpr std::string_view kBearer = "Bearer ";
  if (header.size() != kBearer.size() + key.size()) return false;
  if (!boost::beast::iequals(header.substr(0, kBearer.size()), kBearer)) return false;
  // Constant time over the key, so response timing does not reveal how much of it matched.
  unsigned char diff = 0;
  for (size_t i = 0; i < key.size(); ++i) diff |= static_cast<unsigned char>(header[kBearer.size() + i] ^ key[i]);
  return diff == 0;
}

}  // namespace

Router::Router(RouteContext ctx) : ctx_(ctx) {
  using V = http::verb;
  routes_ = {
      {"/v1/embeddings", V::post, post_openai_embeddings, false, true},
      {"/embeddings", V::post, post_openai_embeddings, false, true},
      {"/embed", V::post, post_tei_embed, false, true},
      {"/tokenize", V::post, post_tokenize, false, true},
      {"/v1/models", V::get, get_models, false, false},
      {"/info", V::get, get_info, false, false},
      {"/health", V::get, get_health, true, false},
      {"/metrics", V::get, get_metrics, true, false},
  };
}

void Router::handle(HttpRequest&& req, Respond respond) {
  const std::string_view path = path_of(req.target());
  const Route* match = nullptr;
  std::string allow;
  for (const auto& r : routes_) {
    if (r.path != path) continue;
    if (r.method == req.method()) {
      match = &r;
      break;
    }
    allow += (allow.empty() ? "" : ", ") + std::string(http::to_string(r.method));
  }
  auto ex = std::make_shared<Exchange>(req, match ? match->path : (allow.empty() ? "other" : std::string(path)),
                                       std::move(respond), ctx_.metrics, ctx_.log);
  if (!match) {
    if (allow.empty()) return ex->fail(ApiError(404, "no route for " + std::string(path), "not_found_error"));
    ApiError e(405, std::string(req.method_string()) + " is not allowed on " + std::string(path) + "; use " + allow,
               "invalid_request_error", "", "method_not_allowed");
    e.allow = allow;
    return ex->fail(e);
  }
  if (!match->open && !ctx_.options.api_key.empty() && !authorized(req, ctx_.options.api_key)) {
    return ex->fail(ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             "authentication_error", "", "invalid_api_key"));
  }
  if (match->counts_activity) ctx_.slot.note_activity();
  try {
    match->fn(ctx_, req, ex);
  } catch (const ApiError& e) {
    ex->fail(e);
  } catch (const Error& e) {
    ex->fail(bad_request(e.what()));
  } catch (const std::exception& e) {
    ex->fail(ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
  }
}

}  // namespace ember::serve

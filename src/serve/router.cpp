#include <boost/asio/post.hpp>
#include <exception>

#include "ember/error.h"
#include "serve/http_framing.h"
#include "serve/process_memory.h"
#include "serve/routes.h"

namespace ember::serve {

namespace http = boost::beast::http;

namespace {

std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

constexpr size_t kLargeBodyBytes = size_t{1} << 20;

ApiError missing_key() {
  return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                  "authentication_error", "", "invalid_api_key");
}

bool authorized(const http::request_header<>& req, const std::string& key) {
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

const Router::Route* Router::find(std::string_view path, http::verb method, std::string* allow) const {
  const Route* match = nullptr;
  for (const auto& r : routes_) {
    if (r.path != path) continue;
    if (r.method == method || (method == http::verb::head && r.method == http::verb::get)) match = &r;
    if (allow) {
      *allow += (allow->empty() ? "" : ", ") + std::string(http::to_string(r.method));
      if (r.method == http::verb::get) *allow += ", HEAD";
    }
  }
  return match;
}

std::optional<HttpResponse> Router::check_header(const http::request_header<>& head) const {
  if (ctx_.options.api_key.empty()) return std::nullopt;
  const Route* match = find(path_of(head.target()), head.method(), nullptr);
  if (!match || match->open || authorized(head, ctx_.options.api_key)) return std::nullopt;
  // Counted and logged like any answered request.
  std::optional<HttpResponse> out;
  Exchange(
      head, match->path, [&out](HttpResponse res) { out = std::move(res); }, ctx_.metrics, ctx_.log)
      .fail(missing_key());
  return out;
}

void Router::handle(HttpRequest&& req, Respond respond, RequestContext request_context) {
  const std::string_view path = path_of(req.target());
  std::string allow;
  const Route* match = find(path, req.method(), &allow);
  auto ex = std::make_shared<Exchange>(req, match ? match->path : (allow.empty() ? "other" : quoted_prefix(path)),
                                       std::move(respond), ctx_.metrics, ctx_.log, std::move(request_context));
  if (!match) {
    if (allow.empty()) return ex->fail(ApiError(404, "no route for " + quoted_prefix(path), "not_found_error"));
    ApiError e(405,
               quoted_prefix(req.method_string(), 40) + " is not allowed on " + quoted_prefix(path) + "; use " + allow,
               "invalid_request_error", "", "method_not_allowed");
    e.allow = allow;
    return ex->fail(e);
  }
  if (!match->open && !ctx_.options.api_key.empty() && !authorized(req, ctx_.options.api_key)) {
    return ex->fail(missing_key());
  }
  if (!match->counts_activity) return run(match->fn, ctx_, req, ex);
  ctx_.slot.note_activity();
  try {
    ex->hold(ctx_.batcher.admit());
  } catch (const ApiError& e) {
    return ex->fail(e);
  }
  boost::asio::post(ctx_.work, [ctx = &ctx_, fn = match->fn, req = std::move(req), ex]() mutable {
    const size_t body_bytes = req.body().size();
    if (ex->abandoned()) {
      ex->drop();  // left while waiting for a worker: nothing to compute
    } else {
      run(fn, *ctx, req, ex);
    }
    // A large body and what was parsed from it are freed by now, except `req` itself: free it and
    // hand the heap back, or glibc keeps it (RSS stayed 1.4-1.9 GB after large requests).
    if (body_bytes >= kLargeBodyBytes) {
      std::string().swap(req.body());
      release_free_memory();
    }
  });
}

void Router::run(RouteFn fn, const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex) {
  try {
    fn(ctx, req, ex);
  } catch (const ApiError& e) {
    ex->fail(e);
  } catch (const Error& e) {
    ex->fail(bad_request(e.what()));
  } catch (const std::exception& e) {
    ex->fail(ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
  }
}

}  // namespace ember::serve

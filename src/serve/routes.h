#pragma once
// The server's routes. Router::handle() authenticates, matches path and method
// (404/405), and hands the request to one of the route functions below, which
// answer through their Exchange.
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "serve/exchange.h"
#include "serve/model_slot.h"
#include "serve/serve_options.h"
#include "serve/token_budget_batcher.h"

namespace ember::serve {

struct RouteContext {
  ModelSlot& slot;
  TokenBudgetBatcher& batcher;
  ServerMetrics& metrics;
  const ServeOptions& options;
  const ServerLog& log;
  boost::asio::io_context& io;  // where finished batches are turned into responses
  // Where work routes parse and tokenize, away from the HTTP threads, so /health and /metrics answer
  // in milliseconds whatever the inputs are. Bounded by --max-concurrent-requests (admission).
  boost::asio::thread_pool& work;
  std::chrono::system_clock::time_point started;
  std::function<size_t()> open_connections;  // HTTP connections open now
};

using ExchangePtr = std::shared_ptr<Exchange>;

// embedding_routes.cpp
void post_openai_embeddings(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
void post_tei_embed(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
void post_tokenize(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
// info_routes.cpp
void get_health(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
void get_info(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
void get_models(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
void get_metrics(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);

class Router {
 public:
  explicit Router(RouteContext ctx);
  void handle(HttpRequest&& req, Respond respond, RequestContext request_context);
  // Answers from the head alone what needs no body: a missing or wrong API key (before the body is
  // uploaded or `100 Continue` invites it).
  std::optional<HttpResponse> check_header(const boost::beast::http::request_header<>& head) const;

 private:
  using RouteFn = void (*)(const RouteContext&, const HttpRequest&, const ExchangePtr&);
  struct Route {
    std::string path;
    boost::beast::http::verb method;
    RouteFn fn;
    bool open;             // answered without the API key (probes and scrapers)
    bool counts_activity;  // a work route: admitted, run on the work pool, keeps an idle model loaded
  };
  // Runs a route, turning what it throws into its error response.
  static void run(RouteFn fn, const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex);
  // The route for a path and method (HEAD takes the GET route), and the methods the path allows.
  const Route* find(std::string_view path, boost::beast::http::verb method, std::string* allow) const;

  RouteContext ctx_;
  std::vector<Route> routes_;
};

}  // namespace ember::serve

#pragma once
// The server's routes. Router::handle() authenticates, matches path and method
// (404/405), and hands the request to one of the route functions below, which
// answer through their Exchange.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
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
  std::chrono::system_clock::time_point started;
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
  void handle(HttpRequest&& req, Respond respond);

 private:
  using RouteFn = void (*)(const RouteContext&, const HttpRequest&, const ExchangePtr&);
  struct Route {
    std::string path;
    boost::beast::http::verb method;
    RouteFn fn;
    bool open;             // answered without the API key (probes and scrapers)
    bool counts_activity;  // keeps an idle model loaded; probes never do
  };
  RouteContext ctx_;
  std::vector<Route> routes_;
};

}  // namespace ember::serve

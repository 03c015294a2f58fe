// GET /health, /info, /v1/models, /metrics. None of them counts as activity (see Router).
#include <nlohmann/json.hpp>

#include "serve/process_memory.h"
#include "serve/routes.h"

namespace ember::serve {

namespace {

const char* dtype_name(const EngineOptions& o) {
  if (o.precision == Precision::Exact) return "float32";
  return o.half_type == HalfType::Float16 ? "float16" : "bfloat16";
}

}  // namespace

void get_health(const RouteContext& ctx, const HttpRequest&, const ExchangePtr& ex) {
  const ModelState state = ctx.slot.state();
  if (state == ModelState::Ready) return ex->reply(200, R"({"status":"ok"})");
  nlohmann::ordered_json body = {{"status", std::string(to_string(state))}};
  if (state == ModelState::Failed) body["error"] = ctx.slot.last_error();
  ex->reply(503, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void get_info(const RouteContext& ctx, const HttpRequest&, const ExchangePtr& ex) {
  const ServeOptions& o = ctx.options;
  nlohmann::ordered_json body = {
      {"model_id", ctx.slot.served_name()},
      {"model_dtype", dtype_name(o.engine)},
      {"model_type", {{"embedding", {{"pooling", "last_token"}}}}},
      {"device", o.engine.device == Device::Cuda ? "cuda" : "cpu"},
      {"state", std::string(to_string(ctx.slot.state()))},
      {"max_concurrent_requests", o.batch.max_queued_requests},
      {"max_batch_tokens", o.batch.max_batch_tokens},
      {"max_batch_requests", o.batch.max_batch_sequences},
      {"max_client_batch_size", o.request.max_inputs},
      {"auto_truncate", o.auto_truncate},
      {"version", "0.1.0"},
  };
  if (const auto facts = ctx.slot.facts()) {
    const int64_t model_max = facts->config.max_position_embeddings;
    body["max_input_length"] =
        o.max_input_tokens > 0 && o.max_input_tokens < model_max ? o.max_input_tokens : model_max;
    body["hidden_size"] = facts->config.hidden_size;
    body["model_dir"] = facts->model_dir;
    body["model_memory_bytes"] = facts->device_memory_bytes;
    body["load_seconds"] = facts->load_seconds;
  }
  ex->reply(200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void get_models(const RouteContext& ctx, const HttpRequest&, const ExchangePtr& ex) {
  const auto created = std::chrono::duration_cast<std::chrono::seconds>(ctx.started.time_since_epoch()).count();
  nlohmann::ordered_json model = {
      {"id", ctx.slot.served_name()}, {"object", "model"}, {"created", created}, {"owned_by", "ember"}};
  nlohmann::ordered_json body = {{"object", "list"}, {"data", nlohmann::ordered_json::array({model})}};
  ex->reply(200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void get_metrics(const RouteContext& ctx, const HttpRequest&, const ExchangePtr& ex) {
  const auto load = ctx.batcher.load();
  ServerMetrics::Gauges g;
  g.queued_sequences = load.queued_sequences;
  g.queued_tokens = load.queued_tokens;
  g.requests_in_flight = load.requests_in_flight;
  g.model_state = std::string(to_string(ctx.slot.state()));
  g.open_connections = ctx.open_connections ? static_cast<int64_t>(ctx.open_connections()) : 0;
  g.resident_memory_bytes = resident_memory_bytes();
  if (const auto facts = ctx.slot.facts(); facts && g.model_state != "unloaded") {
    g.model_memory_bytes = facts->device_memory_bytes;
  }
  ex->reply(200, ctx.metrics.render(g), "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace ember::serve

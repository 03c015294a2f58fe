// POST /v1/embeddings (OpenAI), POST /embed (TEI), POST /tokenize.
#include <boost/asio/post.hpp>
#include <exception>
#include <string>

#include "ember/error.h"
#include "ember/input_policy.h"
#include "model/pooling.h"
#include "serve/process_memory.h"
#include "serve/routes.h"

namespace ember::serve {

namespace {

// After a request this large, freed heap is handed back to the system (its texts, ids and JSON
// easily take hundreds of MB, which glibc would otherwise keep).
constexpr int64_t kLargeRequestTokens = 1 << 16;

// How a request wants its embeddings finished and written.
struct EmbeddingAnswer {
  enum class Format { OpenAi, Tei } format;
  int dimensions = 0;
  bool normalize = true;
  bool base64 = false;
  std::string model;
};

std::shared_ptr<Engine> ready_engine(const RouteContext& ctx) {
  // Draining still serves what was admitted before the stop.
  auto engine = ctx.slot.engine();
  const ModelState state = ctx.slot.state();
  if (!engine || (state != ModelState::Ready && state != ModelState::Draining)) {
    std::string why = "model '" + ctx.slot.served_name() + "' is " + std::string(to_string(state));
    if (state == ModelState::Failed) why += ": " + ctx.slot.last_error();
    throw unavailable(why + "; retry shortly", state == ModelState::Loading ? 1 : 5);
  }
  return engine;
}

InputPolicy input_policy(const RouteContext& ctx, const Engine& engine, bool truncate) {
  InputPolicy policy;
  const int64_t model_max = engine.config().max_position_embeddings;
  const int64_t limit = ctx.options.max_input_tokens;
  policy.max_tokens = limit > 0 && limit < model_max ? limit : model_max;
  policy.vocab_size = engine.config().vocab_size;
  policy.truncate = truncate;
  policy.truncate_hint = "ask for truncation (TEI: \"truncate\": true; server: --auto-truncate)";
  return policy;
}

// The model-input ids of every input under the input policy. `field` names the inputs in errors:
// "input" (OpenAI) or "inputs" (TEI).
std::vector<std::vector<int32_t>> sequences_of(const RouteContext& ctx, const Engine& engine, EmbeddingInputs& inputs,
                                               bool truncate, const char* field) {
  const InputPolicy policy = input_policy(ctx, engine, truncate);
  std::vector<std::vector<int32_t>> out(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    try {
      out[i] = inputs.is_tokens ? token_input(std::move(inputs.token_ids[i]), policy)
                                : text_input(engine.tokenizer(), inputs.texts[i], policy);
    } catch (const InputTooLong& e) {
      throw bad_request(std::string(field) + "[" + std::to_string(i) + "]: " + e.what(), field,
                        "context_length_exceeded");
    } catch (const Error& e) {
      throw bad_request(std::string(field) + "[" + std::to_string(i) + "]: " + e.what(), field);
    }
  }
  return out;
}

void check_dimensions(const Engine& engine, int dimensions) {
  try {
    ember::check_dimensions(dimensions, engine.config().hidden_size);
  } catch (const Error& e) {
    throw bad_request(e.what(), "dimensions");
  }
}

std::string write_answer(const EmbeddingAnswer& answer, std::vector<std::vector<float>>& pooled, int64_t tokens) {
  for (auto& v : pooled) v = finish_embedding(v, answer.dimensions, answer.normalize);
  if (answer.format == EmbeddingAnswer::Format::Tei) return write_tei_embeddings(pooled);
  return write_openai_embeddings(pooled, answer.base64, answer.model, tokens);
}

void embed(const RouteContext& ctx, const ExchangePtr& ex, EmbeddingInputs& inputs, bool truncate,
           EmbeddingAnswer answer) {
  const auto engine = ready_engine(ctx);
  check_dimensions(*engine, answer.dimensions);
  EmbeddingJob job;
  job.abandoned = ex->abandoned_flag();
  job.sequences =
      sequences_of(ctx, *engine, inputs, truncate, answer.format == EmbeddingAnswer::Format::Tei ? "inputs" : "input");
  int64_t tokens = 0;
  for (const auto& s : job.sequences) tokens += static_cast<int64_t>(s.size());
  ex->set_work(static_cast<int64_t>(job.sequences.size()), tokens);
  ctx.metrics.observe_inputs(static_cast<int64_t>(job.sequences.size()), tokens);

  boost::asio::io_context& io = ctx.io;
  job.done = [&io, ex, answer, tokens](std::vector<std::vector<float>> pooled, std::exception_ptr error) {
    // Off the scheduler thread: finishing and writing JSON must not hold up the next batch.
    boost::asio::post(io, [ex, answer, tokens, pooled = std::move(pooled), error]() mutable {
      try {
        if (error) std::rethrow_exception(error);
        ex->reply(200, write_answer(answer, pooled, tokens));
      } catch (const ApiError& e) {
        ex->fail(e);
      } catch (const std::exception& e) {
        ex->fail(ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
      }
      pooled.clear();
      pooled.shrink_to_fit();
      if (tokens > kLargeRequestTokens) release_free_memory();
    });
  };
  ctx.batcher.submit(std::move(job), ex->take_admission());
}

}  // namespace

void post_openai_embeddings(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex) {
  OpenAiEmbeddingRequest r = parse_openai_embedding_request(req.body(), ctx.options.request);
  if (!r.model.empty() && r.model != ctx.slot.served_name()) {
    throw ApiError(404,
                   "the model '" + r.model + "' does not exist; this server serves '" + ctx.slot.served_name() + "'",
                   "invalid_request_error", "model", "model_not_found");
  }
  EmbeddingAnswer answer{EmbeddingAnswer::Format::OpenAi, r.dimensions, true, r.base64, ctx.slot.served_name()};
  embed(ctx, ex, r.input, ctx.options.auto_truncate, std::move(answer));
}

void post_tei_embed(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex) {
  TeiEmbedRequest r = parse_tei_embed_request(req.body(), ctx.options.request);
  EmbeddingAnswer answer{EmbeddingAnswer::Format::Tei, r.dimensions, r.normalize, false, ctx.slot.served_name()};
  embed(ctx, ex, r.inputs, r.truncate.value_or(ctx.options.auto_truncate), std::move(answer));
}

void post_tokenize(const RouteContext& ctx, const HttpRequest& req, const ExchangePtr& ex) {
  const TokenizeRequest r = parse_tokenize_request(req.body(), ctx.options.request);
  const auto engine = ready_engine(ctx);
  const Tokenizer& tokenizer = engine->tokenizer();
  std::vector<std::vector<TokenView>> out(r.texts.size());
  const size_t per_text = static_cast<size_t>(input_policy(ctx, *engine, false).max_tokens);
  const size_t budget = ctx.options.request.max_tokenize_tokens;
  size_t tokens = 0;
  for (size_t i = 0; i < r.texts.size(); ++i) {
    const size_t limit = std::min(per_text, budget - tokens);
    Tokenizer::Limited limited;
    try {
      limited =
          r.add_special_tokens ? tokenizer.encode_for_model(r.texts[i], limit) : tokenizer.encode(r.texts[i], limit);
    } catch (const Error& e) {
      throw bad_request("inputs[" + std::to_string(i) + "]: " + e.what(), "inputs");
    }
    if (limited.over_limit) {
      throw bad_request(limit == per_text ? "inputs[" + std::to_string(i) + "] is longer than the maximum of " +
                                                std::to_string(per_text) + " tokens"
                                          : "the inputs hold more than " + std::to_string(budget) +
                                                " tokens in all, the most one /tokenize answer holds; send fewer",
                        "inputs", "context_length_exceeded");
    }
    const std::vector<int32_t>& ids = limited.ids;
    tokens += ids.size();
    out[i].reserve(ids.size());
    for (int32_t id : ids) {
      Tokenizer::Piece p = tokenizer.piece(id);
      out[i].push_back({id, std::move(p.bytes), p.special});
    }
  }
  ex->set_work(static_cast<int64_t>(r.texts.size()), static_cast<int64_t>(tokens));
  ex->reply(200, write_tokenize_response(out));
  if (tokens > kLargeRequestTokens) release_free_memory();
}

}  // namespace ember::serve

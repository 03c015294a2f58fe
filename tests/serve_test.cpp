// `ember serve` as a real process on loopback, through a real HTTP client: the response of every
// route, values equal to `ember embed` and to the engine, 100 concurrent clients, metrics, and a
// graceful SIGTERM. Errors and malformed HTTP: serve_errors_test.cpp; the OpenAI SDK:
// openai_sdk_test.cpp.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <latch>
#include <regex>

#include "serve_support.h"

namespace {

using namespace ember_test;
using nlohmann::json;

using ServeTest = ServeFixture;

std::string words(const std::string& word, int count) {
  std::string s;
  for (int i = 0; i < count; ++i) s += (i ? " " : "") + word;
  return s;
}

// The embeddings `ember embed` prints for `texts` (one per line), in order.
std::vector<std::vector<float>> ember_embed(const std::string& model, const std::vector<std::string>& texts,
                                            const std::string& flags) {
  TempDir dir("ember_serve_embed");
  const auto input = dir.path / "texts.txt";
  {
    std::ofstream out(input, std::ios::binary);
    for (const auto& t : texts) out << t << '\n';
  }
  const std::string cmd =
      std::string(EMBER_BINARY) + " embed --model " + model + " " + flags + " --input " + input.string() + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char chunk[65536];
  for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, pipe)) > 0;) out.append(chunk, n);
  const int status = ::pclose(pipe);
  if (shell_status(status) != 0) throw std::runtime_error(cmd + " failed: " + out);
  std::vector<std::vector<float>> embeddings;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    embeddings.push_back(json::parse(line)["embedding"].get<std::vector<float>>());
  }
  return embeddings;
}

TEST_F(ServeTest, OpenAiEmbeddingsAnswerEveryInputKindInOpenAisShape) {
  HttpClient c = server().client();
  const std::vector<std::string> texts = {"hello world", "東京 🚀 emoji", "a"};
  const std::vector<int32_t> ids = {9707, 1879, 151643};
  const std::vector<int32_t> ids2 = {64, 65, 66, 67};

  struct Case {
    json input;
    std::vector<std::vector<float>> want;
    int64_t tokens;
  };
  const std::vector<Case> cases = {
      {texts[0], {expected(texts[0])}, static_cast<int64_t>(ids_of(texts[0]).size())},
      {texts,
       {expected(texts[0]), expected(texts[1]), expected(texts[2])},
       static_cast<int64_t>(ids_of(texts[0]).size() + ids_of(texts[1]).size() + ids_of(texts[2]).size())},
      {ids, {expected(ids)}, 3},
      {json::array({ids, ids2}), {expected(ids), expected(ids2)}, 7},
  };
  for (const auto& route : {"/v1/embeddings", "/embeddings"}) {
    for (const auto& tc : cases) {
      for (const bool base64 : {false, true}) {
        SCOPED_TRACE(std::string(route) + " " + tc.input.dump() + (base64 ? " base64" : " float"));
        json req = {{"input", tc.input}, {"model", kServedName}};
        if (base64) req["encoding_format"] = "base64";
        const Response res = c.post(route, req);
        ASSERT_EQ(res.result_int(), 200) << res.body();
        EXPECT_EQ(res[http::field::content_type], "application/json");
        const json body = json_of(res);
        EXPECT_EQ(body["object"], "list");
        EXPECT_EQ(body["model"], kServedName);
        EXPECT_EQ(body["usage"], json({{"prompt_tokens", tc.tokens}, {"total_tokens", tc.tokens}}));
        ASSERT_EQ(body["data"].size(), tc.want.size());
        for (size_t i = 0; i < tc.want.size(); ++i) {
          const json& item = body["data"][i];
          EXPECT_EQ(item["object"], "embedding");
          EXPECT_EQ(item["index"], i);
          EXPECT_EQ(item["embedding"].is_string(), base64);
          const auto got = embedding_of(item["embedding"]);
          EXPECT_TRUE(same_floats(got, tc.want[i])) << "input " << i;
          EXPECT_NEAR(l2_norm(got), 1.0, 1e-5);
        }
      }
    }
  }

  // dimensions: the first N values, re-normalised; base64 carries exactly the same floats.
  const std::vector<float> full = expected(texts[1]);
  for (const int dims : {32, 48, 64}) {
    SCOPED_TRACE("dimensions " + std::to_string(dims));
    const json as_float = json_of(c.post("/v1/embeddings", json{{"input", texts[1]}, {"dimensions", dims}}));
    const json as_base64 = json_of(
        c.post("/v1/embeddings", json{{"input", texts[1]}, {"dimensions", dims}, {"encoding_format", "base64"}}));
    const auto got = embedding_of(as_float["data"][0]["embedding"]);
    ASSERT_EQ(got.size(), static_cast<size_t>(dims));
    EXPECT_NEAR(l2_norm(got), 1.0, 1e-5);
    EXPECT_TRUE(same_floats(got, expected(texts[1], dims)));
    EXPECT_TRUE(same_floats(embedding_of(as_base64["data"][0]["embedding"]), got));
    const double scale = full[0] / got[0];  // a truncated, re-scaled copy of the full vector
    for (int i = 0; i < dims; ++i) EXPECT_NEAR(got[i] * scale, full[i], 1e-5);
  }
  // The model field may be left out; null is "not given".
  for (const json& req : {json{{"input", "x"}}, json{{"input", "x"}, {"model", nullptr}}}) {
    const Response res = c.post("/v1/embeddings", req);
    EXPECT_EQ(res.result_int(), 200) << res.body();
    EXPECT_EQ(json_of(res)["model"], kServedName);
  }
}

TEST_F(ServeTest, TeiEmbedAnswersArraysOfVectors) {
  HttpClient c = server().client();
  const std::vector<std::string> texts = {"first", "second text", words("long", 40)};
  const auto ask = [&](const json& req) {
    const Response res = c.post("/embed", req);
    EXPECT_EQ(res.result_int(), 200) << res.body();
    const json body = json_of(res);
    EXPECT_TRUE(body.is_array());
    return body.get<std::vector<std::vector<float>>>();
  };
  auto got = ask({{"inputs", texts[0]}});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(same_floats(got[0], expected(texts[0])));

  got = ask({{"inputs", texts}});
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_floats(got[i], expected(texts[i])));

  // normalize false: the pooled state itself (not unit length); with dimensions, its first N values.
  got = ask({{"inputs", texts}, {"normalize", false}});
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(same_floats(got[i], pooled(ids_of(texts[i]))));
    EXPECT_GT(std::fabs(l2_norm(got[i]) - 1.0), 1e-3);
  }
  got = ask({{"inputs", texts[1]}, {"normalize", false}, {"dimensions", 40}});
  EXPECT_TRUE(same_floats(got[0], expected(texts[1], 40, false)));
  got = ask({{"inputs", texts[1]}, {"dimensions", 40}});
  EXPECT_TRUE(same_floats(got[0], expected(texts[1], 40)));

  // Token ids, one sequence and several.
  got = ask({{"inputs", {9707, 1879}}});
  EXPECT_TRUE(same_floats(got[0], expected(std::vector<int32_t>{9707, 1879})));
  got = ask({{"inputs", {{1, 2, 3}, {4}}}});
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(same_floats(got[1], expected(std::vector<int32_t>{4})));

  // truncate: the first max-length tokens, the text's <|endoftext|> kept last (the model pools it).
  ServerProcess short_server(model(), {"--max-input-tokens", "16"});
  HttpClient s = short_server.client();
  std::vector<int32_t> cut = ids_of(texts[2]);
  ASSERT_GT(cut.size(), 16u);
  cut.resize(16);
  cut.back() = 151643;
  const Response res = s.post("/embed", json{{"inputs", texts[2]}, {"truncate", true}});
  ASSERT_EQ(res.result_int(), 200) << res.body();
  EXPECT_TRUE(same_floats(json_of(res)[0].get<std::vector<float>>(), expected(cut)));
  expect_api_error(s.post("/embed", json{{"inputs", texts[2]}}), 400, "invalid_request_error", "inputs",
                   "context_length_exceeded");
  expect_api_error(s.post("/embed", json{{"inputs", texts[2]}, {"truncate", false}}), 400, "invalid_request_error",
                   "inputs", "context_length_exceeded");
}

TEST_F(ServeTest, HealthInfoModelsAndTokenize) {
  HttpClient c = server().client();
  Response res = c.get("/health");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(json_of(res), json({{"status", "ok"}}));

  res = c.get("/v1/models");
  ASSERT_EQ(res.result_int(), 200) << res.body();
  json body = json_of(res);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], kServedName);
  EXPECT_EQ(body["data"][0]["object"], "model");
  EXPECT_TRUE(body["data"][0]["created"].is_number_integer());
  EXPECT_EQ(body["data"][0]["owned_by"], "ember");

  res = c.get("/info");
  ASSERT_EQ(res.result_int(), 200) << res.body();
  body = json_of(res);
  EXPECT_EQ(body["model_id"], kServedName);
  EXPECT_EQ(body["model_dtype"], "float32");
  EXPECT_EQ(body["device"], "cpu");
  EXPECT_EQ(body["state"], "ready");
  EXPECT_EQ(body["hidden_size"], 64);
  EXPECT_EQ(body["max_input_length"], 32768);
  EXPECT_EQ(body["max_client_batch_size"], 2048);
  EXPECT_EQ(body["max_concurrent_requests"], 512);
  EXPECT_EQ(body["max_batch_tokens"], 8192);
  EXPECT_EQ(body["auto_truncate"], false);
  EXPECT_EQ(body["model_type"]["embedding"]["pooling"], "last_token");

  const std::string text = "Tokenize: 東京 🚀";
  const std::vector<int32_t> want = ids_of(text);
  res = c.post("/tokenize", json{{"inputs", {text, ""}}});
  ASSERT_EQ(res.result_int(), 200) << res.body();
  body = json_of(res);
  ASSERT_EQ(body.size(), 2u);
  ASSERT_EQ(body[0].size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(body[0][i]["id"], want[i]);
    EXPECT_EQ(body[0][i]["special"], want[i] == 151643);
    EXPECT_TRUE(body[0][i]["text"].is_string());
    EXPECT_TRUE(body[0][i]["start"].is_null());
  }
  EXPECT_EQ(body[0].back()["text"], "<|endoftext|>");
  EXPECT_EQ(body[1], json::parse(R"([{"id":151643,"text":"<|endoftext|>","special":true,"start":null,"stop":null}])"));
  res = c.post("/tokenize", json{{"inputs", text}, {"add_special_tokens", false}});
  body = json_of(res);
  ASSERT_EQ(body.size(), 1u);
  EXPECT_EQ(body[0].size(), want.size() - 1);  // no <|endoftext|>
}

// The same floats as `ember embed` with the same precision flag, for both precisions: one request
// with every text (one batch, as ember embed runs it) and one text per request.
TEST_F(ServeTest, EmbeddingsEqualEmberEmbedOutput) {
  const std::vector<std::string> texts = {"What is the capital of China?", "Gravity pulls masses together.",
                                          "東京 🚀 ñandú", words("repeat", 100), "x"};
  for (const std::string precision : {"exact", "fast"}) {
    SCOPED_TRACE("--precision " + precision);
    const auto want = ember_embed(model(), texts, "--precision " + precision);
    ASSERT_EQ(want.size(), texts.size());
    ServerProcess s(model(), {"--precision", precision});
    HttpClient c = s.client();
    const json all = json_of(c.post("/v1/embeddings", json{{"input", texts}}));
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_TRUE(same_floats(embedding_of(all["data"][i]["embedding"]), want[i])) << "text " << i;
      const json one = json_of(c.post("/v1/embeddings", json{{"input", texts[i]}, {"encoding_format", "base64"}}));
      EXPECT_TRUE(same_floats(embedding_of(one["data"][0]["embedding"]), want[i], 1e-6f)) << "text " << i;
    }
  }
}

TEST_F(ServeTest, MetricsExposeCountersHistogramsAndGauges) {
  HttpClient c = server().client();
  const auto before = parse_metrics(c.get("/metrics").body());
  const std::vector<std::string> texts = {"one", "two words", "three words here"};
  size_t tokens = 0;
  for (const auto& t : texts) tokens += ids_of(t).size();
  ASSERT_EQ(c.post("/v1/embeddings", json{{"input", texts}}).result_int(), 200);
  ASSERT_EQ(c.post("/v1/embeddings", json{{"input", "single"}}).result_int(), 200);
  ASSERT_EQ(c.post("/v1/embeddings", json{{"input", ""}}).result_int(), 400);
  ASSERT_EQ(c.get("/nowhere").result_int(), 404);

  const Response res = c.get("/metrics");
  ASSERT_EQ(res.result_int(), 200);
  EXPECT_EQ(res[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
  const std::string text = res.body();
  const auto after = parse_metrics(text);

  const std::string ok = R"(ember_requests_total{route="/v1/embeddings",status="200"})";
  const std::string bad = R"(ember_requests_total{route="/v1/embeddings",status="400"})";
  EXPECT_EQ(metric(after, ok) - metric(before, ok), 2);
  EXPECT_EQ(metric(after, bad) - metric(before, bad), 1);
  EXPECT_GE(metric(after, R"(ember_requests_total{route="other",status="404"})"), 1);
  EXPECT_EQ(metric(after, "ember_inputs_total") - metric(before, "ember_inputs_total"), 4);
  EXPECT_EQ(metric(after, "ember_input_tokens_total") - metric(before, "ember_input_tokens_total"),
            static_cast<double>(tokens + ids_of("single").size()));
  EXPECT_GE(metric(after, "ember_batches_total") - metric(before, "ember_batches_total"), 2);

  // Histograms: cumulative buckets ending in +Inf == _count, for latency, batches and queue wait.
  const std::vector<std::pair<std::string, std::string>> histograms = {
      {"ember_request_duration_seconds", R"(route="/v1/embeddings",)"},
      {"ember_batch_sequences", ""},
      {"ember_batch_tokens", ""},
      {"ember_batch_duration_seconds", ""},
      {"ember_queue_wait_seconds", ""}};
  for (const auto& [name, labels] : histograms) {
    SCOPED_TRACE(name);
    EXPECT_NE(text.find("# TYPE " + name + " histogram"), std::string::npos);
    std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
    const std::string prefix = name + "_bucket{" + labels + "le=\"";
    for (const auto& [key, v] : after) {
      if (key.rfind(prefix, 0) != 0) continue;
      const std::string le = key.substr(prefix.size(), key.size() - prefix.size() - 2);
      buckets.emplace_back(le == "+Inf" ? INFINITY : std::stod(le), v);
    }
    std::sort(buckets.begin(), buckets.end());
    ASSERT_GT(buckets.size(), 5u);
    for (size_t i = 1; i < buckets.size(); ++i) EXPECT_GE(buckets[i].second, buckets[i - 1].second);
    const std::string braces = labels.empty() ? "" : "{" + labels.substr(0, labels.size() - 1) + "}";
    EXPECT_TRUE(std::isinf(buckets.back().first));
    EXPECT_EQ(buckets.back().second, metric(after, name + "_count" + braces));
    EXPECT_GT(metric(after, name + "_count" + braces), 0);
  }
  for (const auto& gauge : {"ember_queue_sequences", "ember_queue_tokens", "ember_requests_in_flight"}) {
    ASSERT_TRUE(after.count(gauge)) << gauge;
    EXPECT_EQ(after.at(gauge), 0) << gauge;
    EXPECT_NE(text.find(std::string("# TYPE ") + gauge + " gauge"), std::string::npos);
  }
  ASSERT_TRUE(after.count("ember_model_memory_bytes"));
  EXPECT_EQ(after.at("ember_model_memory_bytes"), 0);  // nothing on an accelerator: a CPU server
  EXPECT_EQ(metric(after, R"(ember_model_state{state="ready"})"), 1);
  EXPECT_EQ(metric(after, R"(ember_model_state{state="loading"})"), 0);
  // Every sample belongs to a family announced with HELP and TYPE.
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::string family = line.substr(0, line.find_first_of("{ "));
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (family.ends_with(suffix) && text.find("# TYPE " + family + " ") == std::string::npos) {
        family.resize(family.size() - std::strlen(suffix));
      }
    }
    EXPECT_NE(text.find("# HELP " + family + " "), std::string::npos) << line;
    EXPECT_NE(text.find("# TYPE " + family + " "), std::string::npos) << line;
  }
}

// One client's mixed requests: kinds, input counts, lengths, dimensions and encodings vary with `seed`.
struct ClientPlan {
  std::string route;
  std::vector<size_t> items;  // pool indices, in input order
  bool tokens = false;        // items index the token pool
  int dimensions = 0;
  bool normalize = true;
};

ClientPlan plan_for(int seed, size_t text_pool, size_t token_pool) {
  ClientPlan p;
  const int kind = seed % 5;
  const int count = kind == 0 || kind == 2 ? 1 : 1 + seed / 5 % 4;  // at most 4 inputs
  p.tokens = kind == 2 || kind == 3;
  for (int j = 0; j < count; ++j) p.items.push_back((seed * 7 + j * 13) % (p.tokens ? token_pool : text_pool));
  p.dimensions = std::array{0, 32, 48, 64}[seed / 3 % 4];
  p.route = kind == 4 ? "/embed" : "/v1/embeddings";
  if (kind == 4) p.normalize = seed / 7 % 2 == 0;
  return p;
}

TEST_F(ServeTest, HundredConcurrentClientsEachGetTheirOwnResultsInOrder) {
  std::vector<std::string> texts;
  for (int i = 0; i < 40; ++i) {
    texts.push_back("client text " + std::to_string(i) + ": " + words(i % 3 ? "alpha beta" : "東京", i * 3 % 50));
  }
  std::vector<std::vector<int32_t>> token_seqs;
  for (int i = 0; i < 16; ++i) {
    std::vector<int32_t> ids;
    for (int j = 0; j <= i * 5; ++j) ids.push_back((i * 7919 + j * 104729) % 151643);
    token_seqs.push_back(ids);
  }
  // The pooled states of every text and token sequence, computed in this process (one batch: the
  // CPU engine's values do not depend on what shares a batch).
  std::vector<std::vector<int32_t>> sequences;
  std::vector<size_t> text_tokens;
  for (const auto& t : texts) {
    sequences.push_back(ids_of(t));
    text_tokens.push_back(sequences.back().size());
  }
  sequences.insert(sequences.end(), token_seqs.begin(), token_seqs.end());
  auto all_pooled = engine().pooled_states(sequences);
  const std::vector<std::vector<float>> text_pooled(all_pooled.begin(), all_pooled.begin() + texts.size());
  const std::vector<std::vector<float>> token_pooled(all_pooled.begin() + texts.size(), all_pooled.end());

  ServerProcess& s = server();
  constexpr int kClients = 100, kRequestsEach = 3, kMaxInputs = 4;
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  auto fail = [&](const std::string& what) {
    std::lock_guard lock(failures_mutex);
    failures.push_back(what);
  };
  auto round = [&](int round_index) {
    std::latch start(kClients);
    std::vector<std::thread> clients;
    for (int t = 0; t < kClients; ++t) {
      clients.emplace_back([&, t] {
        try {
          HttpClient c(s.port());  // one keep-alive connection per client
          start.arrive_and_wait();
          for (int r = 0; r < kRequestsEach; ++r) {
            const int seed = (round_index * kClients + t) * kRequestsEach + r;
            ClientPlan p = plan_for(seed, texts.size(), token_seqs.size());
            const bool base64 = seed / 11 % 2 == 1;
            json input = json::array();
            size_t tokens = 0;
            for (size_t item : p.items) {
              if (p.tokens) {
                input.push_back(token_seqs[item]);
                tokens += token_seqs[item].size();
              } else {
                input.push_back(texts[item]);
                tokens += text_tokens[item];
              }
            }
            if (p.items.size() == 1 && seed % 2 == 0) input = input[0];  // "text" / [ids] rather than a list
            json body = {{p.route == "/embed" ? "inputs" : "input", input}};
            if (p.dimensions) body["dimensions"] = p.dimensions;
            if (p.route == "/embed") {
              body["normalize"] = p.normalize;
            } else if (base64) {
              body["encoding_format"] = "base64";
            }
            const Response res = c.post(p.route, body);
            const std::string where = "client " + std::to_string(t) + " request " + body.dump().substr(0, 120);
            if (res.result_int() != 200) return fail(where + ": status " + std::to_string(res.result_int()));
            const json answer = json_of(res);
            const json& data = p.route == "/embed" ? answer : answer["data"];
            if (data.size() != p.items.size()) return fail(where + ": " + std::to_string(data.size()) + " results");
            if (p.route != "/embed" && answer["usage"]["prompt_tokens"] != tokens) return fail(where + ": usage");
            for (size_t i = 0; i < p.items.size(); ++i) {
              if (p.route != "/embed" && data[i]["index"] != i) return fail(where + ": index order");
              const auto got = embedding_of(p.route == "/embed" ? data[i] : data[i]["embedding"]);
              const auto& source = p.tokens ? token_pooled[p.items[i]] : text_pooled[p.items[i]];
              const auto want = ember::finish_embedding(source, p.dimensions, p.normalize);
              if (const auto same = same_floats(got, want, 1e-6f); !same) {
                return fail(where + ": input " + std::to_string(i) + ": " + same.message());
              }
            }
          }
        } catch (const std::exception& e) {
          fail("client " + std::to_string(t) + ": " + e.what());
        }
      });
    }
    for (auto& c : clients) c.join();
  };

  // Some forward pass must have packed sequences of several requests: more than any one request has.
  // A round with no such batch (a scheduler that always won the race) is repeated, a few times at most.
  HttpClient metrics_client = s.client();
  auto batches_over = [&](int sequences) {
    const auto m = parse_metrics(metrics_client.get("/metrics").body());
    return m.at("ember_batch_sequences_count") -
           m.at("ember_batch_sequences_bucket{le=\"" + std::to_string(sequences) + "\"}");
  };
  const double before = batches_over(kMaxInputs);
  int rounds = 0;
  do {
    round(rounds++);
  } while (failures.empty() && batches_over(kMaxInputs) == before && rounds < 5);
  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_GT(batches_over(kMaxInputs), before) << "no forward pass held more than one request's sequences";
  RecordProperty("rounds", rounds);
  const auto m = parse_metrics(metrics_client.get("/metrics").body());
  EXPECT_EQ(m.at("ember_requests_in_flight"), 0);
  EXPECT_EQ(m.at("ember_queue_sequences"), 0);
  expect_alive(s);
}

// SIGTERM while slow requests run: every accepted request still gets its 200 with the right
// vectors, new connections are refused, and the process exits 0.
TEST_F(ServeTest, SigtermLetsRequestsInFlightFinishThenExitsZero) {
  ServerProcess s(model(), {"--max-batch-tokens", "4096"});
  constexpr int kRequests = 4, kTexts = 32;
  std::vector<std::vector<std::string>> texts(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    for (int i = 0; i < kTexts; ++i) texts[r].push_back(words(fmt::format("r{}w{}", r, i), 300));
  }
  std::vector<std::unique_ptr<HttpClient>> clients;
  for (int r = 0; r < kRequests; ++r) {
    clients.push_back(std::make_unique<HttpClient>(s.port()));
    clients.back()->send(http::verb::post, "/v1/embeddings", json{{"input", texts[r]}}.dump());
  }
  HttpClient idle = s.client();
  for (;;) {  // until all are accepted (queued or computing)
    const auto m = parse_metrics(idle.get("/metrics").body());
    if (metric(m, "ember_requests_in_flight") +
            metric(m, R"(ember_requests_total{route="/v1/embeddings",status="200"})") >=
        kRequests) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  s.signal(SIGTERM);
  ASSERT_TRUE(s.wait_for_log("requests in flight")) << s.log();
  bool refused = false;
  for (int i = 0; i < 1000 && !refused; ++i) {
    refused = !HttpClient::can_connect(s.port());
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(refused) << "new connections are still accepted after SIGTERM";
  EXPECT_TRUE(idle.closed_by_server()) << "an idle keep-alive connection stayed open";

  for (int r = 0; r < kRequests; ++r) {
    SCOPED_TRACE("request " + std::to_string(r));
    const Response res = clients[r]->read();
    ASSERT_EQ(res.result_int(), 200) << res.body();
    const json data = json_of(res)["data"];
    ASSERT_EQ(data.size(), static_cast<size_t>(kTexts));
    for (const int i : {0, kTexts / 2, kTexts - 1}) {
      EXPECT_EQ(data[i]["index"], i);
      EXPECT_TRUE(same_floats(embedding_of(data[i]["embedding"]), expected(texts[r][i]), 1e-6f)) << "text " << i;
    }
    EXPECT_TRUE(clients[r]->closed_by_server());  // a draining server keeps no connection open
  }
  EXPECT_EQ(s.wait_exit(), 0) << s.log();
  const std::string log = s.log();
  EXPECT_NE(log.find("received SIGTERM; draining"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped"), std::string::npos) << log;
  EXPECT_EQ(log.find("unanswered"), std::string::npos) << log;
  std::smatch in_flight;
  if (std::regex_search(log, in_flight, std::regex("stopping: no new connections; (\\d+) requests in flight"))) {
    RecordProperty("requests_in_flight_at_sigterm", in_flight[1].str());
  }
}

}  // namespace

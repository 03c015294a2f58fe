// `ember serve` against hostile and careless clients, through a real process on loopback: framing
// the HTTP layer must refuse (RFC 9112), HEAD, capped echoes, the connection cap, huge texts that
// must not stall /health, /tokenize bounds, clients that leave, and the drain timeout.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "serve_support.h"

namespace {

using namespace ember_test;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

class ServeHostileTest : public ServeFixture {};

// A Transfer-Encoding that does not end in chunked leaves the body length unknown: reading on would
// take the body for a second request (request smuggling). 400 and close, and counted.
TEST_F(ServeHostileTest, BadFramingIs400AndClosesTheConnection) {
  ServerProcess& s = server();
  const double before =
      metric(parse_metrics(s.client().get("/metrics").body()), R"(ember_http_refused_total{status="400"})");
  const std::string body = R"({"input":"x"})";
  const std::vector<std::string> heads = {
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 13\r\n\r\n",
      "POST /v1/embeddings HTTP/1.1\r\nContent-Length: 13\r\n\r\n",
      "GET /health HTTP/1.1\r\n\r\n",
      "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
  };
  for (const std::string& head : heads) {
    SCOPED_TRACE(head);
    HttpClient c = s.client();
    c.write_raw(head + body + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    const Response res = c.read();
    expect_api_error(res, 400, "invalid_request_error");
    EXPECT_FALSE(res.keep_alive());
    EXPECT_TRUE(c.closed_by_server()) << "the body was read as a second request";
  }
  const auto m = parse_metrics(s.client().get("/metrics").body());
  EXPECT_EQ(metric(m, R"(ember_http_refused_total{status="400"})"), before + heads.size());
  // HTTP/1.0 needs no Host; chunked alone is fine.
  HttpClient old = s.client();
  old.write_raw("GET /health HTTP/1.0\r\n\r\n");
  EXPECT_EQ(old.read().result_int(), 200);
  HttpClient chunked = s.client();
  chunked.write_raw("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n" + body +
                    "\r\n0\r\n\r\n");
  EXPECT_EQ(chunked.read().result_int(), 200);
  ASSERT_TRUE(s.wait_for_log("refused a request: 400 malformed HTTP request: Transfer-Encoding")) << s.log();
  expect_alive(s);
}

TEST_F(ServeHostileTest, HeadAnswersGetRoutesWithoutABody) {
  ServerProcess& s = server();
  HttpClient c = s.client();
  for (const char* target : {"/health", "/metrics", "/info", "/v1/models"}) {
    SCOPED_TRACE(target);
    const Response get = c.get(target);
    c.send(http::verb::head, target);
    const Response head = c.read(true);
    EXPECT_EQ(head.result_int(), 200);
    EXPECT_TRUE(head.body().empty());
    EXPECT_GT(std::stoul(std::string(head[http::field::content_length])), 0u);
    EXPECT_EQ(head[http::field::content_type], get[http::field::content_type]);
    EXPECT_TRUE(head.keep_alive());
  }
  c.send(http::verb::head, "/v1/embeddings");
  const Response res = c.read(true);
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(res[http::field::allow], "POST");
  EXPECT_EQ(c.get("/health").result_int(), 200);  // the connection is still in step
}

// A 10 KB method or a 60 KB path is not echoed whole into the error body or the access log.
TEST_F(ServeHostileTest, LongMethodsAndPathsAreQuotedCapped) {
  ServerProcess& s = server();
  HttpClient c = s.client();
  const std::string path = "/" + std::string(60000, 'p');
  Response res = c.get(path);
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_LT(res.body().size(), 1000u);
  EXPECT_NE(res.body().find("(60001 bytes)"), std::string::npos) << res.body();
  HttpClient m = s.client();
  m.write_raw(std::string(10000, 'X') + " /health HTTP/1.1\r\nHost: x\r\n\r\n");
  res = m.read();
  EXPECT_GE(res.result_int(), 400);
  EXPECT_LT(res.body().size(), 1000u);
  ASSERT_TRUE(s.wait_for_log("(60001 bytes)")) << s.log().substr(0, 2000);
  std::istringstream lines(s.log());
  for (std::string line; std::getline(lines, line);) EXPECT_LT(line.size(), 2000u) << line.substr(0, 200);
  expect_alive(s);
}

TEST_F(ServeHostileTest, ConnectionsOverTheCapAre503NotStalled) {
  ServerProcess s(model(), {"--max-connections", "4"});
  std::vector<std::unique_ptr<HttpClient>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(std::make_unique<HttpClient>(s.port()));
    EXPECT_EQ(held.back()->get("/health").result_int(), 200);
  }
  {
    HttpClient surplus = s.client();
    const auto t = Clock::now();
    const Response res = surplus.get("/health");
    EXPECT_EQ(res.result_int(), 503);
    EXPECT_EQ(res[http::field::retry_after], "1");
    EXPECT_LT(seconds_since(t), 1.0);
    EXPECT_TRUE(surplus.closed_by_server());
  }
  held.pop_back();  // a slot frees once a connection closes
  bool served = false;
  for (int i = 0; i < 200 && !served; ++i) {
    try {
      HttpClient again = s.client();
      served = again.get("/health").result_int() == 200;
    } catch (const std::exception&) {
    }
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(served);
  EXPECT_GE(metric(parse_metrics(held[0]->get("/metrics").body()), R"(ember_http_refused_total{status="503"})"), 1);
  EXPECT_GE(metric(parse_metrics(held[0]->get("/metrics").body()), "ember_http_connections"), 3);
}

// Two 40 MB texts: tokenized on the work pool, stopped at the length limit; /health and /metrics
// answer meanwhile in milliseconds (they waited ~13 s when texts were tokenized on the HTTP threads).
TEST_F(ServeHostileTest, HugeTextsDoNotStallHealth) {
  ServerProcess s(model(), {"--body-limit-mb", "100", "--http-threads", "2"});
  const std::string huge = json{{"input", std::string(40u << 20, 'a')}}.dump();
  std::atomic<int> answered{0};
  std::vector<std::thread> senders;
  std::vector<int> statuses(2, 0);
  for (int i = 0; i < 2; ++i) {
    senders.emplace_back([&, i] {
      HttpClient c = s.client();
      statuses[i] = c.post("/v1/embeddings", huge).result_int();
      ++answered;
    });
  }
  HttpClient probe = s.client();
  double worst = 0;
  int probes = 0;
  while (answered < 2) {
    const auto t = Clock::now();
    EXPECT_EQ(probe.get(probes % 2 ? "/metrics" : "/health").result_int(), 200);
    worst = std::max(worst, seconds_since(t));
    ++probes;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& t : senders) t.join();
  EXPECT_EQ(statuses[0], 400);
  EXPECT_EQ(statuses[1], 400);
  EXPECT_LT(worst, 0.5) << "worst /health or /metrics latency while two 40 MB texts were processed";
  RecordProperty("health_probes", probes);
  RecordProperty("health_worst_ms", static_cast<int>(worst * 1000));
  std::printf("health/metrics while two 40 MB texts were processed: %d probes, worst %.1f ms\n", probes, worst * 1000);
}

TEST_F(ServeHostileTest, TokenizeIsBoundedAndAdmitted) {
  ServerProcess& s = server();
  HttpClient c = s.client();
  // One text over the model's 32,768 positions, and texts over the answer's token cap in all.
  expect_api_error(c.post("/tokenize", json{{"inputs", std::string(400000, 'a') + " b"}}), 400, "invalid_request_error",
                   "inputs", "context_length_exceeded");
  std::vector<std::string> many(40, std::string(30000, 'z') + " ");
  for (size_t i = 0; i < many.size(); ++i) many[i] += std::to_string(i) + " word word word word word word word";
  std::string words;
  for (int i = 0; i < 8000; ++i) words += " w" + std::to_string(i % 997);
  expect_api_error(c.post("/tokenize", json{{"inputs", std::vector<std::string>(40, words)}}), 400,
                   "invalid_request_error", "inputs", "context_length_exceeded");
  const Response ok = c.post("/tokenize", json{{"inputs", std::vector<std::string>(4, words)}});
  ASSERT_EQ(ok.result_int(), 200);
  EXPECT_EQ(json_of(ok).size(), 4u);
  expect_alive(s);
}

TEST_F(ServeHostileTest, TokenizeCountsAgainstConcurrentRequests) {
  ServerProcess s(model(), {"--max-concurrent-requests", "1", "--max-batch-tokens", "32768"});
  std::string text;
  for (int i = 0; i < 4000; ++i) text += " long" + std::to_string(i % 313);
  HttpClient slow = s.client();
  slow.send(http::verb::post, "/v1/embeddings", json{{"input", std::vector<std::string>(4, text)}}.dump());
  HttpClient c = s.client();
  wait_for_metric(c, "ember_requests_in_flight", 1);  // until the embedding request holds the slot
  int refused = 0;
  for (int i = 0; i < 200 && refused == 0; ++i) {
    const Response res = c.post("/tokenize", json{{"inputs", "hello"}});
    if (res.result_int() == 429) ++refused;
  }
  EXPECT_EQ(refused, 1) << "/tokenize was never refused while an embedding request held the only slot";
  EXPECT_EQ(slow.read().result_int(), 200);
  EXPECT_EQ(c.post("/tokenize", json{{"inputs", "hello"}}).result_int(), 200);
}

// Four 30k-token requests whose clients leave: their queued sequences are never computed, the log
// says 499, and the next request is answered at once instead of after all of them.
TEST_F(ServeHostileTest, WorkOfClientsThatLeftIsDropped) {
  ServerProcess s(model(), {"--max-batch-tokens", "32768"});
  std::string text;
  for (int i = 0; i < 4000; ++i) text += " w" + std::to_string(i % 401);  // ~15k tokens, ~2 s each on 2 cores
  const std::string body = json{{"input", std::vector<std::string>(2, text)}, {"encoding_format", "base64"}}.dump();
  {
    std::vector<std::unique_ptr<HttpClient>> gone;
    for (int i = 0; i < 4; ++i) {
      gone.push_back(std::make_unique<HttpClient>(s.port()));
      gone.back()->send(http::verb::post, "/v1/embeddings", body);
    }
    HttpClient probe = s.client();
    // Until one request computes and the other three wait in the queue (not still in the work pool,
    // where a request whose client left is dropped before it is tokenized).
    wait_for_metric(probe, "ember_queue_sequences", 6);
  }                                                         // all four close here
  HttpClient c = s.client();
  const auto t = Clock::now();
  ASSERT_EQ(c.post("/v1/embeddings", json{{"input", "quick"}}).result_int(), 200);
  const double quick = seconds_since(t);
  wait_for_metric(c, R"(ember_requests_total{route="/v1/embeddings",status="499"})", 4);
  const auto m = parse_metrics(c.get("/metrics").body());
  EXPECT_EQ(metric(m, R"(ember_requests_total{route="/v1/embeddings",status="499"})"), 4);
  EXPECT_GE(metric(m, "ember_abandoned_sequences_total"), 4) << "most abandoned sequences should never be computed";
  EXPECT_EQ(metric(m, "ember_requests_in_flight"), 0);
  EXPECT_NE(s.log().find("POST /v1/embeddings 499"), std::string::npos) << s.log();
  std::printf("a request after four abandoned 2x15k-token requests: %.2f s\n", quick);
  RecordProperty("after_abandoned_ms", static_cast<int>(quick * 1000));
}

// --drain-timeout 1 with a long request queued: SIGTERM answers it 503 (not a bare close) and the
// process exits within about the timeout.
TEST_F(ServeHostileTest, DrainTimeoutAnswers503AndExitsInTime) {
  ServerProcess s(model(), {"--drain-timeout", "1", "--max-batch-tokens", "32768"});
  std::string text;
  for (int i = 0; i < 4000; ++i) text += " d" + std::to_string(i % 499);
  HttpClient c = s.client();
  c.send(http::verb::post, "/v1/embeddings", json{{"input", std::vector<std::string>(8, text)}}.dump());
  HttpClient probe = s.client();
  wait_for_metric(probe, "ember_requests_in_flight", 1);
  const auto t = Clock::now();
  s.signal(SIGTERM);
  const Response res = c.read();
  expect_api_error(res, 503, "service_unavailable", "", "model_not_ready");
  EXPECT_EQ(res[http::field::retry_after], "1");
  EXPECT_EQ(s.wait_exit(std::chrono::seconds(10)), 0) << s.log();
  const double took = seconds_since(t);
  EXPECT_LT(took, 2.5) << s.log();
  EXPECT_NE(s.log().find("answering them 503"), std::string::npos) << s.log();
  std::printf("SIGTERM with --drain-timeout 1 and a long request: answered 503, exited after %.2f s\n", took);
}

TEST_F(ServeHostileTest, ResidentMemoryIsReportedAndReturnedAfterALargeRequest) {
  ServerProcess s(model(), {"--body-limit-mb", "64", "--max-batch-tokens", "32768"});
  HttpClient c = s.client();
  const double start = metric(parse_metrics(c.get("/metrics").body()), "ember_process_resident_memory_bytes");
  EXPECT_GT(start, 1e6);
  std::string text;
  for (int i = 0; i < 600; ++i) text += " m" + std::to_string(i % 211);
  for (int k = 0; k < 3; ++k) {
    ASSERT_EQ(c.post("/v1/embeddings", json{{"input", std::vector<std::string>(64, text)}}).result_int(), 200);
  }
  const double end = metric(parse_metrics(c.get("/metrics").body()), "ember_process_resident_memory_bytes");
  std::printf("RSS before %.0f MB, after three 64x2k-token requests %.0f MB\n", start / 1e6, end / 1e6);
  EXPECT_LT(end, start + 400e6);
}

}  // namespace

namespace {

// The CPU backend reads weights from the mapped safetensors file: truncating it under a running
// server must end the process with exit 1 and a line naming the file, not a silent SIGBUS death.
TEST_F(ServeHostileTest, ATruncatedModelFileExitsOneNamingTheFile) {
  const std::filesystem::path copy = root() / "truncated";
  std::filesystem::copy(model(), copy, std::filesystem::copy_options::recursive);
  ServerProcess s(copy.string());
  HttpClient c = s.client();
  ASSERT_EQ(c.post("/v1/embeddings", json{{"input", "before"}}).result_int(), 200);
  std::filesystem::resize_file(copy / "model.safetensors", 1000);
  try {
    HttpClient after = s.client();
    after.post("/v1/embeddings", json{{"input", "after the file changed"}});
  } catch (const std::exception&) {  // the connection dies with the process
  }
  EXPECT_EQ(s.wait_exit(std::chrono::seconds(20)), 1) << s.log();
  EXPECT_NE(s.log().find("the model file " + (copy / "model.safetensors").string() + " was truncated"),
            std::string::npos)
      << s.log();
}

}  // namespace

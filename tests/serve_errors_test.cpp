// `ember serve`'s error table through a real process and HTTP client: every rejected request gets
// its status and an OpenAI-shaped error, and the server stays alive and answering afterwards.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve_support.h"

namespace {

using namespace ember_test;
using nlohmann::json;

// Each check is a function of a running server, so that one test can also run them all at once
// against a single server (TheServerSurvivesTheWholeTableAtOnce).
class ServeErrorsTest : public ServeFixture {
 protected:
  static void malformed_bodies(ServerProcess& s);
  static void a_million_inputs(ServerProcess& s);
  static void unknown_model_path_and_method(ServerProcess& s);
  static void malformed_http(ServerProcess& s);
  static void expect_continue(ServerProcess& s);

  // expected(text), safe from several threads (the engine is used by one at a time).
  static std::vector<float> want(const std::string& text) {
    static std::mutex mutex;
    std::lock_guard lock(mutex);
    return expected(text);
  }
};

struct BadBody {
  std::string body;
  std::string param;  // "" : null
  std::string code = "";
};

void expect_bad_bodies(HttpClient& c, const std::string& route, const std::vector<BadBody>& cases) {
  for (const auto& b : cases) {
    SCOPED_TRACE(route + " " + b.body.substr(0, 100));
    expect_api_error(c.post(route, b.body), 400, "invalid_request_error", b.param, b.code);
  }
}

void ServeErrorsTest::malformed_bodies(ServerProcess& s) {
  HttpClient c = s.client();
  expect_bad_bodies(c, "/v1/embeddings",
                    {
                        // Not JSON, or not an object.
                        {"", ""},
                        {"   ", ""},
                        {R"({"input": )", ""},
                        {"not json", ""},
                        {R"({"input": "x"} trailing)", ""},
                        {R"({"input": "x",})", ""},
                        {R"([1, 2])", ""},
                        {R"("input")", ""},
                        {std::string("{\"input\": \"x\"}\0junk", 19), ""},
                        // Wrong types.
                        {R"({})", "input"},
                        {R"({"input": null})", "input"},
                        {R"({"input": 5})", "input"},
                        {R"({"input": true})", "input"},
                        {R"({"input": {"text": "x"}})", "input"},
                        {R"({"input": [true]})", "input"},
                        {R"({"input": [{"text": "x"}]})", "input"},
                        {R"({"input": [[1, "a"]]})", "input"},
                        {R"({"input": "x", "model": 5})", "model"},
                        {R"({"input": "x", "encoding_format": "hex"})", "encoding_format"},
                        {R"({"input": "x", "encoding_format": 1})", "encoding_format"},
                        {R"({"input": "x", "dimensions": "32"})", "dimensions"},
                        {R"({"input": "x", "dimensions": 32.5})", "dimensions"},
                        {R"({"input": "x", "dimensions": -32})", "dimensions"},
                        {R"({"input": "x", "dimensions": 0})", "dimensions"},
                        {R"({"input": "x", "user": 5})", "user"},
                        // Empty inputs.
                        {R"({"input": ""})", "input"},
                        {R"({"input": []})", "input"},
                        {R"({"input": [""]})", "input"},
                        {R"({"input": ["a", ""]})", "input"},
                        {R"({"input": [[]]})", "input"},
                        {R"({"input": [[1], []]})", "input"},
                        // Texts and token ids mixed.
                        {R"({"input": ["a", [1, 2]]})", "input"},
                        {R"({"input": [[1, 2], "a"]})", "input"},
                        {R"({"input": [1, "a"]})", "input"},
                        {R"({"input": ["a", 1]})", "input"},
                        // dimensions outside [32, hidden size 64].
                        {R"({"input": "x", "dimensions": 16})", "dimensions"},
                        {R"({"input": "x", "dimensions": 31})", "dimensions"},
                        {R"({"input": "x", "dimensions": 65})", "dimensions"},
                        {R"({"input": [[1, 2]], "dimensions": 4096})", "dimensions"},
                        // Huge or impossible numbers.
                        {R"({"input": [1e400]})", ""},
                        {R"({"input": [99999999999999999999999999999]})", "input"},
                        {R"({"input": [2147483648]})", "input"},
                        {R"({"input": [-1]})", "input"},
                        {R"({"input": [1.5]})", "input"},
                        {R"({"input": [151669]})", "input"},
                        {R"({"input": [[5], [151669]]})", "input"},
                        {R"({"input": "x", "dimensions": 1e400})", ""},
                        {R"({"input": "x", "dimensions": 99999999999999999999})", "dimensions"},
                        {R"({"input": "x", "dimensions": )" + std::string(100000, '9') + "}", ""},
                        {R"({"input": "x", "dimensions": -)" + std::string(100000, '9') + "}", ""},
                        // Invalid UTF-8, raw or as a lone surrogate escape.
                        {"{\"input\": \"\xff\xfe\"}", ""},
                        {"{\"input\": [\"ok\", \"\xc3\x28\"]}", ""},
                        {"{\"input\": \"\xed\xa0\x80\"}", ""},
                        {R"({"input": "\ud800"})", ""},
                        {R"({"input": "\udc00 tail"})", ""},
                    });
  // Deep nesting is refused as it is parsed, not after building a million levels.
  expect_bad_bodies(c, "/v1/embeddings",
                    {{std::string(1000000, '['), ""},
                     {R"({"input": )" + std::string(1000000, '['), ""},
                     {R"({"input": )" + std::string(100, '[') + std::string(100, ']') + "}", ""},
                     {std::string(500000, '{'), ""}});
  expect_bad_bodies(c, "/embed",
                    {{R"({"inputs": 5})", "inputs"},
                     {R"({"input": "x"})", "inputs"},
                     {R"({"inputs": "x", "normalize": "yes"})", "normalize"},
                     {R"({"inputs": "x", "truncate": 1})", "truncate"},
                     {R"({"inputs": "x", "dimensions": 8})", "dimensions"},
                     {R"({"inputs": "x", "prompt_name": "query"})", "prompt_name"},
                     {R"({"inputs": "x", "truncation_direction": "Left"})", "truncation_direction"},
                     {R"({"inputs": ["a", [1]]})", "inputs"},
                     {R"({"inputs": [151669]})", "inputs"}});
  expect_bad_bodies(c, "/tokenize",
                    {{R"({"inputs": [1, 2]})", "inputs"},
                     {R"({"inputs": "x", "add_special_tokens": "no"})", "add_special_tokens"},
                     {"{\"inputs\": \"\xff\"}", ""}});
  // The connection survived every rejection, and the error is the client's, not the server's.
  EXPECT_EQ(c.get("/health").result_int(), 200);
  const auto m = parse_metrics(c.get("/metrics").body());
  EXPECT_EQ(metric(m, R"(ember_requests_total{route="/v1/embeddings",status="500"})"), 0);
  expect_alive(s);
}

TEST_F(ServeErrorsTest, MalformedBodiesAre400WithTheFieldNamed) { malformed_bodies(server()); }

void ServeErrorsTest::a_million_inputs(ServerProcess& s) {
  HttpClient c = s.client();
  std::string texts = R"({"input": [)";
  std::string ids = R"({"input": [)";
  std::string one_sequence = R"({"input": [)";
  for (int i = 0; i < 1000000; ++i) {
    texts += i ? R"(,"a")" : R"("a")";
    ids += i ? ",[1]" : "[1]";
    one_sequence += i ? ",1" : "1";
  }
  texts += "]}";
  ids += "]}";
  one_sequence += "]}";
  expect_api_error(c.post("/v1/embeddings", texts), 400, "invalid_request_error", "input");
  expect_api_error(c.post("/v1/embeddings", ids), 400, "invalid_request_error", "input");
  // One sequence of 10^6 token ids: longer than the model's 32768 positions.
  expect_api_error(c.post("/v1/embeddings", one_sequence), 400, "invalid_request_error", "input",
                   "context_length_exceeded");
  // Exactly the limit (--max-client-batch-size, 2048) is accepted.
  json limit = {{"input", std::vector<std::string>(2048, "a")}};
  const Response res = c.post("/v1/embeddings", limit);
  ASSERT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(json_of(res)["data"].size(), 2048u);
  limit["input"].push_back("a");
  expect_api_error(c.post("/v1/embeddings", limit), 400, "invalid_request_error", "input");
  expect_alive(s);
}

TEST_F(ServeErrorsTest, AMillionInputsAreRejectedAndTheServerGoesOn) { a_million_inputs(server()); }

TEST_F(ServeErrorsTest, OverLongInputsAre400UnlessTruncated) {
  const std::string text = "a text that is clearly longer than sixteen tokens once it has been tokenized, surely";
  std::vector<int32_t> cut = ids_of(text);
  ASSERT_GT(cut.size(), 16u);
  cut.resize(16);
  cut.back() = 151643;  // the text's <|endoftext|> is kept: the model pools the last token
  const std::vector<int32_t> seventeen(17, 100);
  {
    ServerProcess s(model(), {"--max-input-tokens", "16"});
    HttpClient c = s.client();
    expect_api_error(c.post("/v1/embeddings", json{{"input", text}}), 400, "invalid_request_error", "input",
                     "context_length_exceeded");
    expect_api_error(c.post("/v1/embeddings", json{{"input", {"short", text}}}), 400, "invalid_request_error", "input",
                     "context_length_exceeded");
    expect_api_error(c.post("/v1/embeddings", json{{"input", seventeen}}), 400, "invalid_request_error", "input",
                     "context_length_exceeded");
    EXPECT_EQ(c.post("/v1/embeddings", json{{"input", std::vector<int32_t>(16, 100)}}).result_int(), 200);
    EXPECT_EQ(json_of(c.get("/info"))["max_input_length"], 16);
    expect_alive(s);
  }
  ServerProcess s(model(), {"--max-input-tokens", "16", "--auto-truncate"});
  HttpClient c = s.client();
  Response res = c.post("/v1/embeddings", json{{"input", {text, "short"}}});
  ASSERT_EQ(res.result_int(), 200) << res.body();
  json body = json_of(res);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 16 + ids_of("short").size());
  EXPECT_TRUE(same_floats(embedding_of(body["data"][0]["embedding"]), expected(cut)));
  EXPECT_TRUE(same_floats(embedding_of(body["data"][1]["embedding"]), expected("short")));
  // Token ids are cut as they are: the first 16.
  res = c.post("/v1/embeddings", json{{"input", seventeen}});
  ASSERT_EQ(res.result_int(), 200) << res.body();
  EXPECT_TRUE(same_floats(embedding_of(json_of(res)["data"][0]["embedding"]), expected(std::vector<int32_t>(16, 100))));
  // TEI's explicit "truncate": false overrides --auto-truncate.
  expect_api_error(c.post("/embed", json{{"inputs", text}, {"truncate", false}}), 400, "invalid_request_error",
                   "inputs", "context_length_exceeded");
  EXPECT_EQ(c.post("/embed", json{{"inputs", text}}).result_int(), 200);
  expect_alive(s);
}

void ServeErrorsTest::unknown_model_path_and_method(ServerProcess& s) {
  HttpClient c = s.client();
  expect_api_error(c.post("/v1/embeddings", json{{"input", "x"}, {"model", "text-embedding-3-small"}}), 404,
                   "invalid_request_error", "model", "model_not_found");
  EXPECT_EQ(c.post("/v1/embeddings", json{{"input", "x"}, {"model", kServedName}}).result_int(), 200);

  for (const auto& target : {"/", "/v1", "/v1/embedding", "/v2/embeddings", "/health/", "/HEALTH", "/v1/models/x"}) {
    SCOPED_TRACE(target);
    expect_api_error(c.get(target), 404, "not_found_error");
    expect_api_error(c.post(target, std::string("{}")), 404, "not_found_error");
  }
  struct Wrong {
    http::verb method;
    std::string target, allow;
  };
  for (const auto& w : std::vector<Wrong>{{http::verb::get, "/v1/embeddings", "POST"},
                                          {http::verb::put, "/embed", "POST"},
                                          {http::verb::get, "/tokenize", "POST"},
                                          {http::verb::post, "/health", "GET, HEAD"},
                                          {http::verb::delete_, "/v1/models", "GET, HEAD"},
                                          {http::verb::post, "/metrics", "GET, HEAD"}}) {
    SCOPED_TRACE(std::string(http::to_string(w.method)) + " " + w.target);
    const Response res = c.request(w.method, w.target, w.method == http::verb::get ? "" : "{}");
    expect_api_error(res, 405, "invalid_request_error", "", "method_not_allowed");
    EXPECT_EQ(res[http::field::allow], w.allow);  // RFC 9110: a 405 names the methods the target allows
  }
  // A query string does not change the route.
  EXPECT_EQ(c.get("/health?verbose=1").result_int(), 200);
  expect_alive(s);
}

TEST_F(ServeErrorsTest, UnknownModelUnknownPathAndWrongMethod) { unknown_model_path_and_method(server()); }

TEST_F(ServeErrorsTest, ApiKeyGuardsEveryRouteButHealthAndMetrics) {
  ServerProcess s(model(), {"--api-key", "sekrit-key"});
  HttpClient c = s.client();
  const json req = {{"input", "x"}};
  for (const Headers& headers : std::vector<Headers>{{},
                                                     {{"Authorization", "Bearer wrong-key!"}},
                                                     {{"Authorization", "Bearer sekrit-key2"}},
                                                     {{"Authorization", "Bearer sekrit-ke"}},
                                                     {{"Authorization", "Bearer "}},
                                                     {{"Authorization", "sekrit-key"}},
                                                     {{"Authorization", "Basic c2Vrcml0LWtleQ=="}}}) {
    SCOPED_TRACE(headers.empty() ? "no Authorization" : headers[0].second);
    for (const auto& [method, target] :
         std::vector<std::pair<http::verb, std::string>>{{http::verb::post, "/v1/embeddings"},
                                                         {http::verb::post, "/embed"},
                                                         {http::verb::post, "/tokenize"},
                                                         {http::verb::get, "/v1/models"},
                                                         {http::verb::get, "/info"}}) {
      // Refused from the head: a body is never read, so that connection closes.
      HttpClient once = s.client();
      const Response res = once.request(method, target, method == http::verb::post ? req.dump() : "", headers);
      expect_api_error(res, 401, "authentication_error", "", "invalid_api_key");
      EXPECT_EQ(res[http::field::www_authenticate], "Bearer");
    }
  }
  // No `100 Continue` invites the body of a request without the key: the 401 comes first.
  HttpClient eager = s.client();
  eager.write_raw(
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
      "Expect: 100-continue\r\n\r\n");
  const Response refused = eager.read();
  expect_api_error(refused, 401, "authentication_error", "", "invalid_api_key");
  EXPECT_FALSE(refused.keep_alive());
  EXPECT_TRUE(eager.closed_by_server());
  ASSERT_TRUE(s.wait_for_log("POST /v1/embeddings 401")) << s.log();
  EXPECT_NE(s.log().find("authentication on"), std::string::npos) << s.log();
  const Headers good = {{"Authorization", "Bearer sekrit-key"}};
  EXPECT_EQ(c.post("/v1/embeddings", req, good).result_int(), 200);
  EXPECT_EQ(c.post("/v1/embeddings", req, {{"Authorization", "bearer sekrit-key"}}).result_int(), 200);
  EXPECT_EQ(c.get("/v1/models", good).result_int(), 200);
  // Probes and scrapers need no key.
  EXPECT_EQ(c.get("/health").result_int(), 200);
  EXPECT_EQ(c.get("/metrics").result_int(), 200);
  // An unknown path is 404 with or without the key.
  EXPECT_EQ(c.get("/secret").result_int(), 404);
  expect_alive(s);
}

TEST_F(ServeErrorsTest, BodiesOverTheLimitAre413) {
  {  // The default limit is TEI's 2 MB (2 MiB), not 64.
    ServerProcess d(model());
    HttpClient c = d.client();
    EXPECT_EQ(c.post("/v1/embeddings", json{{"input", std::string(1900000, 'a')}}).result_int(), 400);
    HttpClient big = d.client();
    expect_api_error(big.post("/v1/embeddings", json{{"input", std::string(2200000, 'a')}}), 413,
                     "invalid_request_error");
    EXPECT_EQ(metric(parse_metrics(d.client().get("/metrics").body()), R"(ember_http_refused_total{status="413"})"), 1);
    ASSERT_TRUE(d.wait_for_log("refused a request: 413")) << d.log();
  }
  ServerProcess s(model(), {"--body-limit-mb", "1"});
  constexpr size_t kLimit = 1 << 20;
  // Padding with JSON whitespace makes a body of any size with one tiny input.
  auto body_of_size = [](size_t size) {
    std::string body = R"({"input": "hello")";
    body += std::string(size - body.size() - 1, ' ') + "}";
    return body;
  };
  HttpClient c = s.client();
  const Response at_limit = c.post("/v1/embeddings", body_of_size(kLimit));
  EXPECT_EQ(at_limit.result_int(), 200) << at_limit.body();
  for (const size_t size : {kLimit + 1, 3 * kLimit}) {
    HttpClient big = s.client();
    const Response res = big.post("/v1/embeddings", body_of_size(size));
    expect_api_error(res, 413, "invalid_request_error");
    EXPECT_FALSE(res.keep_alive());
    EXPECT_TRUE(big.closed_by_server());
  }
  // Chunked: no Content-Length to refuse up front; the limit applies as the chunks arrive.
  HttpClient chunked = s.client();
  const std::string chunk(64 * 1024, ' ');
  std::string raw = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 20; ++i) raw += "10000\r\n" + chunk + "\r\n";
  raw += "0\r\n\r\n";
  chunked.write_raw(raw);
  expect_api_error(chunked.read(), 413, "invalid_request_error");
  // Expect: 100-continue with a body over the limit: 413 at once, no 100.
  HttpClient expect = s.client();
  expect.write_raw("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                   std::to_string(2 * kLimit) + "\r\nExpect: 100-continue\r\n\r\n");
  expect_api_error(expect.read(), 413, "invalid_request_error");
  expect_alive(s);
}

// --max-concurrent-requests 1: while one slow request runs, another gets 429 with Retry-After.
TEST_F(ServeErrorsTest, AFullServerAnswers429WithRetryAfter) {
  ServerProcess s(model(), {"--max-concurrent-requests", "1"});
  HttpClient slow = s.client(), other = s.client(), watcher = s.client();
  const json small = {{"input", "quick"}};
  bool saw_429 = false;
  // If the slow request finishes before the other one arrives, try again with twice the work.
  for (int texts = 8; texts <= 512 && !saw_429; texts *= 2) {
    std::vector<std::string> inputs;
    for (int i = 0; i < texts; ++i) inputs.push_back("slow " + std::to_string(i) + std::string(3000, 'z'));
    const std::string ok = R"(ember_requests_total{route="/v1/embeddings",status="200"})";
    const double answered = metric(parse_metrics(watcher.get("/metrics").body()), ok);
    slow.send(http::verb::post, "/v1/embeddings", json{{"input", inputs}}.dump());
    for (;;) {  // until the slow request is accepted (or already answered)
      const auto m = parse_metrics(watcher.get("/metrics").body());
      if (metric(m, "ember_requests_in_flight") >= 1 || metric(m, ok) > answered) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const Response res = other.post("/v1/embeddings", small);
    if (res.result_int() == 429) {
      saw_429 = true;
      expect_api_error(res, 429, "rate_limit_error", "", "overloaded");
      EXPECT_EQ(res[http::field::retry_after], "1");
      EXPECT_TRUE(res.keep_alive());
    } else {
      EXPECT_EQ(res.result_int(), 200) << res.body();
    }
    const Response done = slow.read();
    ASSERT_EQ(done.result_int(), 200) << done.body();
    EXPECT_EQ(json_of(done)["data"].size(), static_cast<size_t>(texts));
  }
  EXPECT_TRUE(saw_429) << "the second request was never refused while the first ran";
  // A request is released before its answer leaves: one client's back-to-back requests are never
  // refused, also right after a batch that kept the CPU busy.
  const json busy = {{"input", std::vector<std::string>(16, std::string(2000, 'z'))}};
  for (int i = 0; i < 20; ++i) {
    for (const json* req : {&busy, &small}) {
      const Response res = other.post("/v1/embeddings", *req);
      ASSERT_EQ(res.result_int(), 200) << "round " << i << ": " << res.body();
    }
  }
  EXPECT_EQ(metric(parse_metrics(watcher.get("/metrics").body()), "ember_requests_in_flight"), 0);
  expect_alive(s);
}

void ServeErrorsTest::malformed_http(ServerProcess& s) {
  HttpClient keeper = s.client();  // a healthy connection that must outlive the bad ones
  EXPECT_EQ(keeper.get("/health").result_int(), 200);
  struct Raw {
    std::string bytes;
    int status;
  };
  const std::vector<Raw> cases = {
      {"GARBAGE\r\n\r\n", 400},
      {std::string("\x00\x01\x02\xff\r\n\r\n", 8), 400},
      {"GET /health HTTP/9.9\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nHost: x\r\n\x01: y\r\n\r\n", 400},
      {"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
      {"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400},
      {"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
      {"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
      {"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(100000, 'a') + "\r\n\r\n", 431},
  };
  for (const auto& r : cases) {
    SCOPED_TRACE(r.bytes.substr(0, 60));
    HttpClient c = s.client();
    c.write_raw(r.bytes);
    const Response res = c.read();
    expect_api_error(res, r.status, "invalid_request_error");
    EXPECT_FALSE(res.keep_alive());
    EXPECT_TRUE(c.closed_by_server());
  }
  // A request cut off mid-body, and a connection that sends nothing: closed without a response.
  {
    HttpClient c = s.client();
    c.write_raw("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"input\":");
  }
  { HttpClient c = s.client(); }
  // Keep-alive and pipelining: two requests in one write, two answers in order on one connection.
  HttpClient pipe = s.client();
  pipe.write_raw(
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"input\":\"one\"}"
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"input\":\"two\"}");
  for (const char* text : {"one", "two"}) {
    const Response res = pipe.read();
    ASSERT_EQ(res.result_int(), 200) << res.body();
    EXPECT_TRUE(same_floats(embedding_of(json_of(res)["data"][0]["embedding"]), want(text)));
  }
  // HTTP/1.0 without keep-alive: answered, then closed.
  HttpClient old = s.client();
  old.write_raw("GET /health HTTP/1.0\r\n\r\n");
  const Response res = old.read();
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_TRUE(old.closed_by_server());
  EXPECT_EQ(keeper.get("/health").result_int(), 200);
  expect_alive(s);
}

TEST_F(ServeErrorsTest, MalformedHttpIs400AndClosesOnlyThatConnection) { malformed_http(server()); }

void ServeErrorsTest::expect_continue(ServerProcess& s) {
  HttpClient c = s.client();
  const std::string body = R"({"input": ["continue", "me"]})";
  const std::string head =
      "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\nExpect: 100-continue\r\n\r\n";
  c.write_raw(head);
  EXPECT_EQ(c.read().result_int(), 100);
  c.write_raw(body);
  Response res = c.read();
  ASSERT_EQ(res.result_int(), 200) << res.body();
  EXPECT_TRUE(same_floats(embedding_of(json_of(res)["data"][1]["embedding"]), want("me")));
  // A client that sends the body without waiting may get the 100 anyway; the answer follows.
  c.write_raw(head + body);
  res = c.read();
  if (res.result_int() == 100) res = c.read();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_TRUE(res.keep_alive());
  EXPECT_EQ(c.get("/health").result_int(), 200);
  expect_alive(s);
}

TEST_F(ServeErrorsTest, ExpectContinueGetsA100ThenTheAnswer) { expect_continue(server()); }

// Request text echoed in an error message stays on its access-log line: a client cannot forge entries.
TEST_F(ServeErrorsTest, EchoedRequestTextCannotForgeLogLines) {
  ServerProcess& s = server();
  HttpClient c = s.client();
  const std::string forged = "2000-01-01T00:00:00.000Z info    GET /forged 200";
  expect_api_error(c.post("/v1/embeddings", json{{"input", "x"}, {"encoding_format", "x\n" + forged}}), 400,
                   "invalid_request_error", "encoding_format");
  ASSERT_TRUE(s.wait_for_log("POST /v1/embeddings 400")) << s.log();
  std::istringstream lines(s.log());
  for (std::string line; std::getline(lines, line);) EXPECT_FALSE(line.starts_with("2000-01-01")) << s.log();
  expect_alive(s);
}

// The whole table at once against one server, from several threads, beside a client with valid
// requests: that client always gets the right vectors, a client that leaves with its request queued
// costs nothing, and afterwards the server answers /health and has answered nothing with a 5xx.
TEST_F(ServeErrorsTest, TheServerSurvivesTheWholeTableAtOnce) {
  ServerProcess& s = server();
  const std::vector<std::string> texts = {"valid one", "valid two", "東京 🚀"};
  std::vector<std::vector<float>> wants;
  for (const auto& t : texts) wants.push_back(want(t));
  std::atomic<bool> abuse_done{false};
  std::thread valid([&] {
    try {
      HttpClient c = s.client();
      for (int n = 0; !abuse_done || n < 20; ++n) {
        const Response res = c.post("/v1/embeddings", json{{"input", texts}, {"encoding_format", "base64"}});
        ASSERT_EQ(res.result_int(), 200) << res.body();
        const json data = json_of(res)["data"];
        ASSERT_EQ(data.size(), texts.size());
        for (size_t i = 0; i < texts.size(); ++i)
          ASSERT_TRUE(same_floats(embedding_of(data[i]["embedding"]), wants[i]));
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "valid client: " << e.what();
    }
  });
  std::vector<std::thread> abusers;
  for (auto check :
       {&malformed_bodies, &a_million_inputs, &unknown_model_path_and_method, &malformed_http, &expect_continue}) {
    abusers.emplace_back([&s, check] {
      try {
        check(s);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    });
  }
  for (auto& t : abusers) t.join();
  abuse_done = true;
  valid.join();

  HttpClient c = s.client();
  const std::string ok = R"(ember_requests_total{route="/v1/embeddings",status="200"})";
  const std::string gone_key = R"(ember_requests_total{route="/v1/embeddings",status="499"})";
  const double answered = metric(parse_metrics(c.get("/metrics").body()), ok);
  const double left_before = metric(parse_metrics(c.get("/metrics").body()), gone_key);
  {
    HttpClient gone = s.client();
    gone.send(http::verb::post, "/v1/embeddings",
              json{{"input", std::vector<std::string>(64, std::string(2000, 'q'))}}.dump());
  }
  for (int i = 0; i < 6000; ++i) {  // until the abandoned request is accounted for (499, as nginx logs it)
    if (metric(parse_metrics(c.get("/metrics").body()), gone_key) > left_before) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const auto m = parse_metrics(c.get("/metrics").body());
  EXPECT_EQ(metric(m, ok), answered);
  EXPECT_EQ(metric(m, gone_key), left_before + 1);
  EXPECT_EQ(metric(m, "ember_queue_sequences"), 0);
  EXPECT_EQ(metric(m, "ember_requests_in_flight"), 0);
  for (const auto& [key, value] : m) {
    // /health answered 503 while the model loaded, before the server was used.
    if (value > 0 && key.find("status=\"5") != std::string::npos && key.find("/health") == std::string::npos) {
      ADD_FAILURE() << key << " " << value;
    }
  }
  expect_alive(s);
}

}  // namespace

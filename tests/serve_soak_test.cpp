// Soak: `ember serve` under 60 s (EMBER_SOAK_SECONDS) of mixed valid and hostile traffic from several
// threads, with the server's RSS and open descriptors sampled every second. Label `soak`: not in the
// default run (scripts/test.sh leaves it out); run it with `ctest --test-dir build -L soak`.
#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve_support.h"

namespace {

using namespace ember_test;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

int64_t rss_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

int open_fds(pid_t pid) {
  int n = 0;
  if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n - 2;  // . and ..
}

class ServeSoakTest : public ServeFixture {};

TEST_F(ServeSoakTest, MixedValidAndHostileTrafficKeepsMemoryAndDescriptorsBounded) {
  const char* env = std::getenv("EMBER_SOAK_SECONDS");
  const int seconds = env ? std::max(5, std::atoi(env)) : 60;
  ServerProcess s(model(), {"--body-limit-mb", "8", "--max-connections", "256", "--max-concurrent-requests", "64"});
  const std::vector<float> want = expected("the soak's valid text");
  const int64_t rss_start = rss_bytes(s.pid());
  const int fds_start = open_fds(s.pid());
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);

  std::mutex mutex;
  std::map<std::string, int64_t> counts;  // "kind status" -> requests
  std::atomic<int64_t> wrong_vectors{0}, client_errors{0};
  auto count = [&](const std::string& kind, int status) {
    std::lock_guard lock(mutex);
    ++counts[kind + " " + std::to_string(status)];
  };
  const std::string big_text = std::string(3u << 20, 'x');  // over the 32,768-token limit, under 8 MiB
  const std::vector<std::function<void(int)>> kinds = {
      [&](int) {  // valid, checked
        HttpClient c = s.client();
        const Response res = c.post("/v1/embeddings", json{{"input", {"the soak's valid text"}}});
        count("valid", res.result_int());
        if (res.result_int() == 200 && !same_floats(embedding_of(json_of(res)["data"][0]["embedding"]), want))
          ++wrong_vectors;
      },
      [&](int) {
        count("malformed-json", s.client().post("/v1/embeddings", std::string("{\"input\": [")).result_int());
      },
      [&](int i) {  // bad framing
        HttpClient c = s.client();
        c.write_raw(i % 2 ? "POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"
                          : "GET /health HTTP/1.1\r\n\r\n");
        count("framing", c.read().result_int());
      },
      [&](int) {  // a client that leaves with its request queued
        HttpClient c = s.client();
        c.send(http::verb::post, "/v1/embeddings",
               json{{"input", std::vector<std::string>(16, std::string(3000, 'q'))}}.dump());
        count("abandoned", 0);
      },
      [&](int) {
        count("over-long", s.client().post("/v1/embeddings", json{{"input", big_text}}).result_int());
      },
      [&](int) {
        count("tokenize", s.client().post("/tokenize", json{{"inputs", {"a b c", "東京 🚀"}}}).result_int());
      },
      [&](int) {
        count("too-large", s.client().post("/embed", json{{"inputs", std::string(9u << 20, 'y')}}).result_int());
      },
      [&](int) { count("health", s.client().get("/health").result_int()); },
      [&](int) { count("unknown", s.client().get("/" + std::string(5000, 'u')).result_int()); },
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; Clock::now() < deadline; ++i) {
        try {
          kinds[static_cast<size_t>(t * 7 + i) % kinds.size()](i);
        } catch (const std::exception&) {
          ++client_errors;  // a connection the server closed on purpose (413 while uploading, say)
        }
      }
    });
  }
  // /health on one keep-alive connection throughout: it must stay fast whatever the others do.
  std::vector<double> health_ms;
  std::thread prober([&] {
    HttpClient c = s.client();
    while (Clock::now() < deadline) {
      const auto t = Clock::now();
      if (c.get("/health").result_int() != 200) ++client_errors;
      health_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  int64_t rss_peak = rss_start;
  int fds_peak = fds_start;
  while (Clock::now() < deadline) {
    rss_peak = std::max(rss_peak, rss_bytes(s.pid()));
    fds_peak = std::max(fds_peak, open_fds(s.pid()));
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  for (auto& t : threads) t.join();
  prober.join();
  std::sort(health_ms.begin(), health_ms.end());
  const auto pct = [&](double q) { return health_ms[static_cast<size_t>(q * (health_ms.size() - 1))]; };
  std::printf("/health on a keep-alive connection during the soak: %zu probes, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
              health_ms.size(), pct(0.5), pct(0.99), health_ms.back());
  EXPECT_LT(health_ms.back(), 1000.0) << "/health stalled";
  std::this_thread::sleep_for(std::chrono::seconds(3));  // abandoned work and lingering closes settle
  const int64_t rss_end = rss_bytes(s.pid());
  const int fds_end = open_fds(s.pid());

  int64_t total = 0;
  for (const auto& [key, n] : counts) {
    total += n;
    std::printf("  %-22s %lld\n", key.c_str(), static_cast<long long>(n));
    EXPECT_EQ(key.find(" 5"), key.find(" 503") == std::string::npos ? std::string::npos : key.find(" 503")) << key;
  }
  std::printf(
      "soak %d s: %lld requests, %lld client-side errors, RSS start %.0f MB end %.0f MB peak %.0f MB, "
      "fds start %d end %d peak %d\n",
      seconds, static_cast<long long>(total), static_cast<long long>(client_errors.load()), rss_start / 1e6,
      rss_end / 1e6, rss_peak / 1e6, fds_start, fds_end, fds_peak);
  EXPECT_EQ(wrong_vectors, 0);
  EXPECT_GT(counts["valid 200"], 0);
  EXPECT_LT(rss_end, rss_start + 150'000'000) << "memory not returned after the soak";
  EXPECT_LT(rss_peak, int64_t{2'000'000'000});
  EXPECT_LE(fds_end, fds_start + 8) << "descriptors leak";
  const auto m = parse_metrics(s.client().get("/metrics").body());
  EXPECT_EQ(metric(m, "ember_requests_in_flight"), 0);
  EXPECT_EQ(metric(m, "ember_queue_sequences"), 0);
  expect_alive(s);
}

}  // namespace

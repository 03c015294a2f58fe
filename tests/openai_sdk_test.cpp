// The official OpenAI Node SDK (npm "openai", pinned in package.json) against a real `ember serve`
// with an API key: tests/openai_sdk/embeddings.mjs checks what the SDK returns against the vectors
// this process computes.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "serve_support.h"

namespace {

using namespace ember_test;
using nlohmann::json;

using OpenAiSdkTest = ServeFixture;

TEST_F(OpenAiSdkTest, EmbeddingsThroughTheOfficialSdkEqualTheEngine) {
  const std::filesystem::path source = EMBER_SOURCE_DIR;
  if (std::string(EMBER_NODE).empty()) GTEST_SKIP() << "node was not found when CMake ran; run scripts/setup.sh";
  if (!std::filesystem::exists(source / "node_modules/openai/package.json")) {
    GTEST_SKIP() << "node_modules/openai is missing; run `npm ci` (scripts/setup.sh does)";
  }
  const std::vector<std::string> texts = {"What is the capital of China?", "Gravity pulls masses together.",
                                          "東京 🚀 ñandú", "x"};
  const std::vector<int32_t> token_ids = {9707, 1879, 151643};
  json want = {{"model", kServedName}, {"texts", texts}, {"token_ids", token_ids}};
  for (const auto& t : texts) {
    want["embeddings"].push_back(expected(t));
    want["embeddings_32"].push_back(expected(t, 32));
    want["prompt_tokens"].push_back(ids_of(t).size());
  }
  want["token_embedding"] = expected(token_ids);
  const auto expected_path = root() / "sdk_expected.json";
  std::ofstream(expected_path) << want.dump();

  const std::string key = "sdk-test-key";
  ServerProcess s(model(), {"--served-model-name", kServedName, "--api-key", key});
  const std::string cmd = std::string(EMBER_NODE) + " " + (source / "tests/openai_sdk/embeddings.mjs").string() + " " +
                          s.url() + "/v1 " + key + " " + expected_path.string() + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << cmd;
  std::string out;
  char chunk[4096];
  for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, pipe)) > 0;) out.append(chunk, n);
  EXPECT_EQ(shell_status(::pclose(pipe)), 0) << cmd << "\n" << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  expect_alive(s);
}

}  // namespace

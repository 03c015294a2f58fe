// ember against Hugging Face transformers on the same weights.
//
// tests/data/model_golden.json comes from tests/golden/hf_golden.py (run on a machine with
// torch/transformers). For each variant it holds the config.json transformers loaded, how the
// weights were stored, the seed, a weight checksum and the float32 reference embeddings of each
// text. Here each variant is regenerated with make_model(), the checksum proves the weights are
// the ones transformers saw, and ember's embeddings must match in both precisions.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ember/engine.h"
#include "ember/error.h"
#include "model/make_model.h"
#include "model/weights.h"
#include "model_checksum.h"
#include "golden_support.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace ember;

namespace {

using ember_test::cosine;
using ember_test::load_golden;
using ember_test::TempDir;

// write_variant(), plus the proof that make_model() produced the weights transformers used.
fs::path write_checked_variant(const nlohmann::json& v, const fs::path& root) {
  const fs::path dir = ember_test::write_variant(v, root);
  const ModelConfig config = ModelConfig::from_file(dir / "config.json");
  const uint64_t want = std::stoull(v.at("checksum").get<std::string>(), nullptr, 16);
  EXPECT_EQ(ember_test::stored_checksum(WeightStore::open(dir), config), want)
      << v.at("name").get<std::string>() << ": make_model() did not produce the weights transformers used";
  return dir;
}

void check_precision(Precision precision, double min_cosine, int64_t max_batch_tokens = 8192) {
  nlohmann::json golden;
  try {
    golden = load_golden();
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  const std::vector<std::string> texts = golden.at("texts");
  const auto& ids = golden.at("ids");
  ASSERT_EQ(ids.size(), texts.size());
  ASSERT_FALSE(golden.at("variants").empty());
  std::printf("golden: transformers %s, torch %s\n", golden.at("transformers").get<std::string>().c_str(),
              golden.at("torch").get<std::string>().c_str());

  TempDir tmp;
  for (const auto& v : golden.at("variants")) {
    const std::string name = v.at("name");
    SCOPED_TRACE(name);
    const fs::path dir = write_checked_variant(v, tmp.path);

    EngineOptions eo;
    eo.model = dir.string();
    eo.precision = precision;
    eo.max_batch_tokens = max_batch_tokens;
    const auto engine = Engine::open(eo);
    for (size_t t = 0; t < texts.size(); ++t)
      EXPECT_EQ(engine->tokenize(texts[t], EmbedOptions{}), ids[t].get<std::vector<int32_t>>()) << "text " << t;

    const auto got = engine->embed_texts(texts, EmbedOptions{});
    const auto& want = v.at("embeddings");
    ASSERT_EQ(got.size(), texts.size());
    double worst = 1.0;
    size_t worst_text = 0;
    for (size_t t = 0; t < texts.size(); ++t) {
      const double c = cosine(got[t], want[t].get<std::vector<float>>());
      EXPECT_GE(c, min_cosine) << "text " << t << " (" << ids[t].size() << " tokens)";
      if (c < worst) {
        worst = c;
        worst_text = t;
      }
    }
    std::printf("%s %s: worst cosine %.12f, 1 - cos = %.1e (text %zu)\n",
                precision == Precision::Exact ? "exact" : "fast", name.c_str(), worst, 1.0 - worst, worst_text);
    ::testing::Test::RecordProperty(name + (precision == Precision::Exact ? ".exact" : ".fast"),
                                    std::to_string(worst));
  }
}

}  // namespace

TEST(Golden, ExactMatchesTransformers) { check_precision(Precision::Exact, 0.99999); }

TEST(Golden, FastMatchesTransformers) { check_precision(Precision::Fast, 0.999); }

// A budget below the longest text (4,992 tokens): texts split across batches, and the long one
// runs alone with its MLP in row chunks.
TEST(Golden, ExactMatchesTransformersWithASmallBatchBudget) { check_precision(Precision::Exact, 0.99999, 700); }

TEST(Golden, DimensionsKeepTheFirstValuesRenormalised) {
  TempDir tmp;
  MakeModelOptions o;
  o.tokenizer_dir = EMBER_TOKENIZER_DIR;
  make_model(preset_config("tiny"), o, tmp.path / "tiny");
  EngineOptions eo;
  eo.model = (tmp.path / "tiny").string();
  const auto engine = Engine::open(eo);
  const std::vector<std::string> texts = {"a", "The quick brown fox jumps over the lazy dog."};
  const auto full = engine->embed_texts(texts, EmbedOptions{});
  for (int d : {32, 48, 64}) {
    EmbedOptions opts;
    opts.dimensions = d;
    const auto cut = engine->embed_texts(texts, opts);
    ASSERT_EQ(cut.size(), texts.size());
    for (size_t t = 0; t < texts.size(); ++t) {
      ASSERT_EQ(cut[t].size(), static_cast<size_t>(d));
      double norm = 0;
      for (int i = 0; i < d; ++i) norm += double{full[t][i]} * full[t][i];
      norm = std::sqrt(norm);
      for (int i = 0; i < d; ++i) EXPECT_NEAR(cut[t][i], full[t][i] / norm, 1e-6) << "d=" << d << " i=" << i;
    }
  }
}

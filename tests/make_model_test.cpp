#include "model/make_model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ember/error.h"
#include "model/weights.h"
#include "model_checksum.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace ember;

namespace {

using ember_test::TempDir;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

MakeModelOptions options(uint64_t seed = 0, int shards = 1, bool prefix = false, DType dtype = DType::BF16) {
  MakeModelOptions o;
  o.seed = seed;
  o.shards = shards;
  o.name_prefix = prefix;
  o.dtype = dtype;
  o.tokenizer_dir = EMBER_TOKENIZER_DIR;
  return o;
}

// A very small model (vocab 40) so tests that only check the file layout run in milliseconds.
ModelConfig micro_config(bool tied) {
  ModelConfig c = preset_config("tiny");
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.vocab_size = 32;
  c.tie_word_embeddings = tied;
  return c;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

TEST(Presets, ShapesOfThePublishedModels) {
  const ModelConfig s = preset_config("qwen3-embedding-0.6b");
  EXPECT_EQ(s.hidden_size, 1024);
  EXPECT_EQ(s.num_hidden_layers, 28);
  EXPECT_EQ(s.num_attention_heads, 16);
  EXPECT_EQ(s.num_key_value_heads, 8);
  EXPECT_EQ(s.head_dim, 128);
  EXPECT_EQ(s.intermediate_size, 3072);
  EXPECT_EQ(s.vocab_size, 151669);
  EXPECT_TRUE(s.tie_word_embeddings);
  EXPECT_EQ(s.max_position_embeddings, 32768);
  EXPECT_EQ(s.rope_theta, 1e6);
  EXPECT_EQ(s.rms_norm_eps, 1e-6);

  const ModelConfig m = preset_config("qwen3-embedding-4b");
  EXPECT_EQ(m.hidden_size, 2560);
  EXPECT_EQ(m.num_hidden_layers, 36);
  EXPECT_EQ(m.num_attention_heads, 32);
  EXPECT_EQ(m.num_key_value_heads, 8);
  EXPECT_EQ(m.intermediate_size, 9728);
  EXPECT_EQ(m.vocab_size, 151665);
  EXPECT_TRUE(m.tie_word_embeddings);
  EXPECT_EQ(m.max_position_embeddings, 40960);

  const ModelConfig l = preset_config("qwen3-embedding-8b");
  EXPECT_EQ(l.hidden_size, 4096);
  EXPECT_EQ(l.intermediate_size, 12288);
  EXPECT_FALSE(l.tie_word_embeddings);
  EXPECT_EQ(l.max_position_embeddings, 40960);

  const ModelConfig t = preset_config("tiny");
  EXPECT_EQ(t.hidden_size, 64);
  EXPECT_EQ(t.num_hidden_layers, 4);
  EXPECT_EQ(t.head_dim, 32);  // deliberately != hidden / heads
  EXPECT_EQ(t.num_key_value_heads, 2);
  EXPECT_EQ(t.vocab_size, 151669);
}

TEST(Presets, ParameterCountsMatchThePublishedModels) {
  // Embedding-model parameters (no LM head), as published: 0.6B, 4B, 8B.
  const std::pair<const char*, int64_t> expected[] = {{"qwen3-embedding-0.6b", 595776512},
                                                      {"qwen3-embedding-4b", 4021774336},
                                                      {"qwen3-embedding-8b", 7567295488}};
  for (const auto& [name, count] : expected) {
    const ModelConfig c = preset_config(name);
    int64_t from_tensors = 0;
    for (const auto& t : generated_tensors(c))
      if (t.name != "lm_head.weight") from_tensors += numel(t.shape);
    EXPECT_EQ(from_tensors, count) << name;
    EXPECT_EQ(c.parameter_count(), count) << name;
  }
}

TEST(Presets, NamesAreCaseInsensitiveAndUnknownOnesListTheKnown) {
  EXPECT_EQ(preset_config("Qwen3-Embedding-4B").hidden_size, 2560);
  EXPECT_EQ(preset_names().size(), 4u);
  try {
    preset_config("qwen3-embedding-2b");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("qwen3-embedding-2b"), std::string::npos) << msg;
    for (const auto& n : preset_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(GeneratedTensors, NamesShapesAndFanIn) {
  const ModelConfig c = preset_config("tiny");
  const auto tied = generated_tensors(c);
  ASSERT_EQ(tied.size(), 1 + 4 * 11 + 1u);
  EXPECT_EQ(tied.front().name, "embed_tokens.weight");
  EXPECT_EQ(tied.front().shape, (std::vector<int64_t>{151669, 64}));
  EXPECT_EQ(tied.back().name, "norm.weight");
  std::map<std::string, GeneratedTensor> by_name;
  for (const auto& t : tied) by_name[t.name] = t;
  EXPECT_EQ(by_name.at("layers.3.self_attn.q_proj.weight").shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(by_name.at("layers.3.self_attn.k_proj.weight").shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(by_name.at("layers.3.self_attn.o_proj.weight").shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(by_name.at("layers.3.self_attn.o_proj.weight").fan_in, 128);
  EXPECT_EQ(by_name.at("layers.0.mlp.down_proj.weight").fan_in, 128);
  EXPECT_EQ(by_name.at("layers.0.mlp.up_proj.weight").fan_in, 64);
  EXPECT_TRUE(by_name.at("layers.0.self_attn.k_norm.weight").is_norm);
  EXPECT_EQ(by_name.at("layers.0.self_attn.k_norm.weight").shape, (std::vector<int64_t>{32}));
  EXPECT_FALSE(by_name.at("embed_tokens.weight").is_norm);

  ModelConfig untied = c;
  untied.tie_word_embeddings = false;
  const auto u = generated_tensors(untied);
  EXPECT_EQ(u.back().name, "lm_head.weight");
  EXPECT_EQ(u.back().shape, (std::vector<int64_t>{151669, 64}));
}

TEST(GeneratedWeight, SpotValuesFromTheFormula) {
  // Computed with the plain-Python formula of tests/golden/hf_golden.py (weight_scalar).
  const float embed[] = {-0.4921875f, -0.3046875f, 0.53125f, -0.7734375f, -0.4375f, -0.5f, 0.7890625f, 0.5859375f};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(generated_weight("embed_tokens.weight", i, 0, 1, false), embed[i]) << i;
  EXPECT_EQ(generated_weight("layers.0.self_attn.q_proj.weight", 5, 42, 1024, false), -0.0244140625f);
  EXPECT_EQ(generated_weight("norm.weight", 3, 7, 1, true), 1.0546875f);
  const float down[] = {0.00927734375f, 0.001220703125f, -0.003173828125f, 0.016845703125f};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(generated_weight("layers.0.mlp.down_proj.weight", i, 3, 3072, false), down[i]);
  const float knorm[] = {0.9453125f, 0.984375f, 1.046875f, 1.0234375f, 0.984375f, 0.9921875f};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(generated_weight("layers.2.self_attn.k_norm.weight", i, 0, 1, true), knorm[i]);
}

TEST(GeneratedWeight, FirstValueWorkedByHand) {
  // fnv1a64("norm.weight") then splitmix64 steps, written out once more independently.
  auto mix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  EXPECT_EQ(mix(0), 0xe220a8397b1dcdafull);  // splitmix64's first output for seed 0
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : std::string("a")) h = (h ^ b) * 0x100000001b3ull;
  EXPECT_EQ(h, 0xaf63dc4c8601ec8cull);  // the published FNV-1a 64 of "a"

  for (uint64_t seed : {0ull, 9ull}) {
    uint64_t name_hash = 0xcbf29ce484222325ull;
    for (unsigned char b : std::string("layers.1.mlp.up_proj.weight")) name_hash = (name_hash ^ b) * 0x100000001b3ull;
    const uint64_t stream = mix(name_hash ^ mix(seed));
    for (uint64_t index : {0ull, 1ull, 1000ull}) {
      const int k = static_cast<int>(mix(stream + index * 0x9E3779B97F4A7C15ull) >> 56) - 128;
      // fan_in 100: bit_width 7 -> e = 3 -> scale 2^-10; norm: 1 + floor(k/16)/128.
      EXPECT_EQ(generated_weight("layers.1.mlp.up_proj.weight", index, seed, 100, false), k / 1024.0f);
      EXPECT_EQ(generated_weight("layers.1.mlp.up_proj.weight", index, seed, 1, true),
                1.0f + std::floor(k / 16.0f) / 128.0f);
    }
  }
}

TEST(GeneratedWeight, ValuesAreExactInEveryDtypeAndInRange) {
  for (int64_t fan_in : {1, 2, 64, 100, 1024, 3072, 12288}) {
    const float bound = std::ldexp(1.0f, -((std::bit_width(static_cast<uint64_t>(fan_in)) - 1) / 2));
    for (bool is_norm : {false, true}) {
      for (uint64_t i = 0; i < 2000; ++i) {
        const float v = generated_weight("layers.0.self_attn.v_proj.weight", i, 11, fan_in, is_norm);
        EXPECT_EQ(bf16_to_f32(f32_to_bf16(v)), v);
        EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v);
        if (is_norm) {
          EXPECT_GE(v, 0.9375f);
          EXPECT_LE(v, 1.0546875f);
        } else {
          EXPECT_LE(std::fabs(v), bound);
        }
      }
    }
  }
}

TEST(MakeModel, SameSeedSameBytesOtherSeedOtherBytes) {
  TempDir dir;
  const ModelConfig c = preset_config("tiny");
  make_model(c, options(1), dir.path / "a");
  make_model(c, options(1), dir.path / "b");
  make_model(c, options(2), dir.path / "c");
  const std::string a = read_file(dir.path / "a/model.safetensors");
  EXPECT_GT(a.size(), 151669u * 64 * 2);
  EXPECT_EQ(a, read_file(dir.path / "b/model.safetensors"));
  EXPECT_NE(a, read_file(dir.path / "c/model.safetensors"));
  EXPECT_EQ(read_file(dir.path / "a/config.json"), read_file(dir.path / "c/config.json"));
}

TEST(MakeModel, FolderHasConfigAndTokenizerFiles) {
  TempDir dir;
  const fs::path out = dir.path / "tiny";
  make_model(preset_config("tiny"), options(), out);
  const auto j = nlohmann::json::parse(read_file(out / "config.json"));
  EXPECT_EQ(j.at("architectures"), nlohmann::json::array({"Qwen3Model"}));
  EXPECT_EQ(j.at("model_type"), "qwen3");
  EXPECT_EQ(j.at("hidden_size"), 64);
  EXPECT_EQ(j.at("head_dim"), 32);
  EXPECT_EQ(j.at("num_key_value_heads"), 2);
  EXPECT_EQ(j.at("rope_theta"), 1e6);
  EXPECT_EQ(j.at("rms_norm_eps"), 1e-6);
  EXPECT_EQ(j.at("tie_word_embeddings"), true);
  EXPECT_EQ(j.at("torch_dtype"), "bfloat16");
  EXPECT_EQ(j.at("hidden_act"), "silu");
  EXPECT_EQ(j.at("attention_bias"), false);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    EXPECT_EQ(read_file(out / f), read_file(fs::path(EMBER_TOKENIZER_DIR) / f)) << f;

  const ModelConfig parsed = ModelConfig::from_file(out / "config.json");
  const ModelConfig want = preset_config("tiny");
  EXPECT_EQ(parsed.hidden_size, want.hidden_size);
  EXPECT_EQ(parsed.num_hidden_layers, want.num_hidden_layers);
  EXPECT_EQ(parsed.num_attention_heads, want.num_attention_heads);
  EXPECT_EQ(parsed.num_key_value_heads, want.num_key_value_heads);
  EXPECT_EQ(parsed.head_dim, want.head_dim);
  EXPECT_EQ(parsed.intermediate_size, want.intermediate_size);
  EXPECT_EQ(parsed.vocab_size, want.vocab_size);
  EXPECT_EQ(parsed.max_position_embeddings, want.max_position_embeddings);
  EXPECT_EQ(parsed.rope_theta, want.rope_theta);
  EXPECT_EQ(parsed.rms_norm_eps, want.rms_norm_eps);
  EXPECT_EQ(parsed.tie_word_embeddings, want.tie_word_embeddings);
  // No leftovers from the temporary folder.
  for (const auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename(), "tiny");
}

class Layouts : public ::testing::TestWithParam<std::tuple<int, bool, bool, DType>> {};

TEST_P(Layouts, WeightStoreFindsEveryTensorWithItsShapeAndValues) {
  const auto [shards, prefix, tied, dtype] = GetParam();
  TempDir dir;
  const ModelConfig c = micro_config(tied);
  const fs::path out = dir.path / "m";
  make_model(c, options(5, shards, prefix, dtype), out);

  if (shards == 1) {
    EXPECT_TRUE(fs::exists(out / "model.safetensors"));
    EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  } else {
    EXPECT_FALSE(fs::exists(out / "model.safetensors"));
    const auto index = nlohmann::json::parse(read_file(out / "model.safetensors.index.json"));
    std::set<std::string> files;
    for (const auto& [name, file] : index.at("weight_map").items()) files.insert(file.get<std::string>());
    std::set<std::string> want;
    for (int k = 1; k <= shards; ++k) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k, shards);
      want.insert(buf);
    }
    EXPECT_EQ(files, want);
    uint64_t bytes = 0;
    for (const auto& t : generated_tensors(c)) bytes += numel(t.shape) * dtype_size(dtype);
    EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), bytes);
    EXPECT_EQ(index.at("weight_map").size(), generated_tensors(c).size());
    EXPECT_EQ(index.at("weight_map").contains("model.norm.weight"), prefix);
    EXPECT_EQ(index.at("weight_map").contains("lm_head.weight"), !tied);  // never prefixed
  }

  const WeightStore store = WeightStore::open(out);
  EXPECT_EQ(store.file_count(), static_cast<size_t>(shards));
  for (const auto& t : generated_tensors(c)) {
    ASSERT_TRUE(store.contains(t.name)) << t.name;
    const Tensor w = store.get(t.name, t.shape);
    EXPECT_EQ(w.dtype, dtype) << t.name;
    std::vector<float> values(w.numel());
    convert(w.data, w.dtype, values.data(), DType::F32, values.size());
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(values[i], generated_weight(t.name, i, 5, t.fan_in, t.is_norm)) << t.name << "[" << i << "]";
  }
  EXPECT_EQ(store.contains("lm_head.weight"), !tied);
  EXPECT_EQ(ember_test::stored_checksum(store, c), ember_test::formula_checksum(c, 5));
}

INSTANTIATE_TEST_SUITE_P(MakeModel, Layouts,
                         ::testing::Values(std::make_tuple(1, false, true, DType::BF16),
                                           std::make_tuple(1, true, false, DType::BF16),
                                           std::make_tuple(3, false, false, DType::F16),
                                           std::make_tuple(3, true, true, DType::F32),
                                           std::make_tuple(2, true, false, DType::BF16)));

TEST(MakeModel, EveryShardGetsATensorEvenWhenTheEmbeddingDominates) {
  TempDir dir;
  const ModelConfig c = preset_config("tiny");  // embedding is ~99% of the bytes
  make_model(c, options(0, 4), dir.path / "m");
  const WeightStore store = WeightStore::open(dir.path / "m");
  EXPECT_EQ(store.file_count(), 4u);
  for (int k = 1; k <= 4; ++k) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05d-of-00004.safetensors", k);
    EXPECT_GT(fs::file_size(dir.path / "m" / buf), 8u) << buf;
  }
}

TEST(Checksum, IndependentOfDtypeLayoutAndPinnedToPython) {
  TempDir dir;
  const ModelConfig c = micro_config(false);
  // From the plain-Python formula in tests/golden/hf_golden.py on this config, seed 5.
  EXPECT_EQ(ember_test::formula_checksum(c, 5), 0xa13ccd9363670000ull);
  EXPECT_NE(ember_test::formula_checksum(c, 6), ember_test::formula_checksum(c, 5));
  make_model(c, options(5, 1, false, DType::F16), dir.path / "f16");
  make_model(c, options(5, 2, true, DType::F32), dir.path / "f32");
  EXPECT_EQ(ember_test::stored_checksum(WeightStore::open(dir.path / "f16"), c), 0xa13ccd9363670000ull);
  EXPECT_EQ(ember_test::stored_checksum(WeightStore::open(dir.path / "f32"), c), 0xa13ccd9363670000ull);
}

TEST(MakeModel, RefusesAnExistingFolderAndLeavesItAlone) {
  TempDir dir;
  const fs::path out = dir.path / "m";
  fs::create_directories(out);
  {
    std::ofstream(out / "notes.txt") << "mine";
  }
  try {
    make_model(micro_config(true), options(), out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(out.string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(out / "notes.txt"), "mine");
  EXPECT_FALSE(fs::exists(out / "config.json"));
}

TEST(MakeModel, AcceptsAnEmptyFolder) {
  TempDir dir;
  fs::create_directories(dir.path / "empty");
  make_model(micro_config(true), options(), dir.path / "empty");
  EXPECT_TRUE(fs::exists(dir.path / "empty/model.safetensors"));
}

TEST(MakeModel, FailuresLeaveNothingBehind) {
  TempDir dir;
  MakeModelOptions no_tokenizer = options();
  no_tokenizer.tokenizer_dir = dir.path / "nowhere";
  try {
    make_model(micro_config(true), no_tokenizer, dir.path / "m");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_model(micro_config(true), options(0, 0), dir.path / "m"), Error);
  EXPECT_THROW(make_model(micro_config(true), options(0, 1000), dir.path / "m"), Error);
  EXPECT_THROW(make_model(micro_config(true), options(0, 1, false, DType::I32), dir.path / "m"), Error);
  ModelConfig bad = micro_config(true);
  bad.num_key_value_heads = 3;
  EXPECT_THROW(make_model(bad, options(), dir.path / "m"), Error);
  EXPECT_TRUE(fs::is_empty(dir.path));
}

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>

#include "ember/error.h"
#include "test_support.h"
#include "ember/model_config.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace fs = std::filesystem;
using namespace ember;

namespace {

using ember_test::error_of;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Sets environment variables for one test and restores them afterwards.
class ScopedEnv {
 public:
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value) ::setenv(name.c_str(), value->c_str(), 1);
      else ::unsetenv(name.c_str());
    }
  }
  void set(const std::string& name, const std::optional<std::string>& value) {
    if (saved_.find(name) == saved_.end()) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    if (value) ::setenv(name.c_str(), value->c_str(), 1);
    else ::unsetenv(name.c_str());
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

const char* kConfig = R"({"architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 8,
  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
  "intermediate_size": 16, "vocab_size": 10, "tie_word_embeddings": true})";

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("ember_model_dir_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    for (size_t i = 0; i < a_.size(); ++i) a_[i] = static_cast<float>(i);
    for (size_t i = 0; i < b_.size(); ++i) b_[i] = f32_to_bf16(-static_cast<float>(i));
  }
  void TearDown() override { fs::remove_all(root_); }

  static void write_text(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
  }

  // Two shards with "model."-prefixed names, as Qwen3ForCausalLM checkpoints are saved.
  fs::path sharded_model() {
    const fs::path dir = root_ / "sharded";
    fs::create_directories(dir);
    write_text(dir / "config.json", kConfig);
    write_safetensors(dir / "model-00001-of-00002.safetensors",
                      {{"model.embed_tokens.weight", DType::F32, {10, 8}, a_.data()},
                       {"model.norm.weight", DType::F32, {8}, a_.data()}});
    write_safetensors(dir / "model-00002-of-00002.safetensors",
                      {{"model.layers.0.mlp.up_proj.weight", DType::BF16, {16, 8}, b_.data()}});
    write_text(dir / "model.safetensors.index.json", R"({
      "metadata": {"total_size": 616},
      "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.layers.0.mlp.up_proj.weight": "model-00002-of-00002.safetensors",
        "model.norm.weight": "model-00001-of-00002.safetensors"
      }})");
    return dir;
  }

  fs::path single_model(const fs::path& dir, const std::string& file_name) {
    fs::create_directories(dir);
    write_text(dir / "config.json", kConfig);
    write_safetensors(dir / file_name, {{"embed_tokens.weight", DType::F32, {10, 8}, a_.data()},
                                        {"layers.0.mlp.up_proj.weight", DType::BF16, {16, 8}, b_.data()}});
    return dir;
  }

  // A hub cache entry laid out like huggingface_hub's: snapshot files are symlinks into blobs/.
  fs::path cached_model(const fs::path& hub, const std::string& folder, bool with_ref) {
    const fs::path repo = hub / folder;
    const std::string rev = "0123456789abcdef0123456789abcdef01234567";
    const fs::path snapshot = repo / "snapshots" / rev;
    fs::create_directories(snapshot);
    fs::create_directories(repo / "blobs");
    write_text(repo / "blobs" / "c0ffee", kConfig);
    write_safetensors(repo / "blobs" / "deadbeef", {{"embed_tokens.weight", DType::F32, {10, 8}, a_.data()}});
    fs::create_symlink("../../blobs/c0ffee", snapshot / "config.json");
    fs::create_symlink("../../blobs/deadbeef", snapshot / "model.safetensors");
    if (with_ref) write_text(repo / "refs" / "main", rev);  // huggingface_hub writes no newline
    return snapshot;
  }

  fs::path root_;
  std::vector<float> a_ = std::vector<float>(80);
  std::vector<uint16_t> b_ = std::vector<uint16_t>(128);
};

TEST_F(ModelDirTest, ShardedIndexWithModelPrefix) {
  const fs::path dir = sharded_model();
  const WeightStore ws = WeightStore::open(dir);
  EXPECT_EQ(ws.file_count(), 2u);
  EXPECT_EQ(ws.total_bytes(), 320u + 32u + 256u);
  EXPECT_TRUE(ws.contains("embed_tokens.weight"));
  EXPECT_TRUE(ws.contains("model.norm.weight"));
  EXPECT_FALSE(ws.contains("lm_head.weight"));

  const Tensor up = ws.get("layers.0.mlp.up_proj.weight", {16, 8});
  EXPECT_EQ(up.dtype, DType::BF16);
  EXPECT_EQ(bf16_to_f32(up.as<uint16_t>()[5]), -5.0f);
  const Tensor emb = ws.get("embed_tokens.weight", {10, 8});
  EXPECT_EQ(emb.as<float>()[79], 79.0f);

  const std::string missing = error_of([&] { ws.get("layers.3.mlp.up_proj.weight", {16, 8}); });
  EXPECT_EQ(missing, "tensor 'layers.3.mlp.up_proj.weight' not found in " + dir.string() +
                         " (looked for 'layers.3.mlp.up_proj.weight' and 'model.layers.3.mlp.up_proj.weight')");
  const std::string shape = error_of([&] { ws.get("norm.weight", {16}); });
  EXPECT_EQ(shape, "tensor 'model.norm.weight' in " + (dir / "model-00001-of-00002.safetensors").string() +
                       " has shape [8], expected [16]");
}

TEST_F(ModelDirTest, MissingShardIsNamed) {
  const fs::path dir = sharded_model();
  fs::remove(dir / "model-00002-of-00002.safetensors");
  const std::string msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_TRUE(contains(msg, "shard model-00002-of-00002.safetensors listed in")) << msg;
  EXPECT_TRUE(contains(msg, "model.safetensors.index.json")) << msg;
}

TEST_F(ModelDirTest, IndexMustMatchShards) {
  const fs::path dir = sharded_model();
  write_text(dir / "model.safetensors.index.json",
             R"({"weight_map": {"model.ghost.weight": "model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(contains(error_of([&] { WeightStore::open(dir); }), "places tensor 'model.ghost.weight'"));
  write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"x": "../elsewhere.safetensors"}})");
  EXPECT_TRUE(contains(error_of([&] { WeightStore::open(dir); }), "expected a file name inside the model folder"));
  write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
  EXPECT_TRUE(contains(error_of([&] { WeightStore::open(dir); }), "missing the 'weight_map' object"));
}

TEST_F(ModelDirTest, SingleFileWithoutPrefix) {
  const fs::path dir = single_model(root_ / "single", "model.safetensors");
  const WeightStore ws = WeightStore::open(dir);
  EXPECT_EQ(ws.file_count(), 1u);
  EXPECT_TRUE(ws.contains("layers.0.mlp.up_proj.weight"));
  EXPECT_EQ(ws.get("embed_tokens.weight", {10, 8}).as<float>()[3], 3.0f);
}

TEST_F(ModelDirTest, OneArbitrarilyNamedFile) {
  const fs::path dir = single_model(root_ / "odd", "weights.safetensors");
  EXPECT_EQ(WeightStore::open(dir).get("embed_tokens.weight", {10, 8}).as<float>()[7], 7.0f);
  write_safetensors(dir / "other.safetensors", {});
  EXPECT_TRUE(contains(error_of([&] { WeightStore::open(dir); }), "has 2 .safetensors files"));
}

TEST_F(ModelDirTest, NoWeights) {
  const fs::path dir = root_ / "empty";
  fs::create_directories(dir);
  EXPECT_EQ(error_of([&] { WeightStore::open(dir); }),
            "no model.safetensors or model.safetensors.index.json in " + dir.string());
}

TEST_F(ModelDirTest, ExistingFolderReturnedAsIs) {
  const fs::path dir = single_model(root_ / "local", "model.safetensors");
  EXPECT_EQ(resolve_model_dir(dir.string()), dir);
  const fs::path bare = root_ / "bare";
  fs::create_directories(bare);
  const std::string msg = error_of([&] { resolve_model_dir(bare.string()); });
  EXPECT_TRUE(contains(msg, bare.string() + " has no config.json")) << msg;
  EXPECT_TRUE(contains(error_of([&] { resolve_model_dir((root_ / "nope").string()); }), "does not exist"));
  EXPECT_TRUE(contains(error_of([&] { resolve_model_dir((dir / "config.json").string()); }), "is a file"));
}

TEST_F(ModelDirTest, HubCacheThroughEachVariable) {
  ScopedEnv env;
  env.set("HUGGINGFACE_HUB_CACHE", std::nullopt);
  env.set("XDG_CACHE_HOME", std::nullopt);
  const std::string folder = "models--Qwen--Qwen3-Embedding-0.6B";

  const fs::path via_hub_cache = cached_model(root_ / "hubcache", folder, true);
  const fs::path via_hf_home = cached_model(root_ / "hfhome" / "hub", folder, true);
  const fs::path via_home = cached_model(root_ / "home" / ".cache" / "huggingface" / "hub", folder, true);

  env.set("HF_HUB_CACHE", (root_ / "hubcache").string());
  env.set("HF_HOME", (root_ / "hfhome").string());
  env.set("HOME", (root_ / "home").string());
  EXPECT_EQ(resolve_model_dir("Qwen/Qwen3-Embedding-0.6B"), via_hub_cache);

  env.set("HF_HUB_CACHE", std::nullopt);
  EXPECT_EQ(resolve_model_dir("Qwen/Qwen3-Embedding-0.6B"), via_hf_home);

  env.set("HF_HOME", std::nullopt);
  const fs::path dir = resolve_model_dir("Qwen/Qwen3-Embedding-0.6B");
  EXPECT_EQ(dir, via_home);

  // Reading config and weights goes through the snapshot symlinks into blobs/.
  EXPECT_TRUE(fs::is_symlink(dir / "model.safetensors"));
  EXPECT_EQ(ModelConfig::from_file(dir / "config.json").hidden_size, 8);
  EXPECT_EQ(WeightStore::open(dir).get("embed_tokens.weight", {10, 8}).as<float>()[42], 42.0f);
}

TEST_F(ModelDirTest, SingleSnapshotWithoutRef) {
  ScopedEnv env;
  env.set("HF_HUB_CACHE", (root_ / "hub").string());
  const fs::path snapshot = cached_model(root_ / "hub", "models--Org--Name", false);
  EXPECT_EQ(resolve_model_dir("Org/Name"), snapshot);

  fs::create_directories(root_ / "hub" / "models--Org--Name" / "snapshots" / "second");
  EXPECT_TRUE(contains(error_of([] { resolve_model_dir("Org/Name"); }), "has 2 snapshots and no refs/main"));
}

TEST_F(ModelDirTest, RefPointsAtMissingSnapshot) {
  ScopedEnv env;
  env.set("HF_HUB_CACHE", (root_ / "hub").string());
  cached_model(root_ / "hub", "models--Org--Name", false);
  write_text(root_ / "hub" / "models--Org--Name" / "refs" / "main", "ffff\n");
  const std::string msg = error_of([] { resolve_model_dir("Org/Name"); });
  EXPECT_TRUE(contains(msg, "names revision ffff")) << msg;
}

TEST_F(ModelDirTest, NotFoundListsSearchedPath) {
  ScopedEnv env;
  env.set("HF_HUB_CACHE", (root_ / "hub").string());
  const std::string msg = error_of([] { resolve_model_dir("Qwen/Qwen3-Embedding-4B"); });
  EXPECT_TRUE(contains(msg, (root_ / "hub" / "models--Qwen--Qwen3-Embedding-4B").string())) << msg;
  EXPECT_TRUE(contains(msg, "$HF_HUB_CACHE")) << msg;
  EXPECT_TRUE(contains(msg, "huggingface-cli download Qwen/Qwen3-Embedding-4B")) << msg;
}

}  // namespace

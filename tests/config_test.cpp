#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <functional>

#include "ember/error.h"
#include "ember/model_config.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace ember;

namespace {

using ember_test::error_of;

// config.json of Qwen/Qwen3-Embedding-0.6B on the Hugging Face hub (transformers 4.51 layout).
const char* kQwen3Embedding06B = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.3",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151669
})";

const char* kQwen3Embedding4B = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 9728,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.3",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151665
})";

const char* kQwen3Embedding8B = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 12288,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.3",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151665
})";

// The same 0.6B model as transformers 5 saves it: "dtype" and "rope_parameters".
const char* kTransformers5 = R"({
  "architectures": ["Qwen3Model"],
  "dtype": "float32",
  "head_dim": 128,
  "hidden_size": 1024,
  "intermediate_size": 3072,
  "layer_types": ["full_attention", "full_attention"],
  "max_position_embeddings": 32768,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 2,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
  "tie_word_embeddings": true,
  "transformers_version": "5.0.0",
  "vocab_size": 151669
})";

// A minimal valid config with one key replaced (or removed when value is empty).
std::string edited(const std::string& key, const std::string& value) {
  std::string text = R"({"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,)"
                     R"( "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000)";
  const std::string pattern = "\"" + key + "\": ";
  const size_t at = text.find(pattern);
  if (at != std::string::npos) {
    const size_t end = text.find_first_of(",", at);
    text.erase(at, (end == std::string::npos ? text.size() : end + 1) - at);
  }
  if (!value.empty()) text += ", " + pattern + value;
  return text + "}";
}

TEST(ConfigTest, Qwen3Embedding06B) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Embedding06B, "0.6b/config.json");
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // not hidden_size / heads (64)
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_EQ(c.vocab_size, 151669);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  // 151669*1024 embedding + 28 * (q 1024*2048 + k,v 2*1024*1024 + o 2048*1024 + q/k norm 2*128
  // + mlp 3*1024*3072 + 2 norms 2*1024) + final norm 1024; the hub lists this model as 0.6B (596M).
  EXPECT_EQ(c.parameter_count(), 595776512);
}

TEST(ConfigTest, Qwen3Embedding4B) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Embedding4B, "4b/config.json");
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.num_hidden_layers, 36);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 9728);
  EXPECT_EQ(c.vocab_size, 151665);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.parameter_count(), 4021774336);
}

TEST(ConfigTest, Qwen3Embedding8B) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Embedding8B, "8b/config.json");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 36);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 12288);
  EXPECT_EQ(c.vocab_size, 151665);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.parameter_count(), 7567295488);
}

TEST(ConfigTest, Transformers5RopeParametersAndDtype) {
  const ModelConfig c = ModelConfig::from_json_text(kTransformers5, "t5/config.json");
  EXPECT_EQ(c.architecture, "Qwen3Model");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.num_hidden_layers, 2);
}

TEST(ConfigTest, DefaultsFollowTransformers) {
  const ModelConfig c = ModelConfig::from_json_text(edited("num_key_value_heads", ""), "d/config.json");
  EXPECT_EQ(c.architecture, "Qwen3Model");  // from model_type alone
  EXPECT_EQ(c.num_key_value_heads, 4);      // = num_attention_heads
  EXPECT_EQ(c.head_dim, 16);                // = hidden_size / num_attention_heads
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  // 1000*64 + 2 * (64*64 + 2*64*64 + 64*64 + 2*16 + 3*64*128 + 2*64) + 64
  EXPECT_EQ(c.parameter_count(), 64000 + 2 * (4 * 4096 + 32 + 24576 + 128) + 64);
}

TEST(ConfigTest, IntegralFloatsAccepted) {
  const ModelConfig c = ModelConfig::from_json_text(edited("hidden_size", "64.0"), "f/config.json");
  EXPECT_EQ(c.hidden_size, 64);
  const std::string msg = error_of([] { ModelConfig::from_json_text(edited("hidden_size", "64.5"), "f/config.json"); });
  EXPECT_EQ(msg, "f/config.json: key 'hidden_size' must be an integer, got 64.5");
}

TEST(ConfigTest, MissingKeyNamesFileAndKey) {
  const std::string msg =
      error_of([] { ModelConfig::from_json_text(edited("intermediate_size", ""), "/models/x/config.json"); });
  EXPECT_EQ(msg, "/models/x/config.json: missing required key 'intermediate_size'");
}

TEST(ConfigTest, UnsupportedArchitecture) {
  std::string text = kQwen3Embedding06B;
  text.replace(text.find("Qwen3ForCausalLM"), 16, "Qwen3ForSequenceClassification");
  const std::string msg = error_of([&] { ModelConfig::from_json_text(text, "cls/config.json"); });
  EXPECT_NE(msg.find("cls/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported architecture Qwen3ForSequenceClassification (supported: Qwen3Model, "
                     "Qwen3ForCausalLM)"),
            std::string::npos)
      << msg;

  const std::string qwen2 =
      error_of([] { ModelConfig::from_json_text(edited("model_type", "\"qwen2\""), "q2/config.json"); });
  EXPECT_NE(qwen2.find("'model_type' is 'qwen2'"), std::string::npos) << qwen2;
  EXPECT_NE(error_of([] {
              ModelConfig::from_json_text(edited("model_type", ""), "n/config.json");
            }).find("neither 'architectures' nor 'model_type'"),
            std::string::npos);
}

TEST(ConfigTest, RopeScalingOtherThanDefaultRejected) {
  const std::string yarn = error_of([] {
    ModelConfig::from_json_text(edited("rope_scaling", R"({"rope_type": "yarn", "factor": 4.0})"), "y/config.json");
  });
  EXPECT_NE(yarn.find("y/config.json: key 'rope_scaling'"), std::string::npos) << yarn;
  EXPECT_NE(yarn.find("\"yarn\""), std::string::npos) << yarn;
  const std::string linear = error_of([] {
    ModelConfig::from_json_text(edited("rope_parameters", R"({"rope_type": "linear", "rope_theta": 1.0})"),
                                "l/config.json");
  });
  EXPECT_NE(linear.find("'rope_parameters'"), std::string::npos) << linear;
  EXPECT_DOUBLE_EQ(
      ModelConfig::from_json_text(edited("rope_scaling", R"({"type": "default"})"), "d/config.json").rope_theta,
      10000.0);
}

TEST(ConfigTest, Validation) {
  auto fails_with = [](const std::string& text, const std::string& expected) {
    const std::string msg = error_of([&] { ModelConfig::from_json_text(text, "v/config.json"); });
    EXPECT_NE(msg.find(expected), std::string::npos) << msg;
  };
  fails_with(edited("hidden_size", "0"), "key 'hidden_size' must be positive, got 0");
  fails_with(edited("num_hidden_layers", "-3"), "key 'num_hidden_layers' must be positive, got -3");
  fails_with(edited("num_hidden_layers", "1000000000"),
             "key 'num_hidden_layers' is 1000000000, beyond any plausible model (at most 1024)");
  fails_with(edited("head_dim", "99999999998"), "key 'head_dim' is 99999999998, beyond any plausible model");
  fails_with(edited("max_position_embeddings", "4611686018427387904"), "key 'max_position_embeddings' is");
  fails_with(edited("intermediate_size", "1000000000"), "key 'intermediate_size' is 1000000000");
  fails_with(edited("num_key_value_heads", "3"), "key 'num_key_value_heads' (3) must divide num_attention_heads (4)");
  fails_with(edited("head_dim", "15"), "key 'head_dim' must be even");
  fails_with(edited("rms_norm_eps", "0"), "key 'rms_norm_eps' must be a positive number");
  fails_with(edited("rope_theta", "\"big\""), "key 'rope_theta' must be a number");
  fails_with(edited("tie_word_embeddings", "1"), "key 'tie_word_embeddings' must be true or false");
  fails_with(edited("torch_dtype", "\"int8\""), "key 'torch_dtype' is 'int8'");
  fails_with(edited("hidden_act", "\"gelu\""), "key 'hidden_act' is 'gelu'");
  fails_with(edited("attention_bias", "true"), "key 'attention_bias' is true");
  fails_with(edited("use_sliding_window", "true"), "key 'use_sliding_window' is true");
  fails_with("{\"hidden_size\": ", "v/config.json: invalid JSON");
  fails_with("[1]", "v/config.json: expected a JSON object");
}

TEST(ConfigTest, FromFile) {
  const fs::path dir = fs::temp_directory_path() / ("ember_config_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path p = dir / "config.json";
  std::ofstream(p) << kQwen3Embedding4B;
  EXPECT_EQ(ModelConfig::from_file(p).hidden_size, 2560);
  std::ofstream(p) << R"({"model_type": "qwen3"})";
  const std::string msg = error_of([&] { ModelConfig::from_file(p); });
  EXPECT_EQ(msg, p.string() + ": missing required key 'hidden_size'");
  fs::remove_all(dir);
  EXPECT_NE(error_of([&] { ModelConfig::from_file(p); }).find("cannot read model config " + p.string()),
            std::string::npos);
}

}  // namespace

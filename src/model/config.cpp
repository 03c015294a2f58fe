#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "ember/error.h"
#include "ember/model_config.h"

namespace ember {
namespace {

using nlohmann::json;

constexpr const char* kSupportedArchitectures = "Qwen3Model, Qwen3ForCausalLM";

// Reads keys of one config.json, so that every error names the file and the key at fault.
class ConfigReader {
 public:
  ConfigReader(const json& root, const std::string& source) : root_(root), source_(source) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(source_ + ": key '" + key + "' " + what);
  }
  [[noreturn]] void fail(const std::string& what) const { throw Error(source_ + ": " + what); }

  bool has(const std::string& key) const { return root_.contains(key) && !root_.at(key).is_null(); }
  const json& at(const std::string& key) const { return root_.at(key); }

  int64_t integer(const std::string& key) const {
    if (!has(key)) fail("missing required key '" + key + "'");
    return integer_value(key, root_.at(key));
  }

  int64_t integer_or(const std::string& key, int64_t fallback) const {
    return has(key) ? integer_value(key, root_.at(key)) : fallback;
  }

  double number_or(const std::string& key, double fallback) const {
    return has(key) ? number_value(key, root_.at(key)) : fallback;
  }

  double number_value(const std::string& key, const json& v) const {
    if (!v.is_number()) fail(key, "must be a number, got " + v.dump());
    return v.get<double>();
  }

  bool boolean_or(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = root_.at(key);
    if (!v.is_boolean()) fail(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  }

  std::string string_or(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = root_.at(key);
    if (!v.is_string()) fail(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  }

 private:
  // Some writers emit integral values as floats (1024.0); accept those, reject 1.5.
  int64_t integer_value(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
    }
    fail(key, "must be an integer, got " + v.dump());
  }

  const json& root_;
  const std::string& source_;
};

std::string read_architecture(const ConfigReader& r) {
  const std::string model_type = r.string_or("model_type", "");
  if (!model_type.empty() && model_type != "qwen3")
    r.fail("model_type", "is '" + model_type + "'; ember supports Qwen3 models (model_type 'qwen3')");
  if (r.has("architectures")) {
    const json& archs = r.at("architectures");
    if (!archs.is_array() || archs.empty() || !archs.at(0).is_string())
      r.fail("architectures", "must be a non-empty list of strings, got " + archs.dump());
    const std::string arch = archs.at(0).get<std::string>();
    if (arch != "Qwen3Model" && arch != "Qwen3ForCausalLM")
      r.fail("architectures",
             "names unsupported architecture " + arch + " (supported: " + kSupportedArchitectures + ")");
    return arch;
  }
  if (model_type.empty()) r.fail("has neither 'architectures' nor 'model_type'; expected a Qwen3 config.json");
  return "Qwen3Model";
}

// The RoPE type of a rope_scaling / rope_parameters object; only plain RoPE is implemented.
void require_default_rope(const ConfigReader& r, const std::string& key, const json& rope) {
  if (!rope.is_object()) r.fail(key, "must be an object or null, got " + rope.dump());
  for (const char* type_key : {"rope_type", "type"}) {
    if (!rope.contains(type_key) || rope.at(type_key).is_null()) continue;
    const json& type = rope.at(type_key);
    if (!type.is_string() || type.get<std::string>() != "default")
      r.fail(key, "has " + std::string(type_key) + " " + type.dump() +
                      ", which ember does not support (it implements plain RoPE: null or \"default\")");
  }
}

// rope_theta sits at the top level (transformers 4) or inside "rope_parameters" (transformers 5,
// which prefers it there when both are present). Missing everywhere: transformers' default.
double read_rope_theta(const ConfigReader& r) {
  double theta = 10000.0;
  if (r.has("rope_scaling")) require_default_rope(r, "rope_scaling", r.at("rope_scaling"));
  if (r.has("rope_theta")) theta = r.number_or("rope_theta", theta);
  if (r.has("rope_parameters")) {
    const json& rope = r.at("rope_parameters");
    require_default_rope(r, "rope_parameters", rope);
    if (rope.contains("rope_theta") && !rope.at("rope_theta").is_null())
      theta = r.number_value("rope_parameters.rope_theta", rope.at("rope_theta"));
  }
  return theta;
}

// Features of the Qwen3 family that would change the forward pass but are not implemented;
// loading such a model silently would give wrong embeddings.
void reject_unsupported_features(const ConfigReader& r) {
  const std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", "is '" + act + "'; ember implements only 'silu'");
  if (r.boolean_or("attention_bias", false))
    r.fail("attention_bias", "is true; ember implements Qwen3 attention without biases");
  if (r.boolean_or("use_sliding_window", false))
    r.fail("use_sliding_window", "is true; ember implements full attention only");
}

void validate(const ModelConfig& c, const ConfigReader& r) {
  // Upper bounds far beyond any released model, so that a corrupt or hostile config fails here,
  // naming the field, instead of as a failed allocation of 10^9 layers later.
  auto in_range = [&](const char* key, int64_t v, int64_t most) {
    if (v <= 0) r.fail(key, "must be positive, got " + std::to_string(v));
    if (v > most) {
      r.fail(key, "is " + std::to_string(v) + ", beyond any plausible model (at most " + std::to_string(most) + ")");
    }
  };
  in_range("hidden_size", c.hidden_size, int64_t{1} << 16);
  in_range("num_hidden_layers", c.num_hidden_layers, 1024);
  in_range("num_attention_heads", c.num_attention_heads, 1024);
  in_range("num_key_value_heads", c.num_key_value_heads, 1024);
  in_range("head_dim", c.head_dim, 1024);
  in_range("intermediate_size", c.intermediate_size, int64_t{1} << 20);
  in_range("vocab_size", c.vocab_size, int64_t{1} << 24);
  in_range("max_position_embeddings", c.max_position_embeddings, int64_t{1} << 24);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) + ") must divide num_attention_heads (" +
                                      std::to_string(c.num_attention_heads) + ")");
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for RoPE, got " + std::to_string(c.head_dim));
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    r.fail("rms_norm_eps", "must be a positive number, got " + std::to_string(c.rms_norm_eps));
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    r.fail("rope_theta", "must be a positive number, got " + std::to_string(c.rope_theta));
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16")
    r.fail(r.has("dtype") ? "dtype" : "torch_dtype",
           "is '" + c.torch_dtype + "'; expected float32, float16 or bfloat16");
}

}  // namespace

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& source_name) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(source_name + ": invalid JSON: " + e.what());
  }
  if (!root.is_object()) throw Error(source_name + ": expected a JSON object at the top level");
  const ConfigReader r(root, source_name);

  ModelConfig c;
  c.architecture = read_architecture(r);
  reject_unsupported_features(r);
  c.hidden_size = r.integer("hidden_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer_or("num_key_value_heads", c.num_attention_heads);
  c.intermediate_size = r.integer("intermediate_size");
  c.vocab_size = r.integer("vocab_size");
  // Defaults below are transformers' Qwen3Config defaults, so a sparse file means what it means there.
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 32768);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.rope_theta = read_rope_theta(r);
  // transformers 5 writes "dtype"; older versions "torch_dtype".
  c.torch_dtype = r.string_or("dtype", r.string_or("torch_dtype", "bfloat16"));
  if (c.num_attention_heads > 0)
    c.head_dim = r.integer_or("head_dim", c.hidden_size / c.num_attention_heads);
  else
    c.head_dim = r.integer_or("head_dim", 0);
  validate(c, r);
  return c;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  std::ifstream in(config_json, std::ios::binary);
  if (!in) throw Error("cannot read model config " + config_json.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("error reading model config " + config_json.string());
  return from_json_text(text.str(), config_json.string());
}

int64_t ModelConfig::parameter_count() const {
  const int64_t q_out = num_attention_heads * head_dim;
  const int64_t kv_out = num_key_value_heads * head_dim;
  const int64_t attention = hidden_size * q_out             // q_proj
                            + 2 * hidden_size * kv_out      // k_proj, v_proj
                            + q_out * hidden_size           // o_proj
                            + 2 * head_dim;                 // q_norm, k_norm
  const int64_t mlp = 3 * hidden_size * intermediate_size;  // gate, up, down
  const int64_t norms = 2 * hidden_size;                    // input and post-attention RMSNorm
  return vocab_size * hidden_size + num_hidden_layers * (attention + mlp + norms) + hidden_size;
}

}  // namespace ember

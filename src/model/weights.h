#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace ember {

// All tensors of a model folder: model.safetensors, or shards listed in
// model.safetensors.index.json. Names are looked up with or without the "model." prefix, so
// checkpoints saved from Qwen3Model ("layers.0...") and from Qwen3ForCausalLM
// ("model.layers.0...") both load.
class WeightStore {
 public:
  static WeightStore open(const std::filesystem::path& model_dir);

  bool contains(const std::string& name) const;
  // The tensor named `name` (canonical, without "model."), checked against `shape`.
  // Errors name the file and the tensor: missing, wrong shape, unsupported dtype.
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) const;
  size_t file_count() const { return files_.size(); }
  uint64_t total_bytes() const;  // bytes of tensor data across all files

 private:
  const SafetensorsFile* find(const std::string& name, std::string* stored_name) const;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> index_;  // stored tensor name -> file
};

}  // namespace ember

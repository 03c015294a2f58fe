#include "model/weights.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "ember/error.h"

namespace fs = std::filesystem;

namespace ember {
namespace {

constexpr const char* kPrefix = "model.";

nlohmann::json read_index(const fs::path& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw Error("cannot read " + index_path.string());
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(index_path.string() + ": invalid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object())
    throw Error(index_path.string() + ": missing the 'weight_map' object");
  return index;
}

// Shard file names come from a downloaded file; refuse anything that would leave the folder.
fs::path shard_path(const fs::path& dir, const fs::path& index_path, const std::string& tensor, const nlohmann::json& v) {
  if (!v.is_string())
    throw Error(index_path.string() + ": weight_map entry for '" + tensor + "' must be a file name, got " + v.dump());
  const fs::path name = v.get<std::string>();
  if (name.empty() || name.is_absolute() || name.has_parent_path())
    throw Error(index_path.string() + ": weight_map entry for '" + tensor + "' is '" + name.string() +
                "', expected a file name inside the model folder");
  return dir / name;
}

}  // namespace

WeightStore WeightStore::open(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir)) throw Error("model folder " + model_dir.string() + " does not exist");
  WeightStore ws;
  const fs::path index_path = model_dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    const nlohmann::json index = read_index(index_path);
    std::map<fs::path, size_t> opened;
    for (const auto& [tensor, value] : index.at("weight_map").items()) {
      const fs::path shard = shard_path(model_dir, index_path, tensor, value);
      auto it = opened.find(shard);
      if (it == opened.end()) {
        if (!fs::exists(shard))
          throw Error("shard " + shard.filename().string() + " listed in " + index_path.string() +
                      " is missing from " + model_dir.string() + " (incomplete download?)");
        ws.files_.push_back(SafetensorsFile::open(shard));
        it = opened.emplace(shard, ws.files_.size() - 1).first;
      }
      if (!ws.files_[it->second].contains(tensor))
        throw Error(index_path.string() + " places tensor '" + tensor + "' in " + shard.string() +
                    ", but that file does not contain it");
      ws.index_[tensor] = it->second;
    }
    if (ws.files_.empty()) throw Error(index_path.string() + ": 'weight_map' lists no tensors");
    return ws;
  }

  fs::path single = model_dir / "model.safetensors";
  if (!fs::exists(single)) {
    std::vector<fs::path> found;
    for (const fs::directory_entry& e : fs::directory_iterator(model_dir))
      if (e.path().extension() == ".safetensors" && e.is_regular_file()) found.push_back(e.path());
    if (found.empty())
      throw Error("no model.safetensors or model.safetensors.index.json in " + model_dir.string());
    if (found.size() > 1)
      throw Error(model_dir.string() + " has " + std::to_string(found.size()) +
                  " .safetensors files but no model.safetensors.index.json saying which tensors each holds");
    single = found.front();
  }
  ws.files_.push_back(SafetensorsFile::open(single));
  for (const std::string& name : ws.files_.front().names()) ws.index_[name] = 0;
  return ws;
}

const SafetensorsFile* WeightStore::find(const std::string& name, std::string* stored_name) const {
  for (const std::string& candidate : {name, kPrefix + name}) {
    const auto it = index_.find(candidate);
    if (it == index_.end()) continue;
    if (stored_name != nullptr) *stored_name = candidate;
    return &files_[it->second];
  }
  return nullptr;
}

bool WeightStore::contains(const std::string& name) const { return find(name, nullptr) != nullptr; }

Tensor WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  std::string stored;
  const SafetensorsFile* file = find(name, &stored);
  if (file == nullptr) {
    const std::string dir = files_.empty() ? std::string("the model folder") : files_.front().path().parent_path().string();
    throw Error("tensor '" + name + "' not found in " + dir + " (looked for '" + name + "' and '" + kPrefix + name +
                "')");
  }
  const SafetensorsFile::Entry& e = file->entry(stored);
  if (e.shape != shape)
    throw Error("tensor '" + stored + "' in " + file->path().string() + " has shape " + shape_string(e.shape) +
                ", expected " + shape_string(shape));
  return file->tensor(stored);
}

uint64_t WeightStore::total_bytes() const {
  uint64_t total = 0;
  for (const SafetensorsFile& f : files_)
    for (const std::string& name : f.names()) total += f.entry(name).end - f.entry(name).begin;
  return total;
}

}  // namespace ember

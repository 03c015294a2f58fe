#include "model/model_dir.h"

#include <cstdlib>
#include <fstream>
#include <vector>

#include "ember/error.h"

namespace fs = std::filesystem;

namespace ember {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The hub cache folder, resolved the way huggingface_hub does it.
fs::path hub_cache_dir(std::string* how) {
  for (const char* var : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    if (const std::string v = env(var); !v.empty()) {
      *how = std::string("$") + var;
      return v;
    }
  }
  if (const std::string v = env("HF_HOME"); !v.empty()) {
    *how = "$HF_HOME/hub";
    return fs::path(v) / "hub";
  }
  if (const std::string v = env("XDG_CACHE_HOME"); !v.empty()) {
    *how = "$XDG_CACHE_HOME/huggingface/hub";
    return fs::path(v) / "huggingface" / "hub";
  }
  *how = "$HOME/.cache/huggingface/hub";
  return fs::path(env("HOME")) / ".cache" / "huggingface" / "hub";
}

// "Org/Name": one slash, two plain non-empty parts. Paths like "./x/y" or "/a/b" are not hub ids.
bool looks_like_hub_id(const std::string& s) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == s.size()) return false;
  if (s.find('/', slash + 1) != std::string::npos) return false;
  const std::string org = s.substr(0, slash), name = s.substr(slash + 1);
  return org != "." && org != ".." && org != "~" && name != "." && name != "..";
}

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws));
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

fs::path require_config(const fs::path& dir, const std::string& what) {
  if (!fs::exists(dir / "config.json"))
    throw Error(what + " " + dir.string() +
                " has no config.json; a model folder needs config.json, tokenizer.json and the .safetensors weights");
  return dir;
}

fs::path find_in_hub_cache(const std::string& id) {
  std::string how;
  const fs::path cache = hub_cache_dir(&how);
  const std::string org = id.substr(0, id.find('/')), name = id.substr(id.find('/') + 1);
  const fs::path repo = cache / ("models--" + org + "--" + name);
  const std::string download = "; download it with `huggingface-cli download " + id + "`";
  if (!fs::is_directory(repo))
    throw Error("model '" + id + "' is neither a folder nor in the Hugging Face cache (looked for " + repo.string() +
                ", cache from " + how + ")" + download);

  const fs::path snapshots = repo / "snapshots";
  const fs::path ref = repo / "refs" / "main";
  if (fs::exists(ref)) {
    std::ifstream in(ref);
    std::string revision;
    std::getline(in, revision);
    revision = trim(revision);
    if (revision.empty()) throw Error("model '" + id + "': " + ref.string() + " is empty" + download);
    const fs::path snapshot = snapshots / revision;
    if (!fs::is_directory(snapshot))
      throw Error("model '" + id + "': " + ref.string() + " names revision " + revision + " but " + snapshot.string() +
                  " does not exist" + download);
    return require_config(snapshot, "cached snapshot");
  }

  std::vector<fs::path> found;
  if (fs::is_directory(snapshots))
    for (const fs::directory_entry& e : fs::directory_iterator(snapshots))
      if (e.is_directory()) found.push_back(e.path());
  if (found.size() == 1) return require_config(found.front(), "cached snapshot");
  if (found.empty())
    throw Error("model '" + id + "': " + repo.string() + " has no snapshots" + download);
  throw Error("model '" + id + "': " + repo.string() + " has " + std::to_string(found.size()) +
              " snapshots and no refs/main to choose one; pass the snapshot folder itself with --model");
}

}  // namespace

fs::path resolve_model_dir(const std::string& model) {
  if (model.empty()) throw Error("no model given; pass a model folder or a hub id like Qwen/Qwen3-Embedding-0.6B");
  const fs::path path(model);
  if (fs::is_directory(path)) return require_config(path, "model folder");
  if (fs::exists(path)) throw Error("model " + model + " is a file; pass the folder that holds config.json");
  if (looks_like_hub_id(model)) return find_in_hub_cache(model);
  throw Error("model folder " + model + " does not exist");
}

}  // namespace ember

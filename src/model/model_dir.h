#pragma once
#include <filesystem>
#include <string>

namespace ember {

// Turns what the user passed to --model into a folder: an existing folder as is, or a hub id
// ("Qwen/Qwen3-Embedding-4B") found in the local Hugging Face cache: $HF_HUB_CACHE, else
// $HF_HOME/hub, else ~/.cache/huggingface/hub; models--Org--Name/refs/main -> snapshots/<rev>/.
// Errors say where it looked.
std::filesystem::path resolve_model_dir(const std::string& model);

}  // namespace ember

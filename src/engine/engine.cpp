#include "ember/engine.h"

#include <string>

#include "backend/backend.h"
#include "ember/error.h"
#include "ember/input_policy.h"
#include "model/model_dir.h"
#include "model/pooling.h"
#include "model/qwen3.h"
#include "model/weights.h"
#ifdef EMBER_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace ember {

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::Cpu;
  if (name == "cuda") return Device::Cuda;
  throw Error("unknown device '" + name + "' (expected cpu or cuda)");
}

Precision parse_precision(const std::string& name) {
  if (name == "exact") return Precision::Exact;
  if (name == "fast") return Precision::Fast;
  throw Error("unknown precision '" + name + "' (expected exact or fast)");
}

void apply_dtype(const std::string& name, EngineOptions& options) {
  if (name == "float32") {
    options.precision = Precision::Exact;
  } else if (name == "bfloat16") {
    options.precision = Precision::Fast;
    options.half_type = HalfType::BFloat16;
  } else if (name == "float16") {
    options.precision = Precision::Fast;
    options.half_type = HalfType::Float16;
  } else {
    throw Error("unknown dtype '" + name + "' (expected float32, bfloat16 or float16)");
  }
}

std::vector<float> finish_embedding(std::span<const float> pooled, int dimensions, bool normalize) {
  return finish_embedding(pooled.data(), static_cast<int64_t>(pooled.size()), dimensions, normalize);
}

namespace {

std::unique_ptr<Backend> make_backend(const EngineOptions& options) {
  switch (options.device) {
    case Device::Cpu:
      if (options.precision == Precision::Fast && options.half_type == HalfType::Float16) {
        throw Error("float16 runs on CUDA only; on the CPU use bfloat16 (fast) or float32 (exact)");
      }
      return make_cpu_backend(options.precision, options.threads);
    case Device::Cuda:
#ifdef EMBER_HAVE_CUDA
    {
      CudaBackendOptions cuda_options;
      cuda_options.tune_gemms = !options.deterministic;
      return make_cuda_backend(options.precision, options.half_type, 0, cuda_options);
    }
#else
      throw Error("this ember was built without CUDA");
#endif
  }
  throw Error("unknown device");
}

int64_t checked_batch_tokens(int64_t tokens) {
  if (tokens < 1) throw Error("--max-batch-tokens must be at least 1, got " + std::to_string(tokens));
  return tokens;
}

class LoadedEngine final : public Engine {
 public:
  explicit LoadedEngine(const EngineOptions& options)
      : options_(options),
        dir_(resolve_model_dir(options.model)),
        config_(ModelConfig::from_file(dir_ / "config.json")),
        tokenizer_(Tokenizer::from_dir(dir_)),
        weights_(WeightStore::open(dir_)),
        backend_(make_backend(options)),
        model_(config_, weights_, *backend_, checked_batch_tokens(options.max_batch_tokens)) {}

  const ModelConfig& config() const override { return config_; }
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  const std::filesystem::path& model_dir() const override { return dir_; }
  int64_t device_memory_bytes() const override { return backend_->device_memory_bytes(); }
  std::string profile_report() override { return backend_->profile_report(); }

  std::vector<int32_t> tokenize(const std::string& text, const EmbedOptions& options) const override {
    InputPolicy policy;
    policy.max_tokens = config_.max_position_embeddings;
    policy.vocab_size = config_.vocab_size;
    policy.truncate = options.truncate;
    policy.instruction = options.instruction;
    policy.truncate_hint = "pass --truncate";
    return text_input(tokenizer_, text, policy);
  }

  std::vector<std::vector<float>> embed_tokens(const std::vector<std::vector<int32_t>>& sequences,
                                               int dimensions) override {
    check_dimensions(dimensions, config_.hidden_size);
    std::vector<std::vector<float>> out = pooled_states(sequences);
    for (auto& v : out) v = finish_embedding(v.data(), config_.hidden_size, dimensions);
    return out;
  }

  std::vector<std::vector<float>> pooled_states(const std::vector<std::vector<int32_t>>& sequences) override {
    for (const auto& seq : sequences) {
      if (seq.empty()) throw Error("cannot embed an empty token sequence");
      if (seq.size() > static_cast<size_t>(config_.max_position_embeddings)) {
        throw Error("a sequence of " + std::to_string(seq.size()) + " tokens exceeds the model's maximum of " +
                    std::to_string(config_.max_position_embeddings));
      }
      check_ids(seq);
    }
    const auto hidden = static_cast<size_t>(config_.hidden_size);
    std::vector<std::vector<float>> out(sequences.size());
    size_t begin = 0;
    while (begin < sequences.size()) {
      // Greedy packing in input order; a sequence longer than the budget runs alone.
      std::vector<const std::vector<int32_t>*> group{&sequences[begin]};
      int64_t tokens = static_cast<int64_t>(sequences[begin].size());
      size_t end = begin + 1;
      while (end < sequences.size() &&
             tokens + static_cast<int64_t>(sequences[end].size()) <= options_.max_batch_tokens) {
        tokens += static_cast<int64_t>(sequences[end].size());
        group.push_back(&sequences[end++]);
      }
      const std::vector<float> pooled = model_.forward(PackedBatch::pack(group));
      for (size_t i = 0; i < group.size(); ++i) {
        out[begin + i].assign(pooled.begin() + static_cast<std::ptrdiff_t>(i * hidden),
                              pooled.begin() + static_cast<std::ptrdiff_t>((i + 1) * hidden));
      }
      begin = end;
    }
    return out;
  }

  std::vector<std::vector<float>> embed_texts(const std::vector<std::string>& texts,
                                              const EmbedOptions& options) override {
    check_dimensions(options.dimensions, config_.hidden_size);
    std::vector<std::vector<int32_t>> sequences;
    sequences.reserve(texts.size());
    for (const auto& text : texts) sequences.push_back(tokenize(text, options));
    return embed_tokens(sequences, options.dimensions);
  }

 private:
  // The 4B/8B checkpoints have 151665 embedding rows while the tokenizer knows ids up to 151668.
  void check_ids(const std::vector<int32_t>& ids) const {
    for (int32_t id : ids) {
      if (id < 0 || id >= config_.vocab_size) {
        throw Error("token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                    std::to_string(config_.vocab_size) + " entries");
      }
    }
  }

  EngineOptions options_;
  std::filesystem::path dir_;
  ModelConfig config_;
  Tokenizer tokenizer_;
  WeightStore weights_;
  std::unique_ptr<Backend> backend_;
  Qwen3Model model_;
};

}  // namespace

std::unique_ptr<Engine> Engine::open(const EngineOptions& options) { return std::make_unique<LoadedEngine>(options); }

}  // namespace ember

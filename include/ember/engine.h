#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ember/model_config.h"
#include "ember/tokenizer.h"

namespace ember {

enum class Device { Cpu, Cuda };

// exact: fp32 activations (matches HF transformers in fp32).
// fast:  bf16 activations with fp32 accumulation, as on a GPU.
enum class Precision { Exact, Fast };

// The 16-bit type of weights and activations in fast precision. fp16 is CUDA only.
enum class HalfType { BFloat16, Float16 };

Device parse_device(const std::string& name);        // "cpu" | "cuda"
Precision parse_precision(const std::string& name);  // "exact" | "fast"

struct EngineOptions {
  std::string model;  // a model folder, or a hub id found in the local Hugging Face cache
  Device device = Device::Cpu;
  Precision precision = Precision::Exact;
  HalfType half_type = HalfType::BFloat16;  // used when precision is Fast
  int threads = 0;                          // 0: all cores
  int64_t max_batch_tokens = 8192;          // tokens packed into one forward pass
  // CUDA: take cuBLASLt's heuristic choice of GEMM algorithm instead of timing its candidates.
  // Timing may keep a different algorithm in each process (another summation order), so replicas
  // would agree only to bf16 rounding; deterministic ones give the same bits everywhere.
  bool deterministic = false;
};

// Sets precision and half_type from a dtype name, as servers spell it: "float32" (exact),
// "bfloat16" (fast, bf16) or "float16" (fast, fp16).
void apply_dtype(const std::string& name, EngineOptions& options);

// An embedding from a pooled hidden state: the first `dimensions` values (Matryoshka truncation;
// 0 keeps all), L2-normalised unless `normalize` is false. Throws unless 32 <= dimensions <= size.
std::vector<float> finish_embedding(std::span<const float> pooled, int dimensions, bool normalize = true);

struct EmbedOptions {
  int dimensions = 0;       // 0: full hidden size; else Matryoshka, 32 <= d <= hidden
  std::string instruction;  // non-empty: "Instruct: {instruction}\nQuery:{text}"
  bool truncate = false;    // over-long inputs: cut to the model's maximum instead of an error
};

// A loaded model: tokenizer + weights on a backend. Thread-compatible (one caller at a time).
class Engine {
 public:
  static std::unique_ptr<Engine> open(const EngineOptions& options);
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual const std::filesystem::path& model_dir() const = 0;
  // Accelerator memory held by the engine (weights + workspaces); 0 on the CPU.
  virtual int64_t device_memory_bytes() const = 0;
  // Per-op timings collected so far when profiling was requested (EMBER_CUDA_PROFILE=1); else "".
  virtual std::string profile_report() = 0;

  // The model-input ids of a text (instruction applied), checked against the model's limits.
  virtual std::vector<int32_t> tokenize(const std::string& text, const EmbedOptions& options) const = 0;

  // L2-normalised embeddings, one per sequence, in input order. Sequences are packed into
  // batches of at most max_batch_tokens without padding.
  virtual std::vector<std::vector<float>> embed_tokens(const std::vector<std::vector<int32_t>>& sequences,
                                                       int dimensions = 0) = 0;
  // The pooled (last-token) hidden states, full size and not normalised, one per sequence in input
  // order; finish_embedding() turns one into an embedding. Same packing as embed_tokens.
  virtual std::vector<std::vector<float>> pooled_states(const std::vector<std::vector<int32_t>>& sequences) = 0;
  virtual std::vector<std::vector<float>> embed_texts(const std::vector<std::string>& texts,
                                                      const EmbedOptions& options) = 0;
};

}  // namespace ember

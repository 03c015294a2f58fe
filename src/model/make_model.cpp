#include "model/make_model.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "ember/error.h"

// Weight formula (tests/golden/hf_golden.py is its bit-exact Python twin; all math is uint64):
//   stream = mix(fnv1a64(canonical name) ^ mix(seed)),  h = mix(stream + index * GOLDEN)
//   k = (h >> 56) - 128                                     in [-128, 127]
//   norm weights:  1 + floor(k / 16) / 128                  in [0.9375, 1.0546875]
//   other weights: k * 2^-(7 + e), e = (bit_width(fan_in) - 1) / 2, about 0.58 / sqrt(fan_in) rms
// Every value has at most 8 significant bits and a small exponent, so it is exact in BF16, F16 and
// F32: the stored dtype never changes the model, and f32 references see the very same weights.

namespace ember {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : s) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

// splitmix64's finaliser, with its increment folded in.
inline uint64_t mix(uint64_t x) {
  x += kGolden;
  uint64_t z = x;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t stream_of(const std::string& name, uint64_t seed) { return mix(fnv1a64(name) ^ mix(seed)); }

float weight_scale(int64_t fan_in) {
  const int e = (std::bit_width(static_cast<uint64_t>(std::max<int64_t>(fan_in, 1))) - 1) / 2;
  return std::ldexp(1.0f, -(7 + e));
}

inline float weight_value(uint64_t stream, uint64_t index, float scale, bool is_norm) {
  const int k = static_cast<int>(mix(stream + index * kGolden) >> 56) - 128;
  return is_norm ? 1.0f + static_cast<float>(k >> 4) / 128.0f : static_cast<float>(k) * scale;
}

// Elements [first, first + count) of one tensor, written as `dtype` into dst.
void generate(const GeneratedTensor& t, uint64_t stream, uint64_t first, int64_t count, DType dtype, void* dst) {
  const float scale = weight_scale(t.fan_in);
  const bool is_norm = t.is_norm;
  // One core is left to the thread writing the previous chunk; spinning OpenMP workers on every
  // core would starve it.
  const int threads = std::max(1, omp_get_max_threads() - 1);
  switch (dtype) {
    case DType::F32: {
      auto* out = static_cast<float*>(dst);
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t i = 0; i < count; ++i) out[i] = weight_value(stream, first + i, scale, is_norm);
      break;
    }
    case DType::BF16: {  // exact values: truncating the f32 bits is the correct conversion
      auto* out = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t i = 0; i < count; ++i) {
        const float v = weight_value(stream, first + i, scale, is_norm);
        out[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(v) >> 16);
      }
      break;
    }
    case DType::F16: {
      auto* out = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t i = 0; i < count; ++i) out[i] = f32_to_f16(weight_value(stream, first + i, scale, is_norm));
      break;
    }
    default:
      throw Error(std::string("make-model: weights cannot be stored as ") + dtype_name(dtype) +
                  "; use bfloat16, float16 or float32");
  }
}

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: throw Error(std::string("make-model: unsupported weight dtype ") + dtype_name(dtype));
  }
}

void check_config(const ModelConfig& c) {
  const std::pair<const char*, int64_t> sizes[] = {
      {"hidden_size", c.hidden_size},           {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},                 {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size},             {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [key, value] : sizes)
    if (value <= 0) throw Error("make-model: config " + std::string(key) + " must be positive, got " + std::to_string(value));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw Error("make-model: num_attention_heads (" + std::to_string(c.num_attention_heads) +
                ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
}

// config.json as transformers writes it for the published Qwen3-Embedding checkpoints (keys sorted).
nlohmann::json config_json(const ModelConfig& c, const MakeModelOptions& o) {
  nlohmann::json j;
  j["architectures"] = {o.name_prefix ? "Qwen3ForCausalLM" : "Qwen3Model"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = 151643;
  j["eos_token_id"] = 151643;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["max_window_layers"] = c.num_hidden_layers;
  j["model_type"] = "qwen3";
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = c.rope_theta;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = torch_dtype_name(o.dtype);
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = c.vocab_size;
  return j;
}

std::string stored_name(const std::string& canonical, bool prefix) {
  return prefix && canonical != "lm_head.weight" ? "model." + canonical : canonical;
}

uint64_t tensor_bytes(const GeneratedTensor& t, DType dtype) {
  uint64_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
  return n * dtype_size(dtype);
}

// Consecutive runs of tensors, one per shard, split near equal byte counts; no shard is empty.
std::vector<std::vector<size_t>> split_shards(const std::vector<GeneratedTensor>& tensors, DType dtype, int shards) {
  if (shards < 1 || static_cast<size_t>(shards) > tensors.size())
    throw Error("make-model: --shards must be between 1 and " + std::to_string(tensors.size()) +
                " (the number of tensors), got " + std::to_string(shards));
  uint64_t total = 0;
  for (const auto& t : tensors) total += tensor_bytes(t, dtype);
  std::vector<std::vector<size_t>> out(1);
  uint64_t before = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t s = out.size() - 1;
    const bool must_open = tensors.size() - i == static_cast<size_t>(shards - 1) - s;  // one tensor per shard left
    const bool past_share = static_cast<long double>(before) * shards >= static_cast<long double>(total) * (s + 1);
    if (!out.back().empty() && static_cast<int>(s) < shards - 1 && (past_share || must_open)) out.emplace_back();
    out.back().push_back(i);
    before += tensor_bytes(tensors[i], dtype);
  }
  return out;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

void write_all(std::FILE* f, const void* data, size_t n, const std::filesystem::path& path) {
  if (n != 0 && std::fwrite(data, 1, n, f) != n)
    throw Error("make-model: cannot write " + path.string() + ": " + std::strerror(errno) + " (disk full?)");
}

// Streams one .safetensors file: the header first, then each tensor generated chunk by chunk.
// Generation (OpenMP) of chunk k+1 overlaps the write of chunk k, and memory stays at two chunks.
void write_shard(const std::filesystem::path& path, const std::vector<GeneratedTensor>& tensors,
                 const std::vector<size_t>& members, const MakeModelOptions& o) {
  nlohmann::json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (size_t i : members) {
    const uint64_t n = tensor_bytes(tensors[i], o.dtype);
    header[stored_name(tensors[i].name, o.name_prefix)] = {
        {"dtype", dtype_name(o.dtype)}, {"shape", tensors[i].shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned, as safetensors does
  const uint64_t header_size = text.size();

  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "wb"));
  if (!file) throw Error("make-model: cannot create " + path.string() + ": " + std::strerror(errno));
  unsigned char size_le[8];
  for (int b = 0; b < 8; ++b) size_le[b] = static_cast<unsigned char>(header_size >> (8 * b));
  write_all(file.get(), size_le, 8, path);
  write_all(file.get(), text.data(), text.size(), path);

  constexpr int64_t kChunk = int64_t{1} << 24;  // elements
  const size_t elem = dtype_size(o.dtype);
  std::vector<char> buffers[2];
  int flip = 0;
  std::future<void> pending;  // destroyed (joined) before `file` is closed
  for (size_t i : members) {
    const GeneratedTensor& t = tensors[i];
    const uint64_t stream = stream_of(t.name, o.seed);
    const int64_t numel = static_cast<int64_t>(tensor_bytes(t, o.dtype) / elem);
    for (int64_t first = 0; first < numel; first += kChunk) {
      const int64_t count = std::min(kChunk, numel - first);
      std::vector<char>& buf = buffers[flip];
      buf.resize(static_cast<size_t>(count) * elem);
      generate(t, stream, static_cast<uint64_t>(first), count, o.dtype, buf.data());
      if (pending.valid()) pending.get();
      pending = std::async(std::launch::async, [&file, &path, data = buf.data(), n = buf.size()] {
        write_all(file.get(), data, n, path);
      });
      flip ^= 1;
    }
  }
  if (pending.valid()) pending.get();
  if (std::fflush(file.get()) != 0)
    throw Error("make-model: cannot write " + path.string() + ": " + std::strerror(errno) + " (disk full?)");
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw Error("make-model: cannot write " + path.string());
}

std::string shard_file_name(int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k, n);
  return buf;
}

void write_weights(const ModelConfig& config, const MakeModelOptions& o, const std::filesystem::path& dir) {
  const std::vector<GeneratedTensor> tensors = generated_tensors(config);
  const auto shards = split_shards(tensors, o.dtype, o.shards);
  if (shards.size() == 1) {
    write_shard(dir / "model.safetensors", tensors, shards[0], o);
    return;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shard_file_name(static_cast<int>(s) + 1, static_cast<int>(shards.size()));
    write_shard(dir / file, tensors, shards[s], o);
    for (size_t i : shards[s]) {
      weight_map[stored_name(tensors[i].name, o.name_prefix)] = file;
      total += tensor_bytes(tensors[i], o.dtype);
    }
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

ModelConfig qwen3(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t head_dim,
                  int64_t inter, int64_t vocab, bool tied, int64_t max_pos) {
  ModelConfig c;
  c.architecture = "Qwen3Model";
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.intermediate_size = inter;
  c.vocab_size = vocab;
  c.tie_word_embeddings = tied;
  c.max_position_embeddings = max_pos;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.torch_dtype = "bfloat16";
  return c;
}

}  // namespace

std::vector<std::string> preset_names() {
  return {"tiny", "qwen3-embedding-0.6b", "qwen3-embedding-4b", "qwen3-embedding-8b"};
}

ModelConfig preset_config(const std::string& preset) {
  std::string p = preset;
  std::transform(p.begin(), p.end(), p.begin(), [](unsigned char ch) { return std::tolower(ch); });
  // Shapes of the published Qwen3-Embedding checkpoints; "tiny" is a fast stand-in for demos and tests.
  if (p == "tiny") return qwen3(64, 4, 4, 2, 32, 128, 151669, true, 32768);
  if (p == "qwen3-embedding-0.6b") return qwen3(1024, 28, 16, 8, 128, 3072, 151669, true, 32768);
  if (p == "qwen3-embedding-4b") return qwen3(2560, 36, 32, 8, 128, 9728, 151665, true, 40960);
  if (p == "qwen3-embedding-8b") return qwen3(4096, 36, 32, 8, 128, 12288, 151665, false, 40960);
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown model preset '" + preset + "'; known presets: " + known);
}

std::vector<GeneratedTensor> generated_tensors(const ModelConfig& c) {
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q = c.num_attention_heads * D, kv = c.num_key_value_heads * D;
  std::vector<GeneratedTensor> out;
  out.push_back({"embed_tokens.weight", {V, H}, 1, false});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {H}, 1, true});
    out.push_back({p + "self_attn.q_proj.weight", {q, H}, H, false});
    out.push_back({p + "self_attn.k_proj.weight", {kv, H}, H, false});
    out.push_back({p + "self_attn.v_proj.weight", {kv, H}, H, false});
    out.push_back({p + "self_attn.o_proj.weight", {H, q}, q, false});
    out.push_back({p + "self_attn.q_norm.weight", {D}, 1, true});
    out.push_back({p + "self_attn.k_norm.weight", {D}, 1, true});
    out.push_back({p + "post_attention_layernorm.weight", {H}, 1, true});
    out.push_back({p + "mlp.gate_proj.weight", {I, H}, H, false});
    out.push_back({p + "mlp.up_proj.weight", {I, H}, H, false});
    out.push_back({p + "mlp.down_proj.weight", {H, I}, I, false});
  }
  out.push_back({"norm.weight", {H}, 1, true});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {V, H}, 1, false});
  return out;
}

float generated_weight(const std::string& name, uint64_t index, uint64_t seed, int64_t fan_in, bool is_norm) {
  return weight_value(stream_of(name, seed), index, weight_scale(fan_in), is_norm);
}

void make_model(const ModelConfig& config, const MakeModelOptions& options, const std::filesystem::path& out_arg) {
  namespace fs = std::filesystem;
  // Every option is checked before anything touches the disk.
  check_config(config);
  torch_dtype_name(options.dtype);
  split_shards(generated_tensors(config), options.dtype, options.shards);

  const fs::path out = fs::absolute(out_arg).lexically_normal();
  std::error_code ec;
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
    throw Error("make-model: " + out.string() + " already exists; choose a new folder or delete it first");
  const fs::path tok_dir = options.tokenizer_dir;
  if (tok_dir.empty()) throw Error("make-model: no tokenizer folder given (it must hold tokenizer.json and tokenizer_config.json)");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    if (!fs::is_regular_file(tok_dir / f))
      throw Error("make-model: tokenizer file " + (tok_dir / f).string() + " not found");

  // Everything goes into a hidden sibling folder that is renamed into place at the end, so an
  // interrupted run never leaves a folder that looks like a complete model.
  const fs::path parent = out.parent_path();
  fs::create_directories(parent, ec);
  if (ec) throw Error("make-model: cannot create " + parent.string() + ": " + ec.message());
  const fs::path tmp = parent / ("." + out.filename().string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec) || ec) throw Error("make-model: cannot create " + tmp.string() + ": " + ec.message());
  try {
    write_text(tmp / "config.json", config_json(config, options).dump(2) + "\n");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      fs::copy_file(tok_dir / f, tmp / f, ec);
      if (ec) throw Error("make-model: cannot copy " + (tok_dir / f).string() + ": " + ec.message());
    }
    write_weights(config, options, tmp);
    fs::rename(tmp, out, ec);  // replaces `out` only if it is an empty folder
    if (ec) throw Error("make-model: cannot move the finished model to " + out.string() + ": " + ec.message());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace ember

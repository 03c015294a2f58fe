#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "commands.h"
#include "model/model_dir.h"
#include "model/weights.h"

namespace ember::cli {

namespace {

struct InfoFlags {
  std::string model;
  int64_t max_batch_tokens = 8192;
};

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

void run_info(const InfoFlags& flags) {
  const auto dir = resolve_model_dir(flags.model);
  const ModelConfig c = ModelConfig::from_file(dir / "config.json");
  const WeightStore weights = WeightStore::open(dir);
  const Tensor embed = weights.get("embed_tokens.weight", {c.vocab_size, c.hidden_size});
  const int64_t params = c.parameter_count();
  const int64_t embed_params = c.vocab_size * c.hidden_size;
  const double stored = static_cast<double>(weights.total_bytes());
  // Activations alive at once in one forward pass, per token (Qwen3Model's buffers): residual,
  // normed and out; the MLP's gate_up, which also holds the attention's qkv and output when they
  // fit; the MLP's act.
  const int64_t attention = (2 * c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
  const int64_t per_token = 3 * c.hidden_size + 2 * c.intermediate_size + std::max(c.intermediate_size, c.hidden_size) +
                            (attention > 2 * c.intermediate_size ? attention : 0);
  const double act_bf16 = 2.0 * per_token * flags.max_batch_tokens;
  const double act_f32 = 2.0 * act_bf16;

  fmt::print("model            {}\n", dir.string());
  fmt::print("architecture     {}\n", c.architecture);
  fmt::print("hidden size      {}\n", c.hidden_size);
  fmt::print("layers           {}\n", c.num_hidden_layers);
  fmt::print("attention heads  {} query, {} key/value, head_dim {}\n", c.num_attention_heads, c.num_key_value_heads,
             c.head_dim);
  fmt::print("intermediate     {}\n", c.intermediate_size);
  fmt::print("vocabulary       {}\n", c.vocab_size);
  fmt::print("max tokens       {}\n", c.max_position_embeddings);
  fmt::print("rope theta       {}\n", c.rope_theta);
  fmt::print("tied embeddings  {}\n", c.tie_word_embeddings ? "yes" : "no");
  fmt::print("weights dtype    {} (config: {})\n", dtype_name(embed.dtype), c.torch_dtype);
  fmt::print("parameters       {} ({:.3f} B; {:.3f} B without the embedding table)\n", params, params / 1e9,
             (params - embed_params) / 1e9);
  fmt::print("files            {} safetensors, {:.2f} GiB of tensors\n", weights.file_count(), gib(stored));
  fmt::print("memory, fast     {:.2f} GiB: bf16 weights {:.2f} GiB + activations {:.2f} GiB at {} batch tokens\n",
             gib(2.0 * params + act_bf16), gib(2.0 * params), gib(act_bf16), flags.max_batch_tokens);
  fmt::print(
      "memory, exact    {:.2f} GiB on the CPU: fp32 matrices {:.2f} GiB + table {:.2f} GiB + activations {:.2f} GiB\n",
      gib(4.0 * (params - embed_params) + stored * embed_params / params + act_f32), gib(4.0 * (params - embed_params)),
      gib(stored * embed_params / params), gib(act_f32));
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* cmd = app.add_subcommand("info", "Show a model's shape, dtype, parameter count and memory needs");
  cmd->add_option("--model,-m", flags->model, "Model folder or hub id")->required();
  cmd->add_option("--max-batch-tokens", flags->max_batch_tokens, "Batch size the activation estimate assumes")
      ->capture_default_str();
  cmd->callback([flags] { run_info(*flags); });
}

}  // namespace ember::cli

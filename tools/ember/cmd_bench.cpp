// `ember bench`: throughput and latency of the engine on synthetic inputs, printed as a table.
// Numbers only; nothing here asserts.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>

#include "backend/cpu/gemm_peak.h"
#include "cold_start.h"
#include "commands.h"
#include "ember/error.h"
#include "model/make_model.h"

namespace ember::cli {

namespace {

struct BenchFlags {
  EngineFlags engine;
  std::string preset, precisions = "both";
  int long_texts = 4;       // 512-token texts per run
  int mixed_tokens = 4096;  // tokens in the mixed 20-500 corpus
  int queries = 30;         // single 16-token query repetitions
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::filesystem::path cache_root() {
  if (const char* d = std::getenv("EMBER_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::filesystem::path(d) / "ember";
  if (const char* d = std::getenv("HOME"); d && *d) return std::filesystem::path(d) / ".cache" / "ember";
  return std::filesystem::temp_directory_path() / "ember-cache";
}

// A preset's model is generated once (bf16, seed 0) and reused by later runs.
std::string preset_model_dir(const std::string& preset) {
  const auto dir = cache_root() / "models" / (preset + "-bf16-seed0");
  if (std::filesystem::exists(dir / "config.json")) return dir.string();
  std::filesystem::create_directories(dir.parent_path());
  fmt::print("generating {} into {} ...\n", preset, dir.string());
  std::fflush(stdout);
  MakeModelOptions options;
  options.tokenizer_dir = default_tokenizer_dir();
  const auto start = Clock::now();
  make_model(preset_config(preset), options, dir);
  fmt::print("generated in {:.1f} s\n", since(start));
  return dir.string();
}

// Forward-pass FLOPs of one sequence of n tokens: 2 per weight per token in the projections,
// plus QK^T and PV over the causal triangle.
double sequence_flops(const ModelConfig& c, int64_t n) {
  const double q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  const double per_layer_weights = c.hidden_size * (2 * q + 2 * kv) + 3.0 * c.hidden_size * c.intermediate_size;
  const double linear = 2.0 * per_layer_weights * n;
  const double attention = 2.0 * 2.0 * q * (static_cast<double>(n) * (n + 1) / 2);
  return c.num_hidden_layers * (linear + attention);
}

std::vector<int32_t> random_sequence(std::mt19937& rng, int64_t n, int32_t eos) {
  // Ordinary vocabulary ids (below the special tokens), closed by <|endoftext|> as real inputs are.
  std::uniform_int_distribution<int32_t> id(0, 151642);
  std::vector<int32_t> seq(static_cast<size_t>(n));
  for (auto& t : seq) t = id(rng);
  seq.back() = eos;
  return seq;
}

struct Throughput {
  double seconds = 0, tokens = 0, flops = 0;
};

Throughput time_embedding(Engine& engine, const std::vector<std::vector<int32_t>>& sequences) {
  Throughput r;
  for (const auto& s : sequences) {
    r.tokens += static_cast<double>(s.size());
    r.flops += sequence_flops(engine.config(), static_cast<int64_t>(s.size()));
  }
  const auto start = Clock::now();
  engine.embed_tokens(sequences);
  r.seconds = since(start);
  return r;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

void bench_precision(const BenchFlags& flags, const std::string& model_dir, Precision precision) {
  const std::string name = precision == Precision::Exact ? "exact" : "fast";
  EngineOptions options = flags.engine.options();
  options.model = model_dir;
  options.precision = precision;

  const double cold = seconds_to_first_output_line(
      {"embed", "--model", model_dir, "--device", flags.engine.device, "--precision", name, "--threads",
       std::to_string(flags.engine.threads)},
      "What is the capital of China?\n");

  auto start = Clock::now();
  auto engine = Engine::open(options);
  const double load = since(start);
  const int32_t eos = engine->tokenizer().eos_id();
  std::mt19937 rng(1234);

  const auto query = random_sequence(rng, 16, eos);
  engine->embed_tokens({query});  // first call pays one-time setup (kernels, buffers)

  std::vector<std::vector<int32_t>> long_texts;
  for (int i = 0; i < flags.long_texts; ++i) long_texts.push_back(random_sequence(rng, 512, eos));
  const Throughput at512 = time_embedding(*engine, long_texts);

  std::vector<std::vector<int32_t>> mixed;
  std::uniform_int_distribution<int64_t> length(20, 500);
  for (int64_t total = 0; total < flags.mixed_tokens;) {
    mixed.push_back(random_sequence(rng, length(rng), eos));
    total += static_cast<int64_t>(mixed.back().size());
  }
  const Throughput mix = time_embedding(*engine, mixed);

  std::vector<double> latencies;
  for (int i = 0; i < flags.queries; ++i) {
    start = Clock::now();
    engine->embed_tokens({query});
    latencies.push_back(since(start) * 1e3);
  }
  const double peak = measure_gemm_peak_gflops(precision, flags.engine.threads);

  fmt::print("\nprecision {} ({} threads, device {})\n", name, flags.engine.threads, flags.engine.device);
  fmt::print("  {:<34} {:>12} {:>12} {:>10}\n", "workload", "tokens/s", "GFLOP/s", "% of GEMM");
  for (const auto& [label, r] : {std::pair{"512-token texts x" + std::to_string(long_texts.size()), at512},
                                 std::pair{"mixed 20-500 tokens (" + std::to_string(mixed.size()) + " texts)", mix}}) {
    const double gflops = r.flops / r.seconds / 1e9;
    fmt::print("  {:<34} {:>12.1f} {:>12.1f} {:>9.1f}%\n", label, r.tokens / r.seconds, gflops, 100 * gflops / peak);
  }
  fmt::print("  {:<34} p50 {:.1f} ms, p99 {:.1f} ms\n", "one 16-token query", percentile(latencies, 0.5),
             percentile(latencies, 0.99));
  fmt::print("  {:<34} {:.3f} s (in-process load {:.3f} s)\n", "exec to first embedding", cold, load);
  fmt::print("  {:<34} {:.1f} GFLOP/s (oneDNN, same run)\n", "GEMM library peak", peak);
}

void run_bench(const BenchFlags& flags) {
  if (flags.engine.model.empty() == flags.preset.empty()) throw Error("give exactly one of --model or --preset");
  const std::string model_dir = flags.preset.empty() ? flags.engine.model : preset_model_dir(flags.preset);
  std::vector<Precision> precisions;
  if (flags.precisions == "both") {
    precisions = {Precision::Fast, Precision::Exact};
  } else {
    precisions = {parse_precision(flags.precisions)};
  }
  fmt::print("model {}\n", model_dir);
  for (Precision p : precisions) bench_precision(flags, model_dir, p);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure throughput, latency and start-up time");
  flags->engine.add_to(*cmd, false);
  cmd->add_option("--preset", flags->preset, "Benchmark a generated model of this shape (cached between runs)");
  cmd->add_option("--precisions", flags->precisions, "fast, exact or both")->capture_default_str();
  cmd->add_option("--long-texts", flags->long_texts, "Number of 512-token texts")->capture_default_str();
  cmd->add_option("--mixed-tokens", flags->mixed_tokens, "Tokens in the mixed 20-500 corpus")->capture_default_str();
  cmd->add_option("--queries", flags->queries, "Repetitions of the 16-token query")->capture_default_str();
  cmd->callback([flags] { run_bench(*flags); });
}

}  // namespace ember::cli

// `ember bench`: throughput, latency, start-up time and memory of the engine on synthetic inputs,
// printed as a table (and optionally written as JSON for bench/compare.py). Numbers only.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "backend/cpu/gemm_peak.h"
#include "bench_workloads.h"
#include "cold_start.h"
#include "commands.h"
#include "ember/error.h"
#include "model/make_model.h"
#ifdef EMBER_HAVE_CUDA
#include "backend/cuda/gemm_peak.h"
#endif

namespace ember::cli {

namespace {

struct BenchFlags {
  EngineFlags engine;
  std::string preset, precisions, json_out;
  bool quick = false;
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

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// Runs the workloads of one precision and prints/records them. `peak_flops` is the GEMM
// library's best rate measured in this run, the yardstick for the model's achieved rate.
class PrecisionBench {
 public:
  // The CPU's rates read best in GFLOP/s, a GPU's in TFLOP/s.
  PrecisionBench(Engine& engine, double peak_flops, bool tera, int64_t max_batch_tokens, nlohmann::json& out)
      : engine_(engine), peak_(peak_flops), unit_(tera ? 1e12 : 1e9), max_batch_tokens_(max_batch_tokens), out_(out) {
    fmt::print("  {:<36} {:>11} {:>10} {:>10} {:>9}\n", "workload", "tokens/s", "ms", tera ? "TFLOP/s" : "GFLOP/s",
               "% peak");
  }

  void throughput(const std::string& name, const std::string& label, const std::vector<Sequence>& seqs) {
    double tokens = 0, flops = 0;
    for (const auto& s : seqs) {
      tokens += static_cast<double>(s.size());
      flops += sequence_flops(engine_.config(), static_cast<int64_t>(s.size()));
    }
    // Warm: one batch as full as the timed run's first, so its first-use setup (GEMM plans and
    // algorithm timing, kernel loading) stays out of the timing.
    std::vector<Sequence> warm{seqs.front()};
    int64_t warm_tokens = static_cast<int64_t>(seqs.front().size());
    for (size_t i = 1; i < seqs.size(); ++i) {
      warm_tokens += static_cast<int64_t>(seqs[i].size());
      if (warm_tokens > max_batch_tokens_) break;
      warm.push_back(seqs[i]);
    }
    engine_.embed_tokens(warm);
    const auto start = Clock::now();
    engine_.embed_tokens(seqs);
    const double seconds = since(start);
    const double rate = flops / seconds;
    fmt::print("  {:<36} {:>11.0f} {:>10.1f} {:>10.1f} {:>8.1f}%\n", label, tokens / seconds, seconds * 1e3,
               rate / unit_, 100 * rate / peak_);
    out_[name] = {{"tokens", tokens},
                  {"seconds", seconds},
                  {"tokens_per_s", tokens / seconds},
                  {"tflops", rate / 1e12},
                  {"percent_of_peak", 100 * rate / peak_}};
  }

  void latency(const std::string& name, const std::string& label, const Sequence& query, int reps) {
    engine_.embed_tokens({query});
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      const auto start = Clock::now();
      engine_.embed_tokens({query});
      ms.push_back(since(start) * 1e3);
    }
    const double p50 = percentile(ms, 0.5), p99 = percentile(ms, 0.99);
    fmt::print("  {:<36} p50 {:.2f} ms, p99 {:.2f} ms ({} runs)\n", label, p50, p99, reps);
    out_[name] = {{"p50_ms", p50}, {"p99_ms", p99}, {"runs", reps}};
  }

 private:
  Engine& engine_;
  double peak_, unit_;
  int64_t max_batch_tokens_;
  nlohmann::json& out_;
};

std::vector<Sequence> texts_of_length(int64_t count, int64_t length) {
  std::vector<Sequence> seqs;
  for (int64_t i = 0; i < count; ++i) seqs.push_back(synthetic_tokens(length, i));
  return seqs;
}

std::vector<Sequence> mixed_corpus(int64_t count, int64_t low, int64_t high) {
  std::vector<Sequence> seqs;
  int64_t salt = 0;
  for (int64_t n : mixed_lengths(count, low, high)) seqs.push_back(synthetic_tokens(n, salt++));
  return seqs;
}

double gemm_peak_flops(const EngineOptions& options) {
  if (options.device == Device::Cpu) return measure_gemm_peak_gflops(options.precision, options.threads) * 1e9;
#ifdef EMBER_HAVE_CUDA
  return measure_cublas_peak_tflops(0) * 1e12;
#else
  throw Error("this ember was built without CUDA");
#endif
}

// The --dtype spelling of a precision and half type.
std::string dtype_of(const EngineOptions& options) {
  if (options.precision == Precision::Exact) return "float32";
  return options.half_type == HalfType::Float16 ? "float16" : "bfloat16";
}

void bench_precision(const BenchFlags& flags, const std::string& model_dir, Precision precision, nlohmann::json& out) {
  const std::string name = precision == Precision::Exact ? "exact" : "fast";
  EngineOptions options = flags.engine.options();
  options.model = model_dir;
  options.precision = precision;
  const bool cuda = options.device == Device::Cuda;
  const std::string dtype = dtype_of(options);

  const double cold = seconds_to_first_output_line(
      {"embed", "--model", model_dir, "--device", flags.engine.device, "--dtype", dtype, "--threads",
       std::to_string(flags.engine.threads), "--max-batch-tokens", std::to_string(options.max_batch_tokens)},
      "What is the capital of China?\n");
  auto start = Clock::now();
  auto engine = Engine::open(options);
  const double load = since(start);
  const double peak = gemm_peak_flops(options);

  nlohmann::json& result = out[name];
  fmt::print("\nprecision {} ({}), device {}, threads {}, max batch tokens {}\n", name, dtype, flags.engine.device,
             flags.engine.threads, options.max_batch_tokens);
  PrecisionBench bench(*engine, peak, cuda, options.max_batch_tokens, result["workloads"]);
  const int scale = flags.quick ? 4 : 1;
  if (cuda) {
    bench.throughput("batch512", "512-token texts x" + std::to_string(256 / scale), texts_of_length(256 / scale, 512));
    bench.throughput("mixed", "mixed 20-1000 tokens x" + std::to_string(1024 / scale),
                     mixed_corpus(1024 / scale, 20, 1000));
    bench.throughput("queries32x256", "32-token queries x" + std::to_string(2048 / scale),
                     texts_of_length(2048 / scale, 32));
    bench.latency("query16", "one 16-token query", synthetic_query(16), 50);
    bench.throughput("long", "one 32,768-token text", {synthetic_tokens(32768, 1)});
  } else {
    bench.throughput("batch512", "512-token texts x" + std::to_string(8 / scale), texts_of_length(8 / scale, 512));
    bench.throughput("mixed", "mixed 20-500 tokens x" + std::to_string(16 / scale), mixed_corpus(16 / scale, 20, 500));
    bench.latency("query16", "one 16-token query", synthetic_query(16), 30 / scale);
  }
  const int64_t memory = engine->device_memory_bytes();
  fmt::print("  {:<36} {:.3f} s (loading in-process: {:.3f} s)\n", "exec to first embedding", cold, load);
  fmt::print("  {:<36} {:.1f} {} ({}, measured in this run)\n", "GEMM library peak", peak / (cuda ? 1e12 : 1e9),
             cuda ? "TFLOP/s" : "GFLOP/s",
             cuda ? "cuBLASLt bf16" : (precision == Precision::Fast ? "oneDNN bf16" : "oneDNN f32"));
  if (cuda) fmt::print("  {:<36} {:.2f} GB\n", "device memory held", static_cast<double>(memory) / 1e9);
  if (const std::string profile = engine->profile_report(); !profile.empty()) fmt::print(stderr, "\n{}", profile);
  result["dtype"] = dtype;
  result["exec_to_first_embedding_s"] = cold;
  result["load_s"] = load;
  result["gemm_peak_tflops"] = peak / 1e12;
  result["device_memory_bytes"] = memory;
}

void run_bench(const BenchFlags& flags) {
  if (flags.engine.model.empty() == flags.preset.empty()) throw Error("give exactly one of --model or --preset");
  const std::string model_dir = flags.preset.empty() ? flags.engine.model : preset_model_dir(flags.preset);
  const bool cuda = parse_device(flags.engine.device) == Device::Cuda;
  std::vector<Precision> precisions;
  const std::string which = flags.precisions.empty() ? (cuda ? "fast" : "both") : flags.precisions;
  if (!flags.engine.dtype.empty()) {
    if (!flags.precisions.empty()) throw Error("give --dtype or --precisions, not both");
    precisions = {flags.engine.options().precision};
  } else if (which == "both") {
    precisions = {Precision::Fast, Precision::Exact};
  } else {
    precisions = {parse_precision(which)};
  }
  fmt::print("model {}\n", model_dir);
  nlohmann::json out = {{"model", model_dir}, {"device", flags.engine.device}, {"threads", flags.engine.threads}};
  for (Precision p : precisions) bench_precision(flags, model_dir, p, out["precisions"]);
  if (!flags.json_out.empty()) {
    std::ofstream file(flags.json_out);
    file << out.dump(1) << "\n";
    if (!file) throw Error("cannot write " + flags.json_out);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure throughput, latency, start-up time and memory");
  flags->engine.add_to(*cmd, false);
  cmd->add_option("--preset", flags->preset, "Benchmark a generated model of this shape (cached between runs)");
  cmd->add_option("--precisions", flags->precisions, "fast, exact or both (default: both on the CPU, fast on CUDA)");
  cmd->add_option("--json", flags->json_out, "Also write the results to this JSON file");
  cmd->add_flag("--quick", flags->quick, "A quarter of the work per workload");
  cmd->callback([flags] { run_bench(*flags); });
}

}  // namespace ember::cli

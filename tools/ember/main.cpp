// ember: embeddings from Qwen3-Embedding models. Each subcommand lives in its own cmd_*.cpp.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "fault_handler.h"
#include "ember/error.h"

namespace ember::cli {

void EngineFlags::add_to(CLI::App& app, bool model_required) {
  auto* m = app.add_option("--model,-m", model, "Model folder, or a hub id found in the Hugging Face cache");
  if (model_required) m->required();
  app.add_option("--device", device, "cpu or cuda")->capture_default_str();
  app.add_option("--precision", precision, "exact (fp32 activations) or fast (bf16 activations)");
  app.add_option("--dtype", dtype,
                 "bfloat16, float16 (CUDA only) or float32: the activation and weight type (instead of --precision)");
  app.add_option("--threads", threads, "CPU threads (0: all cores)")->capture_default_str()->check(CLI::Range(0, 4096));
  app.add_flag("--deterministic", deterministic,
               "CUDA: the same bits in every process (cuBLASLt's heuristic GEMM choice, not the fastest timed)");
  app.add_option("--max-batch-tokens", max_batch_tokens,
                 "Tokens packed into one forward pass (default 8192 on the CPU, 16384 on CUDA)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
}

EngineOptions EngineFlags::options() const {
  EngineOptions o;
  o.model = model;
  o.device = parse_device(device);
  if (!dtype.empty()) {
    if (!precision.empty()) throw Error("give --dtype or --precision, not both");
    apply_dtype(dtype, o);
  } else {
    o.precision =
        precision.empty() ? (o.device == Device::Cpu ? Precision::Exact : Precision::Fast) : parse_precision(precision);
  }
  o.threads = threads;
  o.deterministic = deterministic;
  o.max_batch_tokens = max_batch_tokens > 0 ? max_batch_tokens : (o.device == Device::Cpu ? 8192 : 16384);
  return o;
}

std::string default_tokenizer_dir() {
  if (const char* env = std::getenv("EMBER_TOKENIZER_DIR"); env != nullptr && *env != '\0') return env;
  return EMBER_DEFAULT_TOKENIZER_DIR;
}

}  // namespace ember::cli

namespace {
constexpr int kUsageError = 2;
}  // namespace

int main(int argc, char** argv) {
  ember::cli::install_model_file_fault_handler();
  CLI::App app{"ember: text embeddings with Qwen3-Embedding models"};
  app.require_subcommand(1);
  ember::cli::add_embed_command(app);
  ember::cli::add_tokenize_command(app);
  ember::cli::add_info_command(app);
  ember::cli::add_make_model_command(app);
  ember::cli::add_bench_command(app);
  ember::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 numbers its errors 100-120; the README promises 2 for every usage error (0 for --help).
    return app.exit(e) == 0 ? 0 : kUsageError;
  } catch (const ember::Error& e) {
    std::fprintf(stderr, "ember: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ember: internal error: %s\n", e.what());
    return 70;
  }
  return 0;
}

// serve_load: the load benchmark of `ember serve`. Measures the engine in-process on a workload
// (Engine::pooled_states in batches of --max-batch-tokens), then starts `ember serve` with the same
// engine options and drives it with closed-loop keep-alive clients at several concurrencies:
// requests/s, tokens/s, p50/p99/p99.9 latency, errors, and the server's tokens/s as a fraction of
// in-process. Before the load, sample responses are checked against the in-process embeddings.
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "ember/engine.h"
#include "ember/error.h"
#include "serve/embedding_server.h"
#include "serve_load_client.h"
#include "serve_load_process.h"
#include "serve_load_workload.h"

namespace ember::bench {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Flags {
  std::string model, device = "cpu", precision, dtype;
  int threads = 0;
  int64_t max_batch_tokens = 0;
  std::string workload = "query";
  int pool = 64;
  std::vector<int> concurrency{1, 4, 16, 64, 256};
  double seconds = 10, warmup = 2, baseline_seconds = 0;
  std::string format = "base64";
  std::string ember;
  std::string json_out;
  int client_threads = 0;
  int check = 8;
  bool log_requests = false;
  std::vector<std::string> server_args;
};

EngineOptions engine_options(const Flags& f) {
  EngineOptions o;
  o.model = f.model;
  o.device = parse_device(f.device);
  if (!f.dtype.empty()) {
    if (!f.precision.empty()) throw Error("give --dtype or --precision, not both");
    apply_dtype(f.dtype, o);
  } else {
    o.precision = f.precision.empty() ? (o.device == Device::Cpu ? Precision::Exact : Precision::Fast)
                                      : parse_precision(f.precision);
  }
  o.threads = f.threads;
  o.max_batch_tokens = f.max_batch_tokens > 0 ? f.max_batch_tokens : (o.device == Device::Cpu ? 8192 : 16384);
  return o;
}

std::string dtype_of(const EngineOptions& o) {
  if (o.precision == Precision::Exact) return "float32";
  return o.half_type == HalfType::Float16 ? "float16" : "bfloat16";
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// The `ember` binary beside this one (build/ember; serve_load is build/bench/serve_load).
std::string default_ember() {
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  for (const auto& dir : {self.parent_path(), self.parent_path().parent_path()}) {
    if (std::filesystem::exists(dir / "ember")) return (dir / "ember").string();
  }
  throw Error("no ember binary next to " + self.string() + "; give --ember PATH");
}

// ---- the in-process baseline ----

struct Baseline {
  double tokens_per_s = 0, seconds = 0, load_s = 0;
  double other_cpu = 0;  // cores used by other processes meanwhile
  int64_t tokens = 0, batches = 0;
  std::vector<std::vector<std::vector<float>>> references;  // embeddings of the checked requests
};

// Requests spread over the workload that fit one forward pass: the server then runs each as one
// batch of exactly its sequences, as the in-process reference does, so the results can be equal.
std::vector<size_t> checked_requests(const Workload& w, int count, int64_t max_batch_tokens) {
  std::vector<size_t> fitting;
  for (size_t i = 0; i < w.requests.size(); ++i) {
    if (w.requests[i].tokens <= max_batch_tokens) fitting.push_back(i);
  }
  std::vector<size_t> out;
  const size_t n = std::min(fitting.size(), static_cast<size_t>(std::max(0, count)));
  for (size_t i = 0; i < n; ++i) out.push_back(fitting[i * fitting.size() / n]);
  return out;
}

// Batches of at most max_batch_tokens taken from the workload's sequences in order, cycling, with
// at most as many sequences as the server puts in one (its --max-batch-sequences default).
class BatchStream {
 public:
  BatchStream(const Workload& w, int64_t max_batch_tokens) : w_(w), budget_(max_batch_tokens) {}
  static constexpr size_t kMaxSequences = static_cast<size_t>(serve::BatchLimits{}.max_batch_sequences);
  std::vector<std::vector<int32_t>> next(int64_t& tokens) {
    std::vector<std::vector<int32_t>> batch;
    tokens = 0;
    for (;;) {
      const auto& seq = w_.requests[request_].sequences[sequence_];
      const auto n = static_cast<int64_t>(seq.size());
      if (!batch.empty() && (tokens + n > budget_ || batch.size() == kMaxSequences)) return batch;
      batch.push_back(seq);
      tokens += n;
      if (++sequence_ == w_.requests[request_].sequences.size()) {
        sequence_ = 0;
        request_ = (request_ + 1) % w_.requests.size();
      }
    }
  }

 private:
  const Workload& w_;
  int64_t budget_;
  size_t request_ = 0, sequence_ = 0;
};

Baseline run_baseline(Engine& engine, const Workload& w, const EngineOptions& options, double seconds,
                      const std::vector<size_t>& checked) {
  Baseline b;
  for (size_t i : checked) {
    std::vector<std::vector<float>> pooled = engine.pooled_states(w.requests[i].sequences);
    for (auto& v : pooled) v = finish_embedding(v, 0, true);
    b.references.push_back(std::move(pooled));
  }
  BatchStream stream(w, options.max_batch_tokens);
  int64_t tokens = 0;
  engine.pooled_states(stream.next(tokens));  // warm: first-use setup stays out of the timing
  const double own0 = own_cpu_seconds(), machine0 = machine_cpu_seconds();
  const auto start = Clock::now();
  while (b.batches < 3 || since(start) < seconds) {
    auto batch = stream.next(tokens);
    engine.pooled_states(batch);
    b.tokens += tokens;
    ++b.batches;
  }
  b.seconds = since(start);
  b.tokens_per_s = static_cast<double>(b.tokens) / b.seconds;
  b.other_cpu = (machine_cpu_seconds() - machine0 - (own_cpu_seconds() - own0)) / b.seconds;
  return b;
}

// ---- checking responses ----

std::vector<float> decode_base64_floats(const std::string& text) {
  static const auto table = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = i;
    return t;
  }();
  std::string bytes;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    const int v = table[static_cast<unsigned char>(c)];
    if (v < 0) throw Error("a base64 embedding holds a character outside the alphabet");
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(static_cast<char>(acc >> bits & 0xff));
    }
  }
  if (bytes.size() % sizeof(float) != 0) throw Error("a base64 embedding is not a whole number of floats");
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

struct Difference {
  double max_abs = 0;     // largest |server - in-process| over all values
  double min_cosine = 1;  // smallest cosine between a server and an in-process embedding
  void add(const Difference& d) {
    max_abs = std::max(max_abs, d.max_abs);
    min_cosine = std::min(min_cosine, d.min_cosine);
  }
};

// How far the embeddings of one response are from the in-process ones; throws on a malformed response.
Difference response_difference(const std::string& body, const std::vector<std::vector<float>>& expected) {
  const auto json = nlohmann::json::parse(body);
  const auto& data = json.at("data");
  if (data.size() != expected.size()) {
    throw Error("a response holds " + std::to_string(data.size()) + " embeddings for " +
                std::to_string(expected.size()) + " inputs");
  }
  Difference worst;
  for (const auto& item : data) {
    const size_t index = item.at("index").get<size_t>();
    const auto& e = item.at("embedding");
    const std::vector<float> got =
        e.is_string() ? decode_base64_floats(e.get<std::string>()) : e.get<std::vector<float>>();
    const auto& want = expected.at(index);
    if (got.size() != want.size())
      throw Error("an embedding has " + std::to_string(got.size()) + " values, not " + std::to_string(want.size()));
    double dot = 0, got_norm = 0, want_norm = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      worst.max_abs = std::max(worst.max_abs, std::abs(static_cast<double>(got[k]) - want[k]));
      dot += static_cast<double>(got[k]) * want[k];
      got_norm += static_cast<double>(got[k]) * got[k];
      want_norm += static_cast<double>(want[k]) * want[k];
    }
    worst.min_cosine = std::min(worst.min_cosine, dot / std::sqrt(std::max(got_norm * want_norm, 1e-30)));
  }
  return worst;
}

// ---- /metrics ----

struct EngineCounters {
  double batches = 0, batch_tokens = 0, batch_seconds = 0;
};

EngineCounters scrape(uint16_t port) {
  BlockingClient client(port);
  const std::string text = client.request("GET", "/metrics").body;
  EngineCounters c;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t space = line.rfind(' ');
    if (line.empty() || line[0] == '#' || space == std::string::npos) continue;
    const std::string name = line.substr(0, space);
    const double value = std::stod(line.substr(space + 1));
    if (name == "ember_batches_total") c.batches = value;
    if (name == "ember_batch_tokens_sum") c.batch_tokens = value;
    if (name == "ember_batch_duration_seconds_sum") c.batch_seconds = value;
  }
  return c;
}

// Counters read at the start and the end of a measured window.
struct Sample {
  EngineCounters engine;
  double server = 0, own = 0, machine = 0;  // CPU seconds so far
};

Sample sample(uint16_t port, const ServerProcess& server) {
  return {scrape(port), server.cpu_seconds(), own_cpu_seconds(), machine_cpu_seconds()};
}

// Every client holds a connection, and so does the server for each: lift the soft descriptor limit
// (1024 on many systems) to the hard one; the server inherits it.
void raise_file_limit(int concurrency) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  limit.rlim_cur = limit.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < static_cast<rlim_t>(concurrency) + 256) {
    fmt::print("warning: the open-file limit {} is too low for {} clients (ulimit -n)\n", limit.rlim_cur, concurrency);
  }
}

// ---- the run ----

int run(const Flags& f) {
  const EngineOptions options = engine_options(f);
  const bool base64 = f.format == "base64";
  if (!base64 && f.format != "float") throw Error("--format must be base64 or float, got '" + f.format + "'");
  const std::string ember = f.ember.empty() ? default_ember() : f.ember;
  const std::string served = serve::default_served_name(f.model);
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int client_threads = f.client_threads > 0 ? f.client_threads : std::clamp(hw / 4, 1, 4);
  nlohmann::json out;

  fmt::print("model {}, device {}, dtype {}, threads {}, max batch tokens {}\n", f.model, f.device, dtype_of(options),
             f.threads, options.max_batch_tokens);
  auto start = Clock::now();
  auto engine = Engine::open(options);
  const double load_s = since(start);
  const Workload w = make_workload(f.workload, f.pool, engine->tokenizer(), served, base64);
  fmt::print("workload {}: {} distinct requests, {:.1f} tokens per request on average, largest {}\n", w.name,
             w.requests.size(), static_cast<double>(w.tokens) / static_cast<double>(w.requests.size()), w.max_tokens);
  const std::vector<size_t> checked = checked_requests(w, f.check, options.max_batch_tokens);
  const Baseline base =
      run_baseline(*engine, w, options, f.baseline_seconds > 0 ? f.baseline_seconds : f.seconds, checked);
  engine.reset();  // the server needs the memory (a GPU's above all)
  fmt::print(
      "in-process: {:.0f} tokens/s ({} batches, {} tokens in {:.2f} s; load {:.2f} s; other processes used "
      "{:.2f} cores meanwhile)\n",
      base.tokens_per_s, base.batches, base.tokens, base.seconds, load_s, base.other_cpu);

  const int max_c = *std::max_element(f.concurrency.begin(), f.concurrency.end());
  raise_file_limit(max_c);
  // Queue limits that admit every client's request, so the levels measure throughput, not 429s.
  const int64_t queued_tokens = std::max<int64_t>(64 * options.max_batch_tokens, int64_t{max_c} * w.max_tokens);
  const uint16_t port = free_port();
  std::vector<std::string> argv = {ember,
                                   "serve",
                                   "--model",
                                   f.model,
                                   "--device",
                                   f.device,
                                   "--dtype",
                                   dtype_of(options),
                                   "--threads",
                                   std::to_string(f.threads),
                                   "--max-batch-tokens",
                                   std::to_string(options.max_batch_tokens),
                                   "--host",
                                   "127.0.0.1",
                                   "--port",
                                   std::to_string(port),
                                   "--max-concurrent-requests",
                                   std::to_string(std::max(512, 2 * max_c)),
                                   "--max-queued-tokens",
                                   std::to_string(queued_tokens)};
  if (!f.log_requests) argv.push_back("--disable-log-requests");
  argv.insert(argv.end(), f.server_args.begin(), f.server_args.end());
  std::string command;
  for (const auto& a : argv) command += (command.empty() ? "" : " ") + a;
  fmt::print("server: {}\n", command);
  const std::string log_path =
      (std::filesystem::temp_directory_path() / ("serve_load-" + std::to_string(::getpid()) + ".log")).string();
  ServerProcess server(argv, log_path);
  start = Clock::now();
  server.wait_healthy(port, std::chrono::seconds(600));
  fmt::print("server healthy after {:.2f} s (log: {})\n", since(start), log_path);

  // Each checked request alone, so the server batches it as the in-process run did.
  Difference worst;
  {
    BlockingClient client(port);
    for (size_t k = 0; k < checked.size(); ++k) {
      const HttpResult r = client.request("POST", "/v1/embeddings", w.requests[checked[k]].body);
      if (r.status != 200) throw Error("a check request got HTTP " + std::to_string(r.status) + ": " + r.body);
      worst.add(response_difference(r.body, base.references[k]));
    }
  }
  // On the CPU the server must match in-process exactly. On CUDA each process times cuBLASLt's
  // candidate algorithms and may keep a different one for a shape (another summation order), so
  // two processes agree to bf16 rounding, not bit for bit: there the bar is the HF-parity cosine.
  const bool exact_expected = options.device == Device::Cpu;
  const bool check_ok = exact_expected ? worst.max_abs <= 1e-5 : worst.min_cosine >= 0.999;
  fmt::print("check: {} requests, largest |server - in-process| = {:.3g}, smallest cosine {:.6f} ({})\n",
             checked.size(), worst.max_abs, worst.min_cosine,
             check_ok ? (exact_expected ? "ok, <= 1e-5" : "ok, cosine >= 0.999")
                      : (exact_expected ? "FAILED, > 1e-5" : "FAILED, cosine < 0.999"));

  std::vector<std::string> raw;
  for (const auto& r : w.requests) raw.push_back(raw_embedding_request(r));
  fmt::print("\n{:>5} {:>9} {:>10} {:>9} {:>9} {:>9} {:>6} {:>7} {:>9} {:>5} {:>5} {:>5} {:>5}\n", "conc", "req/s",
             "tokens/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "vs in", "tok/batch", "busy", "srv", "cli", "other");
  double best = 0;
  for (int c : f.concurrency) {
    Sample at[2];
    LevelOptions lo;
    lo.port = port;
    lo.concurrency = c;
    lo.warmup_s = f.warmup;
    lo.seconds = f.seconds;
    lo.threads = client_threads;
    lo.mark = [&](int phase) { at[phase] = sample(port, server); };
    const LevelResult r = run_level(w, raw, lo);
    const double tps = static_cast<double>(r.tokens) / r.window_s;
    const double batches = at[1].engine.batches - at[0].engine.batches;
    const double per_batch = batches > 0 ? (at[1].engine.batch_tokens - at[0].engine.batch_tokens) / batches : 0;
    const double busy = (at[1].engine.batch_seconds - at[0].engine.batch_seconds) / r.window_s;
    const double srv = (at[1].server - at[0].server) / r.window_s, cli = (at[1].own - at[0].own) / r.window_s;
    const double other = (at[1].machine - at[0].machine) / r.window_s - srv - cli;
    best = std::max(best, tps);
    const double p50 = percentile(r.latencies_ms, 0.5), p99 = percentile(r.latencies_ms, 0.99),
                 p999 = percentile(r.latencies_ms, 0.999);
    fmt::print(
        "{:>5} {:>9.1f} {:>10.0f} {:>9.2f} {:>9.2f} {:>9.2f} {:>6} {:>6.1f}% {:>9.0f} {:>4.0f}% {:>5.2f} {:>5.2f} "
        "{:>5.2f}\n",
        c, static_cast<double>(r.requests) / r.window_s, tps, p50, p99, p999, r.errors, 100 * tps / base.tokens_per_s,
        per_batch, 100 * busy, srv, cli, other);
    if (!r.first_error.empty()) fmt::print("      first error: {}\n", r.first_error);
    std::fflush(stdout);
    out["levels"].push_back({{"concurrency", c},
                             {"requests", r.requests},
                             {"requests_per_s", static_cast<double>(r.requests) / r.window_s},
                             {"tokens_per_s", tps},
                             {"p50_ms", p50},
                             {"p99_ms", p99},
                             {"p999_ms", p999},
                             {"errors", r.errors},
                             {"first_error", r.first_error},
                             {"ratio_to_in_process", tps / base.tokens_per_s},
                             {"tokens_per_batch", per_batch},
                             {"engine_busy", busy},
                             {"server_cpu_cores", srv},
                             {"client_cpu_cores", cli},
                             {"other_cpu_cores", other}});
  }
  const double ratio = best / base.tokens_per_s;
  fmt::print("\nsaturated: {:.0f} tokens/s = {:.1f}% of in-process {:.0f} tokens/s (target >= 95%: {})\n", best,
             100 * ratio, base.tokens_per_s, ratio >= 0.95 ? "met" : "NOT met");
  fmt::print(
      "columns: vs in = tokens/s over in-process; tok/batch = mean tokens per forward pass; busy = share of "
      "the window the server spent in forward passes; srv, cli, other = CPU cores used by the server, the load "
      "generator and everything else on the machine\n");

  const int exit_status = server.terminate(std::chrono::seconds(120));
  fmt::print("server exit status after SIGTERM: {}{}\n", exit_status, exit_status == 0 ? " (ok)" : " (FAILED)");

  if (!f.json_out.empty()) {
    out["model"] = f.model;
    out["device"] = f.device;
    out["dtype"] = dtype_of(options);
    out["threads"] = f.threads;
    out["max_batch_tokens"] = options.max_batch_tokens;
    out["workload"] = w.name;
    out["format"] = f.format;
    out["pool"] = w.requests.size();
    out["seconds"] = f.seconds;
    out["warmup_s"] = f.warmup;
    out["client_threads"] = client_threads;
    out["server_command"] = command;
    out["in_process"] = {{"tokens_per_s", base.tokens_per_s},
                         {"tokens", base.tokens},
                         {"batches", base.batches},
                         {"seconds", base.seconds},
                         {"load_s", load_s}};
    out["check"] = {{"requests", checked.size()},
                    {"max_abs_difference", worst.max_abs},
                    {"min_cosine", worst.min_cosine},
                    {"ok", check_ok}};
    out["saturated_tokens_per_s"] = best;
    out["saturated_ratio"] = ratio;
    out["server_exit_status"] = exit_status;
    std::ofstream file(f.json_out);
    file << out.dump(1) << "\n";
    if (!file) throw Error("cannot write " + f.json_out);
  }
  return check_ok && exit_status == 0 ? 0 : 1;
}

}  // namespace

}  // namespace ember::bench

int main(int argc, char** argv) {
  ember::bench::Flags f;
  CLI::App app{"Load benchmark of `ember serve` against the same engine in-process"};
  app.add_option("--model,-m", f.model, "Model folder")->required();
  app.add_option("--device", f.device, "cpu or cuda")->capture_default_str();
  app.add_option("--precision", f.precision, "exact or fast");
  app.add_option("--dtype", f.dtype, "bfloat16, float16 or float32 (instead of --precision)");
  app.add_option("--threads", f.threads, "Engine CPU threads (0: all cores)")->capture_default_str();
  app.add_option("--max-batch-tokens", f.max_batch_tokens, "Tokens per forward pass (default 8192 CPU, 16384 CUDA)");
  app.add_option("--workload", f.workload, "query (1x16 tokens), docs (8x512) or mixed (1-32 x 20-1000)")
      ->capture_default_str();
  app.add_option("--pool", f.pool, "Distinct requests the clients cycle through")->capture_default_str();
  app.add_option("--concurrency", f.concurrency, "Concurrent clients per level, comma-separated")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seconds", f.seconds, "Measured seconds per level")->capture_default_str();
  app.add_option("--warmup", f.warmup, "Unmeasured seconds at the start of each level")->capture_default_str();
  app.add_option("--baseline-seconds", f.baseline_seconds, "Seconds of in-process work (default: --seconds)");
  app.add_option("--format", f.format, "encoding_format: base64 (as the OpenAI SDK) or float")->capture_default_str();
  app.add_option("--ember", f.ember, "The ember binary to serve with (default: the one in this build)");
  app.add_option("--client-threads", f.client_threads, "Load-generator threads (default: cores/4, 1 to 4)");
  app.add_option("--check", f.check, "Requests whose embeddings are compared with in-process ones")
      ->capture_default_str();
  app.add_flag("--log-requests", f.log_requests, "Keep the server's access log on (default: --disable-log-requests)");
  app.add_option("--server-arg", f.server_args, "Extra argument for ember serve (repeat for several)");
  app.add_option("--json", f.json_out, "Also write every number to this JSON file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return ember::bench::run(f);
  } catch (const std::exception& e) {
    fmt::print(stderr, "serve_load: error: {}\n", e.what());
    return 1;
  }
}

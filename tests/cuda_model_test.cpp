// Whole-model checks of the CUDA backend, in bf16 and in fp16: the golden variants of
// tests/data/model_golden.json against Hugging Face transformers and against the CPU backend;
// CUDA-graph replays against eager runs, including same-shape batches with different contents,
// batches after larger ones (buffer growth) and after long inputs; fp16's refusal of a checkpoint
// value it cannot hold. With EMBER_CUDA_BENCH_MODEL set to a model folder, also prints load time
// and single-query latency (no timed assertions).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm_peak.h"
#include "ember/engine.h"
#include "ember/error.h"
#include "model/make_model.h"
#include "model/qwen3.h"
#include "model/weights.h"
#include "cuda_test_support.h"
#include "golden_support.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace ember {
namespace {

using ember_test::cosine;
using ember_test::error_of;
using ember_test::TempDir;
using ember_test::write_variant;

const char* name(HalfType h) { return h == HalfType::Float16 ? "fp16" : "bf16"; }

std::unique_ptr<Engine> open_engine(const fs::path& dir, Device device, int64_t max_batch_tokens,
                                    Precision precision = Precision::Fast, HalfType half = HalfType::BFloat16) {
  EngineOptions eo;
  eo.model = dir.string();
  eo.device = device;
  eo.precision = precision;
  eo.half_type = half;
  eo.max_batch_tokens = max_batch_tokens;
  return Engine::open(eo);
}

// bf16 is checked against the CPU backend in fast precision (bf16 too), fp16 against exact (fp32).
TEST(CudaModel, GoldenVariantsMatchTransformersAndTheCpuBackend) {
  REQUIRE_CUDA();
  std::ifstream f(fs::path(EMBER_TEST_DATA_DIR) / "model_golden.json");
  ASSERT_TRUE(f) << "tests/data/model_golden.json is missing";
  const nlohmann::json golden = nlohmann::json::parse(f);
  const std::vector<std::string> texts = golden.at("texts");
  TempDir tmp;
  for (const auto& v : golden.at("variants")) {
    const std::string variant = v.at("name");
    SCOPED_TRACE(variant);
    const fs::path dir = write_variant(v, tmp.path);
    for (const HalfType half : {HalfType::BFloat16, HalfType::Float16}) {
      const Precision cpu_precision = half == HalfType::Float16 ? Precision::Exact : Precision::Fast;
      const auto cpu = open_engine(dir, Device::Cpu, 8192, cpu_precision)->embed_texts(texts, EmbedOptions{});
      // 8192: one eager batch of every text; 700: graph-recorded batches, and the 4,992-token text
      // alone on the long-input path with its MLP in row chunks.
      for (const int64_t budget : {8192, 700}) {
        const auto engine = open_engine(dir, Device::Cuda, budget, Precision::Fast, half);
        const auto got = engine->embed_texts(texts, EmbedOptions{});
        ASSERT_EQ(got.size(), texts.size());
        double worst_hf = 1.0, worst_cpu = 1.0;
        for (size_t t = 0; t < texts.size(); ++t) {
          const double hf = cosine(got[t], v.at("embeddings")[t].get<std::vector<float>>());
          const double c = cosine(got[t], cpu[t]);
          EXPECT_GE(hf, 0.999) << name(half) << " text " << t << " vs transformers, budget " << budget;
          EXPECT_GE(c, 0.999) << name(half) << " text " << t << " vs the CPU backend, budget " << budget;
          worst_hf = std::min(worst_hf, hf);
          worst_cpu = std::min(worst_cpu, c);
        }
        std::printf("cuda %s %s (budget %lld): worst cosine vs transformers %.6f, vs cpu %s %.6f\n", name(half),
                    variant.c_str(), static_cast<long long>(budget), worst_hf,
                    cpu_precision == Precision::Exact ? "exact" : "fast", worst_cpu);
      }
    }
  }
}

// Sets element `index` of the BF16 tensor `tensor` in the safetensors file `file` to `value`.
void poke_bf16(const fs::path& file, const std::string& tensor, int64_t index, float value) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << file;
  uint64_t header_bytes = 0;
  f.read(reinterpret_cast<char*>(&header_bytes), 8);
  std::string header(header_bytes, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_bytes));
  const nlohmann::json h = nlohmann::json::parse(header);
  ASSERT_EQ(h.at(tensor).at("dtype"), "BF16");
  const int64_t begin = h.at(tensor).at("data_offsets")[0];
  const uint16_t bits = f32_to_bf16(value);
  f.seekp(static_cast<std::streamoff>(8 + header_bytes + begin + 2 * index));
  f.write(reinterpret_cast<const char*>(&bits), 2);
  ASSERT_TRUE(f) << "writing " << tensor;
}

// A bf16 checkpoint value beyond fp16's range fails the fp16 load with the tensor named (the
// part of a stacked weight too); bf16 loads the same folder.
TEST(CudaModel, Float16NamesTheWeightItCannotHold) {
  REQUIRE_CUDA();
  TempDir tmp;
  MakeModelOptions o;
  o.tokenizer_dir = EMBER_TOKENIZER_DIR;
  const fs::path dir = tmp.path / "m", file = dir / "model.safetensors";
  make_model(preset_config("tiny"), o, dir);
  poke_bf16(file, "layers.1.mlp.up_proj.weight", 5, -3.0e5f);
  poke_bf16(file, "layers.2.mlp.down_proj.weight", 77, 1.0e5f);
  const auto open_fp16 = [&] { open_engine(dir, Device::Cuda, 512, Precision::Fast, HalfType::Float16); };
  std::string message = error_of(open_fp16);
  EXPECT_NE(message.find("layers.1.mlp.gate_proj.weight, layers.1.mlp.up_proj.weight: CUDA backend: part 2 of 2 of "
                         "a stacked weight, BF16[128, 64]: element 5 is -299008, beyond float16's range"),
            std::string::npos)
      << message;
  poke_bf16(file, "layers.1.mlp.up_proj.weight", 5, 0.0f);
  message = error_of(open_fp16);
  EXPECT_EQ(message, "layers.2.mlp.down_proj.weight: CUDA backend: weight BF16[64, 128]: element 77 is 99840, beyond "
                     "float16's range (largest 65504); run this model in bfloat16");
  EXPECT_NO_THROW(open_engine(dir, Device::Cuda, 512, Precision::Fast, HalfType::BFloat16));
}

// With deterministic set, GEMM algorithms come from cuBLASLt's heuristic, not from timing, so two
// engines (as two server replicas would) compute the same bits for the same texts.
TEST(CudaModel, DeterministicEnginesGiveTheSameBits) {
  REQUIRE_CUDA();
  TempDir tmp;
  MakeModelOptions o;
  o.tokenizer_dir = EMBER_TOKENIZER_DIR;
  const fs::path dir = tmp.path / "m";
  make_model(preset_config("tiny"), o, dir);
  std::vector<std::string> texts = {"a", "What is the capital of China?"};
  for (int n : {37, 300, 700}) {
    std::string t;
    for (int i = 0; i < n; ++i) t += "word" + std::to_string(i % 17) + " ";
    texts.push_back(t);
  }
  std::vector<std::vector<float>> first;
  for (int replica = 0; replica < 2; ++replica) {
    EngineOptions eo;
    eo.model = dir.string();
    eo.device = Device::Cuda;
    eo.precision = Precision::Fast;
    eo.deterministic = true;
    eo.max_batch_tokens = 1024;
    const auto out = Engine::open(eo)->embed_texts(texts, {});
    if (replica == 0) {
      first = out;
    } else {
      EXPECT_EQ(out, first) << "two deterministic engines disagree";
    }
  }
}

// A model with head_dim 128 and GQA ratio 4, driven through Qwen3Model directly so the same
// batches can run on a graph-recording and an eager backend.
class CudaGraphs : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_CUDA();
    config_ = preset_config("tiny");
    config_.hidden_size = 256;
    config_.num_hidden_layers = 3;
    config_.num_attention_heads = 4;
    config_.num_key_value_heads = 1;
    config_.head_dim = 128;
    config_.intermediate_size = 704;
    config_.vocab_size = 5000;
    MakeModelOptions o;
    o.tokenizer_dir = EMBER_TOKENIZER_DIR;
    o.seed = 3;
    make_model(config_, o, tmp_.path / "m");
    weights_ = std::make_unique<WeightStore>(WeightStore::open(tmp_.path / "m"));
  }

  PackedBatch batch(const std::vector<int>& lengths, uint32_t seed) const {
    std::mt19937 gen(seed);
    std::vector<std::vector<int32_t>> seqs;
    for (int n : lengths) {
      std::vector<int32_t> s(static_cast<size_t>(n));
      for (auto& id : s) id = static_cast<int32_t>(gen() % config_.vocab_size);
      seqs.push_back(std::move(s));
    }
    std::vector<const std::vector<int32_t>*> ptrs;
    for (const auto& s : seqs) ptrs.push_back(&s);
    return PackedBatch::pack(ptrs);
  }

  static float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    float d = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
    return d;
  }

  // Runs `batches` in order on a graph-recording, an eager CUDA and a CPU fast model, for bf16 and
  // for fp16; every result must match (graph == eager up to GEMM reduction order; cuda ~ cpu by
  // cosine). The graph model runs each batch twice: a shape's first run is eager, later ones are
  // recorded or replayed.
  void run_all(const std::vector<PackedBatch>& batches, int64_t max_batch_tokens) {
    for (const HalfType half : {HalfType::BFloat16, HalfType::Float16}) {
      SCOPED_TRACE(name(half));
      run_all(batches, max_batch_tokens, half);
    }
  }

  void run_all(const std::vector<PackedBatch>& batches, int64_t max_batch_tokens, HalfType half) {
    auto graph_backend = make_cuda_backend(Precision::Fast, half, 0);
    CudaBackendOptions eager_options;
    eager_options.use_graphs = false;
    auto eager_backend = make_cuda_backend(Precision::Fast, half, 0, eager_options);
    auto cpu_backend = make_cpu_backend(Precision::Fast, 0);
    Qwen3Model graph(config_, *weights_, *graph_backend, max_batch_tokens);
    Qwen3Model eager(config_, *weights_, *eager_backend, max_batch_tokens);
    Qwen3Model cpu(config_, *weights_, *cpu_backend, max_batch_tokens);
    const int64_t H = config_.hidden_size;
    for (size_t i = 0; i < batches.size(); ++i) {
      const PackedBatch& b = batches[i];
      SCOPED_TRACE("batch " + std::to_string(i) + ": " + std::to_string(b.sequences()) + " sequences, " +
                   std::to_string(b.tokens()) + " tokens");
      const std::vector<float> warm = graph.forward(b), g = graph.forward(b);
      const std::vector<float> e = eager.forward(b), c = cpu.forward(b);
      ASSERT_EQ(g.size(), static_cast<size_t>(b.sequences() * H));
      const float scale = *std::max_element(e.begin(), e.end(), [](float x, float y) { return std::fabs(x) < std::fabs(y); });
      const float diff = std::max(max_diff(g, e), max_diff(warm, e));
      EXPECT_LE(diff, 1e-2f * std::fabs(scale)) << "graph replay differs from the eager run";
      std::printf("%s batch %zu (T=%lld, S=%lld): max |graph - eager| = %g (scale %g)\n", name(half), i,
                  static_cast<long long>(b.tokens()), static_cast<long long>(b.sequences()), diff, scale);
      for (int64_t s = 0; s < b.sequences(); ++s) {
        const std::vector<float> gs(g.begin() + s * H, g.begin() + (s + 1) * H);
        const std::vector<float> cs(c.begin() + s * H, c.begin() + (s + 1) * H);
        EXPECT_GE(cosine(gs, cs), 0.999) << "sequence " << s << " vs the CPU backend";
      }
    }
  }

  TempDir tmp_;
  ModelConfig config_;
  std::unique_ptr<WeightStore> weights_;
};

TEST_F(CudaGraphs, ReplaysMatchEagerRunsForSameShapeBatchesWithOtherContents) {
  // {3, 5} and {5, 3} share (tokens, sequences, longest): the second replays the first's graph
  // with other ids, positions and offsets.
  run_all({batch({3, 5}, 1), batch({5, 3}, 2), batch({1}, 3), batch({1, 7, 33}, 4), batch({3, 5}, 1)}, 512);
}

TEST_F(CudaGraphs, BatchesAfterALargerOne) {
  // 5000 tokens run eagerly and grow the batch buffers, which drops the recorded graphs.
  run_all({batch({7}, 5), batch({2000, 3000}, 6), batch({7}, 5), batch({300, 200, 12}, 8)}, 8192);
}

TEST_F(CudaGraphs, BatchesAroundALongInput) {
  // 1500 tokens > the 512 budget: the long-input path allocates buffers of its own.
  run_all({batch({7}, 5), batch({1500}, 7), batch({7}, 5), batch({100, 12}, 8)}, 512);
}

TEST_F(CudaGraphs, ABatchAtTheGraphLimit) {
  run_all({batch({4096}, 9), batch({2048, 2047, 1}, 10), batch({4097}, 11)}, 8192);
}

// Opt-in measurement on a real-size model: EMBER_CUDA_BENCH_MODEL=<model folder>.
TEST(CudaBench, LoadAndSingleQueryLatency) {
  REQUIRE_CUDA();
  const char* dir = std::getenv("EMBER_CUDA_BENCH_MODEL");
  if (dir == nullptr || *dir == 0) GTEST_SKIP() << "set EMBER_CUDA_BENCH_MODEL to a model folder to run";
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  auto t0 = Clock::now();
  const auto engine = open_engine(dir, Device::Cuda, 8192);
  const double open_s = seconds(t0);
  std::vector<int32_t> query(16);
  for (size_t i = 0; i < query.size(); ++i) query[i] = static_cast<int32_t>(1000 + 37 * i);
  t0 = Clock::now();
  engine->embed_tokens({query});
  const double first_s = seconds(t0);  // eager, and waits for the last weight copies
  std::vector<int32_t> query17 = query;
  query17.push_back(42);
  t0 = Clock::now();
  engine->embed_tokens({query17});
  const double eager_s = seconds(t0);  // a new shape runs eagerly
  t0 = Clock::now();
  engine->embed_tokens({query});
  const double record_s = seconds(t0);  // records the graph, then launches it
  std::vector<double> ms;
  for (int i = 0; i < 100; ++i) {
    t0 = Clock::now();
    engine->embed_tokens({query});
    ms.push_back(seconds(t0) * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  std::vector<std::vector<int32_t>> batch(64, std::vector<int32_t>(512));
  for (size_t s = 0; s < batch.size(); ++s) {
    for (size_t i = 0; i < 512; ++i) batch[s][i] = static_cast<int32_t>((s * 7919 + i * 31) % 150000);
  }
  engine->embed_tokens(batch);
  t0 = Clock::now();
  engine->embed_tokens(batch);
  const double batch_s = seconds(t0);
  std::printf("bench %s\n  open %.3f s, first 16-token query %.1f ms (eager, waits for the weight upload)\n", dir,
              open_s, first_s * 1e3);
  std::printf("  17-token query eager %.3f ms; 16-token recording + replay %.3f ms\n", eager_s * 1e3, record_s * 1e3);
  std::printf("  16-token query: min %.3f ms, p50 %.3f ms, p90 %.3f ms (100 runs)\n", ms.front(), ms[50], ms[90]);
  std::printf("  64 x 512 tokens: %.1f ms, %.0f tokens/s\n", batch_s * 1e3, 64 * 512 / batch_s);
  std::printf("  device memory held %.2f GB; cuBLASLt peak %.1f TFLOP/s\n",
              static_cast<double>(engine->device_memory_bytes()) / 1e9, measure_cublas_peak_tflops(0));
}

}  // namespace
}  // namespace ember

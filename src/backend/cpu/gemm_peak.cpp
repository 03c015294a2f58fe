#include "backend/cpu/gemm_peak.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>

#include "ember/error.h"

namespace ember {

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Restores the caller's OpenMP thread count however the measurement ends.
struct ThreadScope {
  int saved = omp_get_max_threads();
  explicit ThreadScope(int threads) { omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs()); }
  ~ThreadScope() { omp_set_num_threads(saved); }
};

// Fills with small non-zero values; all-zero data can flatter some kernels.
void fill(const dnnl::memory& m, bool bf16) {
  const size_t bytes = m.get_desc().get_size();
  unsigned char* p = static_cast<unsigned char*>(m.get_data_handle());
  for (size_t i = 0; i < bytes / 4; ++i) {
    const float f = 0.5f + static_cast<float>((i * 2654435761u) % 1024) / 2048.0f;
    if (bf16) {
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t h = static_cast<uint16_t>(bits >> 16);
      std::memcpy(p + 4 * i, &h, 2);
      std::memcpy(p + 4 * i + 2, &h, 2);
    } else {
      std::memcpy(p + 4 * i, &f, 4);
    }
  }
}

double best_gflops(const dnnl::engine& eng, dnnl::stream& s, dt t, int64_t m, int64_t k, int64_t n, double budget_s) {
  const dnnl::memory::desc a({m, k}, t, tag::ab), b_any({k, n}, t, tag::any), c({m, n}, t, tag::ab);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b_any, c), eng);
  const dnnl::matmul prim(pd);
  dnnl::memory A(a, eng), B(pd.weights_desc(), eng), C(c, eng);
  fill(A, t == dt::bf16);
  fill(B, t == dt::bf16);
  const auto args = std::unordered_map<int, dnnl::memory>{{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}};
  prim.execute(s, args);
  s.wait();
  const double flop = 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n);
  double best = 0.0;
  const auto start = std::chrono::steady_clock::now();
  for (int rep = 0; rep < 50; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    prim.execute(s, args);
    s.wait();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::max(best, flop / std::chrono::duration<double>(t1 - t0).count() / 1e9);
    if (std::chrono::duration<double>(t1 - start).count() > budget_s) break;
  }
  return best;
}

}  // namespace

double measure_gemm_peak_gflops(Precision precision, int threads) {
  const ThreadScope scope(threads);
  const dt t = precision == Precision::Fast ? dt::bf16 : dt::f32;
  try {
    const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    dnnl::stream s(eng);
    double best = 0.0;
    for (const int64_t size : {int64_t{1024}, int64_t{2048}}) {
      best = std::max(best, best_gflops(eng, s, t, size, size, size, 0.15));
    }
    return best;
  } catch (const dnnl::error& err) {
    throw Error(std::string("oneDNN matmul peak measurement failed: ") + err.what());
  }
}

}  // namespace ember

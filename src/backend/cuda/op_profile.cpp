#include "backend/cuda/op_profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_check.h"

namespace ember::cuda {
namespace {

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

}  // namespace

bool OpProfile::requested() {
  const char* v = std::getenv("EMBER_CUDA_PROFILE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

OpProfile::~OpProfile() {
  cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : free_) cudaEventDestroy(e);
  for (const Pending& p : pending_) {
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.stop);
  }
  if (open_) cudaEventDestroy(open_);
}

void OpProfile::set_batch(int64_t tokens, int64_t sequences) {
  section_ = "batches of <= " + std::to_string(pow2_ceil(tokens)) + " tokens, mean sequence <= " +
             std::to_string(pow2_ceil((tokens + sequences - 1) / std::max<int64_t>(sequences, 1))) + " tokens";
  if (std::find(section_order_.begin(), section_order_.end(), section_) == section_order_.end())
    section_order_.push_back(section_);
  ++batches_[section_];
}

cudaEvent_t OpProfile::event() {
  if (!free_.empty()) {
    cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  check(cudaEventCreate(&e), "cudaEventCreate (profile)");
  return e;
}

void OpProfile::begin() {
  if (!open_) open_ = event();
  check(cudaEventRecord(open_, stream_), "cudaEventRecord (profile)");
}

void OpProfile::end(const std::string& label, double flops, double bytes) {
  cudaEvent_t stop = event();
  check(cudaEventRecord(stop, stream_), "cudaEventRecord (profile)");
  pending_.push_back({section_, label, flops, bytes, open_, stop});
  open_ = nullptr;
}

void OpProfile::collect() {
  for (const Pending& p : pending_) {
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, p.start, p.stop), "cudaEventElapsedTime (profile)");
    Stat& s = stats_[p.section][p.label];
    ++s.calls;
    s.ms += ms;
    s.flops += p.flops;
    s.bytes += p.bytes;
    free_.push_back(p.start);
    free_.push_back(p.stop);
  }
  pending_.clear();
}

std::string OpProfile::report(const std::vector<std::string>& gemm_choices) {
  std::string out = "\nEMBER_CUDA_PROFILE: GPU time per op (CUDA events, eager launches)\n";
  char line[256];
  for (const std::string& section : section_order_) {
    const auto it = stats_.find(section);
    if (it == stats_.end()) continue;
    double total = 0;
    for (const auto& [label, s] : it->second) total += s.ms;
    std::snprintf(line, sizeof line, "\n%s: %lld batches, %.2f ms in ops\n", section.c_str(),
                  static_cast<long long>(batches_[section]), total);
    out += line;
    std::snprintf(line, sizeof line, "  %-28s %8s %11s %7s %10s %9s %8s\n", "op", "calls", "total ms", "%", "avg us",
                  "TFLOP/s", "GB/s");
    out += line;
    std::vector<std::pair<std::string, Stat>> rows(it->second.begin(), it->second.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    for (const auto& [label, s] : rows) {
      const double sec = s.ms * 1e-3;
      std::snprintf(line, sizeof line, "  %-28s %8lld %11.3f %6.1f%% %10.1f %9.1f %8.0f\n", label.c_str(),
                    static_cast<long long>(s.calls), s.ms, 100.0 * s.ms / total, 1e3 * s.ms / s.calls,
                    s.flops > 0 ? s.flops / sec / 1e12 : 0.0, s.bytes > 0 ? s.bytes / sec / 1e9 : 0.0);
      out += line;
    }
  }
  if (!gemm_choices.empty()) out += "\nGEMM algorithm choices:\n";
  for (const std::string& n : gemm_choices) out += "  " + n + "\n";
  return out;
}

}  // namespace ember::cuda

#pragma once
// EMBER_CUDA_PROFILE=1: the GPU time of every backend op, measured with a pair of CUDA events
// around it and summed per op label within a batch class (tokens and mean sequence length, each
// rounded up to a power of two). report() returns the tables; the CLI prints them (`ember bench`
// shows them at the end of a run). While profiling,
// forward passes run eagerly (no CUDA graphs), so small batches include launch gaps.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ember::cuda {

class OpProfile {
 public:
  static bool requested();  // EMBER_CUDA_PROFILE set to anything but "" or "0"

  explicit OpProfile(cudaStream_t stream) : stream_(stream) {}
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  // The batch class the next ops count towards.
  void set_batch(int64_t tokens, int64_t sequences);
  // Records a start event; end() records the matching stop. flops / bytes (0 if unknown) give
  // the rate columns.
  void begin();
  void end(const std::string& label, double flops, double bytes);
  // Adds every finished op to the totals; call after the stream synchronized.
  void collect();
  // The tables, followed by `gemm_choices` (the GEMM algorithm picked per shape).
  std::string report(const std::vector<std::string>& gemm_choices);

 private:
  struct Pending {
    std::string section, label;
    double flops, bytes;
    cudaEvent_t start, stop;
  };
  struct Stat {
    int64_t calls = 0;
    double ms = 0, flops = 0, bytes = 0;
  };
  cudaEvent_t event();

  cudaStream_t stream_;
  std::string section_;
  std::vector<std::string> section_order_;
  std::vector<cudaEvent_t> free_;
  cudaEvent_t open_ = nullptr;
  std::vector<Pending> pending_;
  std::map<std::string, std::map<std::string, Stat>> stats_;
  std::map<std::string, int64_t> batches_;
};

}  // namespace ember::cuda

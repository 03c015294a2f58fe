#pragma once
#include "ember/engine.h"

namespace ember {

// oneDNN's best matmul throughput on this machine in GFLOP/s, for the bench command to print next
// to the model's achieved rate: bf16 (fast) or fp32 (exact), on `threads` threads (0: all cores),
// with weights in oneDNN's preferred layout. Takes well under a second.
double measure_gemm_peak_gflops(Precision precision, int threads);

}  // namespace ember

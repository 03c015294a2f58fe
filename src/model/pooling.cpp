#include "model/pooling.h"

#include <cmath>
#include <string>

#include "ember/error.h"

namespace ember {

void check_dimensions(int dimensions, int64_t hidden) {
  if (dimensions == 0) return;
  if (dimensions < 32 || dimensions > hidden) {
    throw Error("dimensions must be between 32 and the model's hidden size " + std::to_string(hidden) +
                ", got " + std::to_string(dimensions));
  }
}

std::vector<float> finish_embedding(const float* pooled, int64_t hidden, int dimensions, bool normalize) {
  check_dimensions(dimensions, hidden);
  const int64_t d = dimensions == 0 ? hidden : dimensions;
  std::vector<float> out(pooled, pooled + d);
  if (!normalize) return out;
  double sum = 0.0;
  for (float x : out) sum += static_cast<double>(x) * x;
  // Same floor as torch.nn.functional.normalize, so an all-zero state stays zero.
  const double norm = std::max(std::sqrt(sum), 1e-12);
  for (float& x : out) x = static_cast<float>(x / norm);
  return out;
}

}  // namespace ember

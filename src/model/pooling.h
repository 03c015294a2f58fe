#pragma once
#include <cstdint>
#include <vector>

namespace ember {

// The embedding of one sequence from its pooled hidden state: the first `dimensions` values
// (Matryoshka truncation; 0 keeps all), L2-normalised unless normalize is false.
std::vector<float> finish_embedding(const float* pooled, int64_t hidden, int dimensions, bool normalize = true);

// Throws ember::Error unless 32 <= dimensions <= hidden (0 means "all" and is accepted).
void check_dimensions(int dimensions, int64_t hidden);

}  // namespace ember

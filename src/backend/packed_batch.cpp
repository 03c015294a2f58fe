#include <string>

#include "backend/backend.h"
#include "ember/error.h"

namespace ember {

PackedBatch PackedBatch::pack(const std::vector<const std::vector<int32_t>*>& sequences) {
  PackedBatch batch;
  size_t total = 0;
  for (const auto* seq : sequences) total += seq->size();
  batch.token_ids.reserve(total);
  batch.positions.reserve(total);
  batch.seq_offsets.reserve(sequences.size() + 1);
  batch.seq_offsets.push_back(0);
  for (size_t s = 0; s < sequences.size(); ++s) {
    const std::vector<int32_t>& seq = *sequences[s];
    if (seq.empty()) throw Error("cannot embed an empty token sequence (input " + std::to_string(s) + " of the batch)");
    batch.token_ids.insert(batch.token_ids.end(), seq.begin(), seq.end());
    for (size_t i = 0; i < seq.size(); ++i) batch.positions.push_back(static_cast<int32_t>(i));
    batch.seq_offsets.push_back(static_cast<int32_t>(batch.token_ids.size()));
  }
  return batch;
}

}  // namespace ember

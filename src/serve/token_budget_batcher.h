#pragma once
// Packs the sequences of concurrent requests into forward passes under a token budget.
//
// HTTP threads parse and tokenize, then submit() one job per request; one scheduler thread takes
// queued sequences in arrival order into a batch until the next would pass --max-batch-tokens or the
// sequence cap (a later, shorter sequence may fill the gap; the oldest waiting sequence always opens
// the next batch, so nothing starves), runs the forward pass, and hands each finished request its
// pooled states in input order. The scheduler thread only batches and computes: JSON writing and
// socket work happen on the HTTP threads, so the GPU never waits on them.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "serve/metrics.h"
#include "serve/model_slot.h"

namespace ember::serve {

struct BatchLimits {
  int64_t max_batch_tokens = 16384;     // tokens in one forward pass
  int64_t max_batch_sequences = 1024;   // sequences in one forward pass
  int64_t max_queued_requests = 512;    // accepted, unanswered requests (--max-concurrent-requests)
  int64_t max_queued_tokens = 1 << 20;  // tokens waiting for a batch
};

// One request's sequences. `done` runs exactly once, on the scheduler thread, with either the pooled
// states (full hidden size, not normalised; one per sequence, in input order) or an error; it must
// only hand the result to another thread.
struct EmbeddingJob {
  std::vector<std::vector<int32_t>> sequences;
  // Set (from any thread) when nobody waits for the result any more, e.g. its client disconnected:
  // sequences not yet in a batch are dropped and `done` gets ApiError 499.
  std::shared_ptr<const std::atomic<bool>> abandoned;
  std::function<void(std::vector<std::vector<float>> pooled, std::exception_ptr error)> done;
};

class TokenBudgetBatcher;

// One of --max-concurrent-requests' slots, held from a request's arrival (before its body is parsed
// and tokenized) until it is answered; submit() hands it to the queued job. Move-only.
class Admission {
 public:
  Admission() = default;
  Admission(Admission&& other) noexcept : batcher_(std::exchange(other.batcher_, nullptr)) {}
  Admission& operator=(Admission&& other) noexcept;
  ~Admission() { release(); }
  void release();
  explicit operator bool() const { return batcher_ != nullptr; }

 private:
  friend class TokenBudgetBatcher;
  explicit Admission(TokenBudgetBatcher* batcher) : batcher_(batcher) {}
  TokenBudgetBatcher* batcher_ = nullptr;
};

class TokenBudgetBatcher {
 public:
  TokenBudgetBatcher(ModelSlot& slot, ServerMetrics& metrics, BatchLimits limits);
  ~TokenBudgetBatcher();  // fails whatever is still queued, then joins the thread
  TokenBudgetBatcher(const TokenBudgetBatcher&) = delete;
  TokenBudgetBatcher& operator=(const TokenBudgetBatcher&) = delete;

  // Takes a request slot. Throws ApiError: 429 when --max-concurrent-requests are in flight, 503
  // when the batcher no longer accepts work.
  Admission admit();
  // Queues a job under its admission. Throws ApiError: 429 when the token limit is reached, 503 when
  // the model is not ready or the batcher no longer accepts work.
  void submit(EmbeddingJob job, Admission admission);

  // Stops accepting; already queued jobs still run. Then waits until every accepted job has been
  // answered or `timeout` passes. Returns true when nothing was left unanswered.
  bool drain(std::chrono::milliseconds timeout);

  struct Load {
    int64_t queued_sequences = 0;
    int64_t queued_tokens = 0;
    int64_t requests_in_flight = 0;
  };
  Load load() const;

  const BatchLimits& limits() const { return limits_; }

 private:
  struct JobState;
  struct QueuedSequence {
    std::shared_ptr<JobState> job;
    size_t index;
  };
  using Clock = std::chrono::steady_clock;

  void run();
  // Under mutex_. Jobs found abandoned are moved to `abandoned` for the caller to finish unlocked.
  std::vector<QueuedSequence> take_batch(std::vector<std::shared_ptr<JobState>>& abandoned);
  void compute(std::vector<QueuedSequence>& batch);
  void finish(JobState& job, std::exception_ptr error);
  void release_slot();  // one request fewer in flight
  friend class Admission;

  ModelSlot& slot_;
  ServerMetrics& metrics_;
  const BatchLimits limits_;

  mutable std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable all_answered_;
  std::deque<QueuedSequence> queue_;
  int64_t queued_tokens_ = 0;
  int64_t in_flight_ = 0;
  bool accepting_ = true;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace ember::serve

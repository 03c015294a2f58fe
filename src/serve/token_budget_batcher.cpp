#include "serve/token_budget_batcher.h"

#include <string>

#include "ember/error.h"
#include "serve/api_error.h"

namespace ember::serve {

namespace {
// Sequences looked at past one that does not fit, when filling a batch. Bounds the cost of a batch
// with a very long queue while still letting short sequences fill the budget.
constexpr size_t kLookahead = 4096;
}  // namespace

struct TokenBudgetBatcher::JobState {
  EmbeddingJob job;
  std::vector<std::vector<float>> pooled;
  size_t remaining = 0;
  bool failed = false;
  std::chrono::steady_clock::time_point queued_at;
};

TokenBudgetBatcher::TokenBudgetBatcher(ModelSlot& slot, ServerMetrics& metrics, BatchLimits limits)
    : slot_(slot), metrics_(metrics), limits_(limits) {
  thread_ = std::thread([this] { run(); });
}

TokenBudgetBatcher::~TokenBudgetBatcher() {
  {
    std::lock_guard lock(mutex_);
    accepting_ = false;
    stopping_ = true;
  }
  work_ready_.notify_all();
  thread_.join();
}

Admission& Admission::operator=(Admission&& other) noexcept {
  if (this != &other) {
    release();
    batcher_ = std::exchange(other.batcher_, nullptr);
  }
  return *this;
}

void Admission::release() {
  if (auto* b = std::exchange(batcher_, nullptr)) b->release_slot();
}

Admission TokenBudgetBatcher::admit() {
  std::lock_guard lock(mutex_);
  if (!accepting_) throw unavailable("the server is shutting down", 5);
  if (in_flight_ >= limits_.max_queued_requests) {
    throw overloaded("too many requests in flight (" + std::to_string(in_flight_) + "); retry shortly", 1);
  }
  ++in_flight_;
  return Admission(this);
}

void TokenBudgetBatcher::release_slot() {
  {
    std::lock_guard lock(mutex_);
    --in_flight_;
  }
  all_answered_.notify_all();
}

void TokenBudgetBatcher::submit(EmbeddingJob job, Admission admission) {
  if (!admission) throw Error("an embedding job needs an admission");
  if (job.sequences.empty()) throw Error("an embedding job needs at least one sequence");
  int64_t tokens = 0;
  for (const auto& s : job.sequences) tokens += static_cast<int64_t>(s.size());

  // An admitted request still runs while the model drains: it was accepted before the stop.
  const ModelState state = slot_.state();
  if (state != ModelState::Ready && state != ModelState::Draining) {
    throw unavailable(
        "model '" + slot_.served_name() + "' is " + std::string(to_string(state)) + ", not ready; retry shortly",
        state == ModelState::Loading ? 1 : 5);
  }
  auto state_ptr = std::make_shared<JobState>();
  state_ptr->remaining = job.sequences.size();
  state_ptr->pooled.resize(job.sequences.size());
  state_ptr->queued_at = Clock::now();
  const size_t count = job.sequences.size();
  state_ptr->job = std::move(job);
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw unavailable("the server is shutting down", 5);
    // An idle queue admits any request that passed the per-request limits, however large.
    if (queued_tokens_ > 0 && queued_tokens_ + tokens > limits_.max_queued_tokens) {
      throw overloaded("the queue holds " + std::to_string(queued_tokens_) + " tokens, the limit is " +
                           std::to_string(limits_.max_queued_tokens) + "; retry shortly",
                       1);
    }
    for (size_t i = 0; i < count; ++i) queue_.push_back({state_ptr, i});
    queued_tokens_ += tokens;
    admission.batcher_ = nullptr;  // the slot is the job's now: finish() gives it back
  }
  work_ready_.notify_one();
}

bool TokenBudgetBatcher::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  accepting_ = false;
  return all_answered_.wait_for(lock, timeout, [&] { return in_flight_ == 0; });
}

TokenBudgetBatcher::Load TokenBudgetBatcher::load() const {
  std::lock_guard lock(mutex_);
  return {static_cast<int64_t>(queue_.size()), queued_tokens_, in_flight_};
}

std::vector<TokenBudgetBatcher::QueuedSequence> TokenBudgetBatcher::take_batch(
    std::vector<std::shared_ptr<JobState>>& abandoned) {
  std::vector<QueuedSequence> batch;
  std::deque<QueuedSequence> skipped;
  int64_t tokens = 0;
  size_t looked_past = 0;
  while (!queue_.empty() && looked_past < kLookahead &&
         static_cast<int64_t>(batch.size()) < limits_.max_batch_sequences) {
    QueuedSequence next = std::move(queue_.front());
    queue_.pop_front();
    const auto length = static_cast<int64_t>(next.job->job.sequences[next.index].size());
    queued_tokens_ -= length;
    if (next.job->failed) continue;  // an earlier batch of this request failed; it has been answered
    if (next.job->job.abandoned && next.job->job.abandoned->load()) {
      next.job->failed = true;  // its other sequences are skipped as they come up
      abandoned.push_back(std::move(next.job));
      continue;
    }
    if (batch.empty() || tokens + length <= limits_.max_batch_tokens) {
      tokens += length;
      batch.push_back(std::move(next));
    } else {
      queued_tokens_ += length;
      skipped.push_back(std::move(next));
      ++looked_past;
      if (tokens >= limits_.max_batch_tokens) break;
    }
  }
  queue_.insert(queue_.begin(), std::make_move_iterator(skipped.begin()), std::make_move_iterator(skipped.end()));
  return batch;
}

void TokenBudgetBatcher::run() {
  const auto gone = std::make_exception_ptr(client_closed());
  for (;;) {
    std::vector<QueuedSequence> batch;
    std::vector<std::shared_ptr<JobState>> abandoned;
    {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      batch = take_batch(abandoned);
    }
    for (const auto& job : abandoned) {
      metrics_.observe_abandoned(static_cast<int64_t>(job->remaining));
      finish(*job, gone);
    }
    if (!batch.empty()) compute(batch);
  }
  // Shutting down: answer what is left so no HTTP request waits forever.
  std::deque<QueuedSequence> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(queue_);
    queued_tokens_ = 0;
  }
  const auto error = std::make_exception_ptr(unavailable("the server stopped before this request ran", 5));
  for (auto& q : left) {
    if (!q.job->failed) finish(*q.job, error);
  }
}

void TokenBudgetBatcher::compute(std::vector<QueuedSequence>& batch) {
  const auto start = Clock::now();
  std::vector<std::vector<int32_t>> sequences;
  sequences.reserve(batch.size());
  int64_t tokens = 0;
  for (auto& q : batch) {
    metrics_.observe_queue_wait(std::chrono::duration<double>(start - q.job->queued_at).count());
    // Moved out: each sequence is computed once, and a failed job never needs it again.
    sequences.push_back(std::move(q.job->job.sequences[q.index]));
    tokens += static_cast<int64_t>(sequences.back().size());
  }
  std::vector<std::vector<float>> pooled;
  std::exception_ptr error;
  try {
    const auto engine = slot_.engine();
    if (!engine) throw unavailable("model '" + slot_.served_name() + "' was unloaded", 1);
    pooled = engine->pooled_states(sequences);
  } catch (const ApiError&) {
    error = std::current_exception();
  } catch (const std::exception& e) {
    error = std::make_exception_ptr(ApiError(500, std::string("the forward pass failed: ") + e.what(), "server_error"));
  }
  metrics_.observe_batch(static_cast<int64_t>(batch.size()), tokens,
                         std::chrono::duration<double>(Clock::now() - start).count());
  for (size_t i = 0; i < batch.size(); ++i) {
    JobState& job = *batch[i].job;
    if (job.failed) continue;
    if (error) {
      finish(job, error);
      continue;
    }
    job.pooled[batch[i].index] = std::move(pooled[i]);
    if (--job.remaining == 0) finish(job, nullptr);
  }
}

void TokenBudgetBatcher::finish(JobState& job, std::exception_ptr error) {
  if (error) job.failed = true;
  // Released before the callback hands the result on: its client may have the response at once, and
  // its next request must find the slot free (with --max-concurrent-requests 1 it got 429 otherwise).
  // Drain still waits for the response itself: its connection stays open until it is written.
  {
    std::lock_guard lock(mutex_);
    --in_flight_;
  }
  try {
    job.job.done(error ? std::vector<std::vector<float>>{} : std::move(job.pooled), error);
  } catch (...) {
    // A callback that throws must not take the scheduler down; it only posts work elsewhere.
  }
  all_answered_.notify_all();
}

}  // namespace ember::serve

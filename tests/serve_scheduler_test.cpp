// The model slot's state machine and the token-budget scheduler, with a fake engine: what each
// forward pass held, in which order, and what every job was answered, without a model or a server.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "ember/engine.h"
#include "serve/api_error.h"
#include "serve/model_slot.h"
#include "serve/token_budget_batcher.h"

namespace {

using namespace ember;
using namespace ember::serve;
using Ids = std::vector<int32_t>;

// Records every forward pass and can hold them until released. A pooled state is
// [first id, length, pass number].
class FakeEngine final : public Engine {
 public:
  struct Shared {
    std::mutex mutex;
    std::condition_variable cv;
    bool hold = false;
    int waiting = 0;  // passes blocked by `hold`
    std::vector<std::vector<Ids>> passes;
    bool fail_next = false;
  };
  explicit FakeEngine(std::shared_ptr<Shared> shared) : shared_(std::move(shared)), dir_("/fake") {
    config_.hidden_size = 3;
    config_.max_position_embeddings = 1000;
    config_.vocab_size = 1000;
  }
  const ModelConfig& config() const override { return config_; }
  const Tokenizer& tokenizer() const override { throw std::logic_error("the fake engine has no tokenizer"); }
  const std::filesystem::path& model_dir() const override { return dir_; }
  int64_t device_memory_bytes() const override { return 42; }
  std::string profile_report() override { return ""; }
  std::vector<int32_t> tokenize(const std::string&, const EmbedOptions&) const override { return {}; }
  std::vector<std::vector<float>> embed_tokens(const std::vector<Ids>& s, int) override { return pooled_states(s); }
  std::vector<std::vector<float>> embed_texts(const std::vector<std::string>&, const EmbedOptions&) override {
    return {};
  }
  std::vector<std::vector<float>> pooled_states(const std::vector<Ids>& sequences) override {
    std::unique_lock lock(shared_->mutex);
    ++shared_->waiting;
    shared_->cv.notify_all();
    shared_->cv.wait(lock, [&] { return !shared_->hold; });
    --shared_->waiting;
    if (std::exchange(shared_->fail_next, false)) throw std::runtime_error("device lost");
    shared_->passes.push_back(sequences);
    std::vector<std::vector<float>> out;
    for (const Ids& s : sequences) {
      out.push_back(
          {static_cast<float>(s[0]), static_cast<float>(s.size()), static_cast<float>(shared_->passes.size())});
    }
    return out;
  }

 private:
  std::shared_ptr<Shared> shared_;
  ModelConfig config_;
  std::filesystem::path dir_;
};

struct Answer {
  std::vector<std::vector<float>> pooled;
  int status = 0;  // 0: answered with results
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shared_ = std::make_shared<FakeEngine::Shared>();
    slot_ = std::make_unique<ModelSlot>(
        "fake", EngineOptions{}, [s = shared_](const EngineOptions&) { return std::make_unique<FakeEngine>(s); });
    ASSERT_EQ(slot_->load(), ModelState::Ready);
  }
  void start(BatchLimits limits) { batcher_ = std::make_unique<TokenBudgetBatcher>(*slot_, metrics_, limits); }

  // Holds every forward pass from now on until release(); waits until one is blocked.
  void hold() {
    std::lock_guard lock(shared_->mutex);
    shared_->hold = true;
  }
  void wait_until_a_pass_waits() {
    std::unique_lock lock(shared_->mutex);
    shared_->cv.wait(lock, [&] { return shared_->waiting > 0; });
  }
  void release() {
    {
      std::lock_guard lock(shared_->mutex);
      shared_->hold = false;
    }
    shared_->cv.notify_all();
  }

  // Submits a job of sequences of the given lengths (ids first..); its answer arrives in the future.
  std::future<Answer> submit(const std::vector<int>& lengths, int32_t first,
                             std::shared_ptr<std::atomic<bool>> abandoned = nullptr) {
    EmbeddingJob job;
    for (size_t i = 0; i < lengths.size(); ++i)
      job.sequences.push_back(Ids(lengths[i], first + static_cast<int32_t>(i)));
    job.abandoned = abandoned;
    auto promise = std::make_shared<std::promise<Answer>>();
    job.done = [promise](std::vector<std::vector<float>> pooled, std::exception_ptr error) {
      Answer a;
      try {
        if (error) std::rethrow_exception(error);
        a.pooled = std::move(pooled);
      } catch (const ApiError& e) {
        a.status = e.status;
      }
      promise->set_value(std::move(a));
    };
    batcher_->submit(std::move(job), batcher_->admit());
    return promise->get_future();
  }

  std::vector<std::vector<Ids>> passes() {
    std::lock_guard lock(shared_->mutex);
    return shared_->passes;
  }

  std::shared_ptr<FakeEngine::Shared> shared_;
  ServerMetrics metrics_;
  std::unique_ptr<ModelSlot> slot_;
  std::unique_ptr<TokenBudgetBatcher> batcher_;
};

TEST_F(SchedulerTest, SlotStateMachine) {
  EXPECT_EQ(slot_->state(), ModelState::Ready);
  ASSERT_NE(slot_->engine(), nullptr);
  EXPECT_EQ(slot_->facts()->device_memory_bytes, 42);
  EXPECT_TRUE(slot_->begin_drain());
  EXPECT_EQ(slot_->state(), ModelState::Draining);
  EXPECT_NE(slot_->engine(), nullptr) << "queued work may still finish while draining";
  EXPECT_FALSE(slot_->begin_drain());
  slot_->finish_drain();
  EXPECT_EQ(slot_->state(), ModelState::Unloaded);
  EXPECT_EQ(slot_->engine(), nullptr);
  EXPECT_NE(slot_->facts(), nullptr) << "facts outlive an unload";
  EXPECT_EQ(slot_->load(), ModelState::Ready);

  int opens = 0;
  ModelSlot flaky("flaky", EngineOptions{}, [&](const EngineOptions&) -> std::unique_ptr<Engine> {
    if (++opens == 1) throw std::runtime_error("no such model folder");
    return std::make_unique<FakeEngine>(shared_);
  });
  EXPECT_EQ(flaky.load(), ModelState::Failed);
  EXPECT_EQ(flaky.last_error(), "no such model folder");
  EXPECT_EQ(flaky.engine(), nullptr);
  EXPECT_FALSE(flaky.begin_drain());
  EXPECT_EQ(flaky.load(), ModelState::Ready);
  EXPECT_EQ(flaky.last_error(), "");
}

// Oldest first, filled up to the token budget (a later, shorter sequence may fill the gap), at most
// max_batch_sequences; each job's results come back in its own order.
TEST_F(SchedulerTest, BatchesFollowTheTokenBudgetOldestFirst) {
  start({.max_batch_tokens = 10, .max_batch_sequences = 3, .max_queued_requests = 16, .max_queued_tokens = 1000});
  hold();
  auto blocker = submit({1}, 900);
  wait_until_a_pass_waits();
  auto a = submit({6, 6}, 100);     // 6 + 6 > 10: two passes
  auto b = submit({3, 1, 1}, 200);  // the 3 fills A's first pass, the 1s the second
  auto c = submit({12}, 300);       // longer than the budget: alone
  release();
  const Answer ra = a.get(), rb = b.get(), rc = c.get();
  blocker.get();
  const auto p = passes();
  ASSERT_EQ(p.size(), 4u);
  const auto firsts = [](const std::vector<Ids>& pass) {
    std::vector<int32_t> f;
    for (const Ids& s : pass) f.push_back(s[0]);
    return f;
  };
  EXPECT_EQ(firsts(p[0]), (std::vector<int32_t>{900}));
  EXPECT_EQ(firsts(p[1]), (std::vector<int32_t>{100, 200, 201}));  // 6 + 3 + 1 = 10
  EXPECT_EQ(firsts(p[2]), (std::vector<int32_t>{101, 202}));
  EXPECT_EQ(firsts(p[3]), (std::vector<int32_t>{300}));
  ASSERT_EQ(ra.pooled.size(), 2u);
  EXPECT_EQ(ra.pooled[0][0], 100);
  EXPECT_EQ(ra.pooled[1][0], 101);
  ASSERT_EQ(rb.pooled.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rb.pooled[i][0], 200 + i);
  EXPECT_EQ(rc.pooled[0][1], 12);
  EXPECT_EQ(batcher_->load().requests_in_flight, 0);
}

TEST_F(SchedulerTest, AdmissionLimitsRequestsAndTokens) {
  start({.max_batch_tokens = 100, .max_batch_sequences = 8, .max_queued_requests = 2, .max_queued_tokens = 10});
  hold();
  auto first = submit({5}, 1);
  wait_until_a_pass_waits();
  {
    Admission held = batcher_->admit();  // a request still parsing holds its slot too
    try {
      batcher_->admit();
      ADD_FAILURE() << "a third request was admitted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 429);
      EXPECT_GT(e.retry_after_s, 0);
    }
    EXPECT_EQ(batcher_->load().requests_in_flight, 2);
  }  // released unused
  EXPECT_EQ(batcher_->load().requests_in_flight, 1);
  auto queued = submit({8}, 2);  // queue was empty: admitted however large
  try {
    submit({3}, 3);  // 8 + 3 > 10 queued tokens
    ADD_FAILURE() << "the token limit was not applied";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 429);
  }
  EXPECT_EQ(batcher_->load().requests_in_flight, 2) << "a refused submit gives its slot back";
  release();
  first.get();
  queued.get();
  EXPECT_TRUE(batcher_->drain(std::chrono::seconds(5)));
  try {
    batcher_->admit();
    ADD_FAILURE() << "admitted after drain";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
  }
}

TEST_F(SchedulerTest, AbandonedJobsAreDroppedBeforeTheirBatch) {
  start({.max_batch_tokens = 4, .max_batch_sequences = 8, .max_queued_requests = 16, .max_queued_tokens = 1000});
  hold();
  auto blocker = submit({4}, 900);
  wait_until_a_pass_waits();
  auto gone_flag = std::make_shared<std::atomic<bool>>(false);
  auto gone = submit({4, 4, 4}, 100, gone_flag);
  auto kept = submit({4}, 200);
  gone_flag->store(true);  // the client left while its sequences were queued
  release();
  EXPECT_EQ(gone.get().status, 499);
  ASSERT_EQ(kept.get().pooled.size(), 1u);
  blocker.get();
  for (const auto& pass : passes()) {
    for (const Ids& s : pass) EXPECT_FALSE(s[0] >= 100 && s[0] < 103) << "an abandoned sequence was computed";
  }
  EXPECT_EQ(batcher_->load().requests_in_flight, 0);
  EXPECT_NE(metrics_.render({}).find("ember_abandoned_sequences_total 3"), std::string::npos);
}

TEST_F(SchedulerTest, AFailedPassFailsItsJobsOnly) {
  start({.max_batch_tokens = 4, .max_batch_sequences = 8, .max_queued_requests = 16, .max_queued_tokens = 1000});
  hold();
  auto blocker = submit({4}, 900);
  wait_until_a_pass_waits();
  {
    std::lock_guard lock(shared_->mutex);
    shared_->fail_next = true;  // the blocked pass fails
  }
  auto after = submit({2, 2}, 100);
  release();
  EXPECT_EQ(blocker.get().status, 500);
  ASSERT_EQ(after.get().pooled.size(), 2u);
  EXPECT_EQ(batcher_->load().requests_in_flight, 0);
}

TEST_F(SchedulerTest, StoppingAnswersWhatIsQueued) {
  start({.max_batch_tokens = 4, .max_batch_sequences = 8, .max_queued_requests = 16, .max_queued_tokens = 1000});
  hold();
  auto running = submit({4}, 900);
  wait_until_a_pass_waits();
  auto queued = submit({4}, 100);
  std::thread stopper([&] { batcher_.reset(); });
  // Time for the destructor to mark the batcher stopping before the running pass ends (else the
  // queued job would simply run next).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  release();
  stopper.join();
  EXPECT_EQ(running.get().pooled.size(), 1u);
  EXPECT_EQ(queued.get().status, 503);
}

}  // namespace

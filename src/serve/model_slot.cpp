#include "serve/model_slot.h"

#include <exception>
#include <thread>

#include "ember/error.h"

namespace ember::serve {

std::string_view to_string(ModelState state) {
  switch (state) {
    case ModelState::Unloaded: return "unloaded";
    case ModelState::Loading: return "loading";
    case ModelState::Ready: return "ready";
    case ModelState::Draining: return "draining";
    case ModelState::Failed: return "failed";
  }
  return "unknown";
}

namespace {

bool allowed(ModelState from, ModelState to) {
  using S = ModelState;
  switch (from) {
    case S::Unloaded: return to == S::Loading;
    case S::Loading: return to == S::Ready || to == S::Failed;
    case S::Ready: return to == S::Draining;
    case S::Draining: return to == S::Unloaded;
    case S::Failed: return to == S::Loading;
  }
  return false;
}

}  // namespace

ModelSlot::ModelSlot(std::string served_name, EngineOptions options, EngineFactory factory)
    : served_name_(std::move(served_name)),
      options_(std::move(options)),
      factory_(std::move(factory)),
      last_activity_(Clock::now()) {}

void ModelSlot::transition(ModelState from, ModelState to) {
  if (state_ != from || !allowed(from, to)) {
    throw Error("model '" + served_name_ + "' cannot go from " + std::string(to_string(state_)) + " to " +
                std::string(to_string(to)));
  }
  state_ = to;
  changed_.notify_all();
}

ModelState ModelSlot::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string ModelSlot::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

ModelState ModelSlot::load() {
  {
    std::lock_guard lock(mutex_);
    if (state_ == ModelState::Ready || state_ == ModelState::Loading) return state_;
    transition(state_, ModelState::Loading);
  }
  // Outside the lock: loading takes seconds and readers must still see "loading".
  const auto start = Clock::now();
  std::shared_ptr<Engine> engine;
  std::string error;
  // Opened on a thread of its own that then exits: converting weights runs OpenMP regions, and
  // libgomp keeps a worker pool for every thread that started one, for that thread's lifetime.
  // A pool left on the caller (the main thread) makes libgomp count more threads than cores, and
  // then every barrier of the scheduler thread's forward passes sleeps instead of spinning
  // (2 cores, float32: a 16-token query took 0.88 ms through the server instead of ~0.2 ms).
  std::thread opener([&] {
    try {
      engine = factory_(options_);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  opener.join();
  std::lock_guard lock(mutex_);
  if (!engine) {
    last_error_ = error;
    transition(ModelState::Loading, ModelState::Failed);
    return state_;
  }
  auto facts = std::make_shared<Facts>();
  facts->config = engine->config();
  facts->model_dir = engine->model_dir().string();
  facts->device_memory_bytes = engine->device_memory_bytes();
  facts->load_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  facts_ = std::move(facts);
  engine_ = std::move(engine);
  last_error_.clear();
  transition(ModelState::Loading, ModelState::Ready);
  return state_;
}

bool ModelSlot::begin_drain() {
  std::lock_guard lock(mutex_);
  if (state_ != ModelState::Ready) return false;
  transition(ModelState::Ready, ModelState::Draining);
  return true;
}

void ModelSlot::finish_drain() {
  std::shared_ptr<Engine> released;
  {
    std::lock_guard lock(mutex_);
    transition(ModelState::Draining, ModelState::Unloaded);
    released = std::move(engine_);
  }
  // The engine's destructor frees device memory; done outside the lock so readers never wait on it.
}

ModelState ModelSlot::wait_loaded(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return state_ != ModelState::Loading; });
  return state_;
}

std::shared_ptr<Engine> ModelSlot::engine() const {
  std::lock_guard lock(mutex_);
  if (state_ != ModelState::Ready && state_ != ModelState::Draining) return nullptr;
  return engine_;
}

std::shared_ptr<const ModelSlot::Facts> ModelSlot::facts() const {
  std::lock_guard lock(mutex_);
  return facts_;
}

void ModelSlot::note_activity() {
  std::lock_guard lock(mutex_);
  last_activity_ = Clock::now();
}

ModelSlot::Clock::time_point ModelSlot::last_activity() const {
  std::lock_guard lock(mutex_);
  return last_activity_;
}

}  // namespace ember::serve

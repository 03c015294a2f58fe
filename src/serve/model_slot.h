#pragma once
// One served model and its life cycle, in one place. Routes and the scheduler ask the slot, never
// keep flags of their own:
//
//   Unloaded --load()--> Loading --(success)--> Ready --begin_drain()--> Draining --finish_drain()--> Unloaded
//                            \--(failure)--> Failed --load()--> Loading
//
// Ready is the only state in which the engine may be used. Draining lets queued work finish while
// no new work is admitted. Health probes read the state without counting as activity; requests that
// do work call note_activity(), so an idle timer can later unload the model.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "ember/engine.h"

namespace ember::serve {

enum class ModelState { Unloaded, Loading, Ready, Draining, Failed };

// Opens an engine; Engine::open by default, a fake one in the scheduler's and the slot's unit tests.
using EngineFactory = std::function<std::unique_ptr<Engine>(const EngineOptions&)>;
std::string_view to_string(ModelState state);

class ModelSlot {
 public:
  using Clock = std::chrono::steady_clock;

  ModelSlot(std::string served_name, EngineOptions options, EngineFactory factory = &Engine::open);

  const std::string& served_name() const { return served_name_; }
  const EngineOptions& options() const { return options_; }

  ModelState state() const;
  std::string last_error() const;  // why the last load failed; "" otherwise

  // Loads the engine (blocking); Unloaded or Failed -> Loading -> Ready | Failed. Returns the new state.
  ModelState load();
  // Ready -> Draining. Returns false when the model was not Ready.
  bool begin_drain();
  // Draining -> Unloaded: releases the engine (and its GPU memory).
  void finish_drain();
  // Waits until the state is no longer Loading, at most `timeout`. Returns the state then.
  ModelState wait_loaded(std::chrono::milliseconds timeout) const;

  // The engine while Ready or Draining (queued work may finish), else nullptr. Shared so that an
  // unload never pulls it from under a caller. Only the scheduler runs forward passes; any thread
  // may tokenize (the tokenizer is thread-safe).
  std::shared_ptr<Engine> engine() const;

  // Facts about the loaded model, valid once it has been Ready (kept across unloads).
  struct Facts {
    ModelConfig config;
    std::string model_dir;
    int64_t device_memory_bytes = 0;
    double load_seconds = 0.0;
  };
  std::shared_ptr<const Facts> facts() const;

  void note_activity();
  Clock::time_point last_activity() const;

 private:
  void transition(ModelState from, ModelState to);  // under mutex_; throws on an illegal change

  const std::string served_name_;
  const EngineOptions options_;
  const EngineFactory factory_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  ModelState state_ = ModelState::Unloaded;
  std::string last_error_;
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<const Facts> facts_;
  Clock::time_point last_activity_;
};

}  // namespace ember::serve

#pragma once
// The server's counters, histograms and gauges, rendered in Prometheus' text format for GET /metrics.
// Thread-safe; every update takes one short lock (a handful per request, one per batch).
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ember::serve {

// A Prometheus histogram with fixed upper bounds (the +Inf bucket is implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket/_sum/_count lines; `labels` is "" or `key="value",...` without braces.
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // one per bound, plus +Inf; not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  // One answered HTTP request: its route ("/v1/embeddings", or "other" for unknown paths), status, latency.
  void observe_request(const std::string& route, int status, double seconds);
  // One request's inputs, once tokenized and accepted.
  void observe_inputs(int64_t inputs, int64_t tokens);
  // One forward pass of the scheduler.
  void observe_batch(int64_t sequences, int64_t tokens, double seconds);
  // Time a sequence spent queued before its batch started.
  void observe_queue_wait(double seconds);
  // A request whose client left while it was queued: its sequences not yet computed were dropped.
  void observe_abandoned(int64_t sequences_dropped);
  // The HTTP layer's own refusals (framing 400, 413, 431, 503 at the connection limit), read
  // timeouts and accept failures.
  void observe_http_refusal(int status);
  void observe_read_timeout();
  void observe_accept_failure();

  // Point-in-time values read when /metrics is rendered.
  struct Gauges {
    int64_t queued_sequences = 0;
    int64_t queued_tokens = 0;
    int64_t requests_in_flight = 0;
    int64_t model_memory_bytes = 0;
    int64_t open_connections = 0;
    int64_t resident_memory_bytes = 0;  // the process's RSS
    std::string model_state;            // "ready", "loading", ...
  };
  std::string render(const Gauges& gauges) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  uint64_t inputs_ = 0;
  uint64_t input_tokens_ = 0;
  uint64_t batches_ = 0;
  uint64_t abandoned_requests_ = 0;
  uint64_t abandoned_sequences_ = 0;
  std::map<int, uint64_t> http_refusals_;
  uint64_t read_timeouts_ = 0;
  uint64_t accept_failures_ = 0;
  Histogram batch_sequences_;
  Histogram batch_tokens_;
  Histogram batch_seconds_;
  Histogram queue_wait_;
};

}  // namespace ember::serve

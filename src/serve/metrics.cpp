#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace ember::serve {

namespace {

std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

std::vector<double> powers_of_two(double first, double last) {
  std::vector<double> b;
  for (double v = first; v <= last; v *= 2) b.push_back(v);
  return b;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

std::string braces(const std::string& labels) { return labels.empty() ? "" : "{" + labels + "}"; }

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const auto slot = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[static_cast<size_t>(slot)];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bounds_[i],
                   cumulative);
  }
  fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count_);
  fmt::format_to(std::back_inserter(out), "{}_sum{} {}\n{}_count{} {}\n", name, braces(labels), sum_, name,
                 braces(labels), count_);
}

ServerMetrics::ServerMetrics()
    : batch_sequences_(powers_of_two(1, 4096)),
      batch_tokens_(powers_of_two(16, 65536)),
      batch_seconds_(latency_bounds()),
      queue_wait_(latency_bounds()) {}

void ServerMetrics::observe_request(const std::string& route, int status, double seconds) {
  std::lock_guard lock(mutex_);
  ++requests_[{route, status}];
  latency_.try_emplace(route, latency_bounds()).first->second.observe(seconds);
}

void ServerMetrics::observe_inputs(int64_t inputs, int64_t tokens) {
  std::lock_guard lock(mutex_);
  inputs_ += static_cast<uint64_t>(inputs);
  input_tokens_ += static_cast<uint64_t>(tokens);
}

void ServerMetrics::observe_batch(int64_t sequences, int64_t tokens, double seconds) {
  std::lock_guard lock(mutex_);
  ++batches_;
  batch_sequences_.observe(static_cast<double>(sequences));
  batch_tokens_.observe(static_cast<double>(tokens));
  batch_seconds_.observe(seconds);
}

void ServerMetrics::observe_queue_wait(double seconds) {
  std::lock_guard lock(mutex_);
  queue_wait_.observe(seconds);
}

void ServerMetrics::observe_abandoned(int64_t sequences_dropped) {
  std::lock_guard lock(mutex_);
  ++abandoned_requests_;
  abandoned_sequences_ += static_cast<uint64_t>(sequences_dropped);
}

void ServerMetrics::observe_http_refusal(int status) {
  std::lock_guard lock(mutex_);
  ++http_refusals_[status];
}

void ServerMetrics::observe_read_timeout() {
  std::lock_guard lock(mutex_);
  ++read_timeouts_;
}

void ServerMetrics::observe_accept_failure() {
  std::lock_guard lock(mutex_);
  ++accept_failures_;
}

std::string ServerMetrics::render(const Gauges& g) const {
  std::string out;
  out.reserve(8192);
  auto it = std::back_inserter(out);
  std::lock_guard lock(mutex_);

  header(out, "ember_requests_total", "counter", "HTTP requests answered, by route and status.");
  for (const auto& [key, n] : requests_) {
    fmt::format_to(it, "ember_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  }
  header(out, "ember_request_duration_seconds", "histogram", "Time from a request's arrival to its response.");
  for (const auto& [route, h] : latency_) h.render(out, "ember_request_duration_seconds", "route=\"" + route + "\"");

  header(out, "ember_http_refused_total", "counter",
         "Requests the HTTP layer answered itself, by status: 400 bad framing, 413 body too large, 431 headers "
         "too large, 503 over --max-connections.");
  for (const int status : {400, 413, 431, 503}) {
    const auto found = http_refusals_.find(status);
    fmt::format_to(it, "ember_http_refused_total{{status=\"{}\"}} {}\n", status,
                   found == http_refusals_.end() ? 0 : found->second);
  }
  header(out, "ember_http_read_timeouts_total", "counter", "Requests not completed within the read timeout.");
  fmt::format_to(it, "ember_http_read_timeouts_total {}\n", read_timeouts_);
  header(out, "ember_http_accept_failures_total", "counter",
         "Runs of failed accept() calls (out of file descriptors, say).");
  fmt::format_to(it, "ember_http_accept_failures_total {}\n", accept_failures_);
  header(out, "ember_http_connections", "gauge", "Open HTTP connections.");
  fmt::format_to(it, "ember_http_connections {}\n", g.open_connections);
  header(out, "ember_abandoned_requests_total", "counter",
         "Requests whose client closed the connection while they were queued (answered 499, not computed).");
  fmt::format_to(it, "ember_abandoned_requests_total {}\n", abandoned_requests_);
  header(out, "ember_abandoned_sequences_total", "counter", "Queued sequences dropped because their client left.");
  fmt::format_to(it, "ember_abandoned_sequences_total {}\n", abandoned_sequences_);

  header(out, "ember_inputs_total", "counter", "Inputs (texts or token sequences) accepted for embedding.");
  fmt::format_to(it, "ember_inputs_total {}\n", inputs_);
  header(out, "ember_input_tokens_total", "counter", "Tokens accepted for embedding.");
  fmt::format_to(it, "ember_input_tokens_total {}\n", input_tokens_);

  header(out, "ember_batches_total", "counter", "Forward passes run.");
  fmt::format_to(it, "ember_batches_total {}\n", batches_);
  header(out, "ember_batch_sequences", "histogram", "Sequences per forward pass.");
  batch_sequences_.render(out, "ember_batch_sequences", "");
  header(out, "ember_batch_tokens", "histogram", "Tokens per forward pass.");
  batch_tokens_.render(out, "ember_batch_tokens", "");
  header(out, "ember_batch_duration_seconds", "histogram", "Time of one forward pass.");
  batch_seconds_.render(out, "ember_batch_duration_seconds", "");
  header(out, "ember_queue_wait_seconds", "histogram", "Time a sequence waited in the queue for its batch.");
  queue_wait_.render(out, "ember_queue_wait_seconds", "");

  header(out, "ember_queue_sequences", "gauge", "Sequences waiting for a batch.");
  fmt::format_to(it, "ember_queue_sequences {}\n", g.queued_sequences);
  header(out, "ember_queue_tokens", "gauge", "Tokens waiting for a batch.");
  fmt::format_to(it, "ember_queue_tokens {}\n", g.queued_tokens);
  header(out, "ember_requests_in_flight", "gauge", "Embedding requests accepted and not yet answered.");
  fmt::format_to(it, "ember_requests_in_flight {}\n", g.requests_in_flight);
  header(out, "ember_model_memory_bytes", "gauge", "Accelerator memory held by the model (weights and workspace).");
  fmt::format_to(it, "ember_model_memory_bytes {}\n", g.model_memory_bytes);
  header(out, "ember_process_resident_memory_bytes", "gauge", "Resident memory of the server process (RSS).");
  fmt::format_to(it, "ember_process_resident_memory_bytes {}\n", g.resident_memory_bytes);
  header(out, "ember_model_state", "gauge", "1 for the model's current life-cycle state.");
  for (const char* s : {"unloaded", "loading", "ready", "draining", "failed"}) {
    fmt::format_to(it, "ember_model_state{{state=\"{}\"}} {}\n", s, g.model_state == s ? 1 : 0);
  }
  return out;
}

}  // namespace ember::serve

#include "server_log.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ember/error.h"

namespace ember::cli {

namespace {

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z", fmt::gmtime(std::chrono::system_clock::to_time_t(now)), ms);
}

const char* level_name(serve::LogLevel level) {
  switch (level) {
    case serve::LogLevel::Info: return "info";
    case serve::LogLevel::Warning: return "warning";
    case serve::LogLevel::Error: return "error";
  }
  return "info";
}

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace

ServerLogWriter::ServerLogWriter(const std::string& format, const std::string& path)
    : json_(format == "json"), file_(stderr), owns_file_(false) {
  if (format != "text" && format != "json") throw Error("--log-format must be text or json, got '" + format + "'");
  if (!path.empty()) {
    file_ = std::fopen(path.c_str(), "a");
    if (file_ == nullptr) throw Error("cannot open --log-file " + path + ": " + std::strerror(errno));
    owns_file_ = true;
  }
}

ServerLogWriter::~ServerLogWriter() {
  if (owns_file_) std::fclose(file_);
}

void ServerLogWriter::write(const std::string& line) {
  std::lock_guard lock(mutex_);
  std::fputs(line.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

void ServerLogWriter::event(serve::LogLevel level, const std::string& message) {
  if (json_) return write(dump({{"ts", timestamp()}, {"level", level_name(level)}, {"msg", message}}));
  write(fmt::format("{} {:<7} {}", timestamp(), level_name(level), message));
}

void ServerLogWriter::request(const serve::RequestRecord& r) {
  const double ms = r.seconds * 1000.0;
  // A probe's 503 while loading or draining is the expected answer, not a server error.
  const char* level = r.status >= 500 && r.route != "/health" ? "error" : "info";
  if (json_) {
    nlohmann::json j = {{"ts", timestamp()}, {"level", level},     {"method", r.method},
                        {"path", r.target},  {"status", r.status}, {"ms", std::round(ms * 1000.0) / 1000.0}};
    if (r.inputs > 0) {
      j["inputs"] = r.inputs;
      j["tokens"] = r.tokens;
    }
    if (!r.error.empty()) j["error"] = r.error;
    return write(dump(j));
  }
  std::string line = fmt::format("{} {:<7} {} {} {} {:.2f}ms", timestamp(), level, r.method, r.target, r.status, ms);
  if (r.inputs > 0) line += fmt::format(" inputs={} tokens={}", r.inputs, r.tokens);
  // Quoted and escaped as a JSON string: the message may echo request text, newlines included,
  // which must not start a line of its own.
  if (!r.error.empty()) line += " error=" + dump(r.error);
  write(line);
}

serve::ServerLog ServerLogWriter::sink(bool log_requests) {
  serve::ServerLog log;
  log.event = [this](serve::LogLevel level, const std::string& message) { event(level, message); };
  if (log_requests) log.request = [this](const serve::RequestRecord& r) { request(r); };
  return log;
}

}  // namespace ember::cli

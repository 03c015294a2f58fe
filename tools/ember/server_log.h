#pragma once
// The server's log lines, as text or JSON lines, on stderr or appended to a
// file.
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include "serve/serve_options.h"

namespace ember::cli {

class ServerLogWriter {
 public:
  // format: "text" | "json"; path: "" for stderr. Throws ember::Error when the
  // file cannot be opened.
  ServerLogWriter(const std::string& format, const std::string& path);
  ~ServerLogWriter();

  void event(serve::LogLevel level, const std::string& message);
  void request(const serve::RequestRecord& record);
  // The callbacks the server reports through; requests only when
  // `log_requests`.
  serve::ServerLog sink(bool log_requests);
  // The log file's descriptor (2 for stderr), for the fault handler's last line.
  int fd() const { return ::fileno(file_); }

 private:
  void write(const std::string& line);

  bool json_;
  std::FILE* file_;
  bool owns_file_;
  std::mutex mutex_;
};

}  // namespace ember::cli

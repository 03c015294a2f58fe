#pragma once
// `ember serve` as a child process of serve_load: started with its output in a log file, probed
// until /health answers 200, stopped with SIGTERM.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ember::bench {

class ServerProcess {
 public:
  // Starts `argv` (argv[0] is the executable's path), stdout and stderr appended to `log_path`.
  ServerProcess(const std::vector<std::string>& argv, std::string log_path);
  ~ServerProcess();  // SIGKILLs a child still running
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Polls GET /health on 127.0.0.1:port until it answers 200. Throws ember::Error with the log's
  // tail when the child exits or `timeout` passes first.
  void wait_healthy(uint16_t port, std::chrono::seconds timeout);

  // CPU seconds (user + system) the child has used so far, from /proc; -1 where unreadable.
  double cpu_seconds() const;

  // SIGTERM, then waits at most `timeout` (SIGKILL after). Returns the exit status, or 128 + the
  // signal that ended it.
  int terminate(std::chrono::seconds timeout);

  const std::string& log_path() const { return log_path_; }
  std::string log_tail(size_t bytes = 4000) const;

 private:
  bool exited(int* status);  // reaps the child when it has exited

  pid_t pid_ = -1;
  std::string log_path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0).
uint16_t free_port();

// CPU seconds (user + system) this process has used so far.
double own_cpu_seconds();

// CPU seconds all processes of the machine have used so far (/proc/stat), to tell how much of a
// measurement's CPU went to other work; -1 where unreadable.
double machine_cpu_seconds();

}  // namespace ember::bench

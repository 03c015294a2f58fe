#include "fault_handler.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>

#include "core/mapped_file.h"

namespace ember::cli {

namespace {

int g_log_fd = -1;

void write_all(int fd, const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(fd, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

void on_sigbus(int sig, siginfo_t* info, void*) {
  const char* path = MappedFile::path_at(info->si_addr);
  if (path == nullptr) {  // not a model file: a real bug, reported by the default action
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  // Only async-signal-safe calls from here on.
  const auto report = [path](int fd) {
    write_all(fd, "ember: error: the model file ");
    write_all(fd, path);
    write_all(fd,
              " was truncated or replaced while in use (SIGBUS reading it); exiting. "
              "Replace model files by renaming a complete copy into place, then restart.\n");
  };
  report(STDERR_FILENO);
  if (g_log_fd >= 0 && g_log_fd != STDERR_FILENO) report(g_log_fd);
  ::_exit(1);
}

}  // namespace

void install_model_file_fault_handler(int log_fd) {
  g_log_fd = log_fd;
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

}  // namespace ember::cli

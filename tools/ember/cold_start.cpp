#include "cold_start.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "ember/error.h"

extern char** environ;

namespace ember::cli {

namespace {

void check(int rc, const char* what) {
  if (rc != 0) throw Error(std::string(what) + ": " + std::strerror(rc));
}

}  // namespace

double seconds_to_first_output_line(const std::vector<std::string>& args, const std::string& stdin_text) {
  int in_pipe[2], out_pipe[2];
  if (::pipe(in_pipe) != 0 || ::pipe(out_pipe) != 0) throw Error(std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t actions;
  check(posix_spawn_file_actions_init(&actions), "posix_spawn_file_actions_init");
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1]}) posix_spawn_file_actions_addclose(&actions, fd);

  std::vector<std::string> argv_storage{"/proc/self/exe"};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    throw Error(std::string("cannot start ember: ") + std::strerror(rc));
  }
  const ssize_t written = ::write(in_pipe[1], stdin_text.data(), stdin_text.size());
  ::close(in_pipe[1]);

  double seconds = -1;
  char buffer[65536];
  ssize_t n;
  while ((n = ::read(out_pipe[0], buffer, sizeof buffer)) > 0) {
    if (seconds < 0 && std::memchr(buffer, '\n', static_cast<size_t>(n)) != nullptr) {
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
  }
  ::close(out_pipe[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (written != static_cast<ssize_t>(stdin_text.size()) || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
      seconds < 0) {
    throw Error("the cold-start child run (ember embed) failed; run it by hand to see its error");
  }
  return seconds;
}

}  // namespace ember::cli

#pragma once
#include <cstdio>
#include <string>
#include <string_view>

namespace ember::cli {

// Output that only appears under its final name once complete. A regular file (or a new one) is
// written to a hidden temporary name in the same folder and renamed by commit(); a symlink is
// followed to what it names. Anything else that exists (a character device such as /dev/null, a
// FIFO, a socket) is written through, never replaced by a file. "-" writes to stdout.
//
// Destroyed without commit(), or on SIGINT/SIGTERM/SIGHUP, the temporary file is removed; one left
// by a process that died by SIGKILL is removed by the next run writing the same output.
class AtomicOutput {
 public:
  explicit AtomicOutput(const std::string& path);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  void write(std::string_view data);
  void commit();

 private:
  std::string path_;       // where the output lands (symlinks resolved)
  std::string temp_path_;  // "" when written through or to stdout
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace ember::cli

#pragma once
#include <cstdio>
#include <string>
#include <string_view>

namespace ember::cli {

// Output that only appears under its final name once complete: written to a temporary name in
// the same folder and renamed by commit(). Destroyed without commit(), it removes the temporary
// file, so a failed run never leaves a file that looks finished. "-" writes to stdout directly.
class AtomicOutput {
 public:
  explicit AtomicOutput(const std::string& path);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  void write(std::string_view data);
  void commit();

 private:
  std::string path_, temp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace ember::cli

#include "atomic_output.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ember/error.h"

namespace ember::cli {

AtomicOutput::AtomicOutput(const std::string& path) : path_(path) {
  if (path == "-") {
    file_ = stdout;
    return;
  }
  const std::filesystem::path target(path);
  // Hidden, in the same folder (so rename() is atomic), unique to this process.
  std::string name = ".";
  name += target.filename().string();
  name += ".tmp.";
  name += std::to_string(::getpid());
  temp_path_ = (target.parent_path() / name).string();
  file_ = std::fopen(temp_path_.c_str(), "wb");
  if (file_ == nullptr) throw Error("cannot create output file " + temp_path_ + ": " + std::strerror(errno));
}

AtomicOutput::~AtomicOutput() {
  if (path_ == "-" || committed_) return;
  if (file_ != nullptr) std::fclose(file_);
  std::remove(temp_path_.c_str());
}

void AtomicOutput::write(std::string_view data) {
  if (std::fwrite(data.data(), 1, data.size(), file_) != data.size()) {
    throw Error("cannot write to " + (path_ == "-" ? std::string("stdout") : temp_path_) + ": " + std::strerror(errno));
  }
}

void AtomicOutput::commit() {
  if (path_ == "-") {
    if (std::fflush(stdout) != 0) throw Error(std::string("cannot write to stdout: ") + std::strerror(errno));
    committed_ = true;
    return;
  }
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) throw Error("cannot write " + temp_path_ + ": " + std::strerror(errno));
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    throw Error("cannot rename " + temp_path_ + " to " + path_ + ": " + std::strerror(errno));
  }
  committed_ = true;
}

}  // namespace ember::cli

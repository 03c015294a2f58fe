#include "atomic_output.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>

#include "ember/error.h"

namespace ember::cli {

namespace fs = std::filesystem;

namespace {

// The temporary file a signal must remove; one output per process. A plain buffer, since the
// handler may only call async-signal-safe functions.
char g_temp_path[4096] = {};

void remove_temp_and_die(int sig) {
  if (g_temp_path[0] != '\0') ::unlink(g_temp_path);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Installed before the temporary file exists, so no signal finds it unguarded. A signal the
// process was started with ignored (nohup's SIGHUP, SIGINT of a background job) stays ignored.
void guard_with_signals(const std::string& temp_path) {
  if (temp_path.size() >= sizeof g_temp_path) return;
  std::memcpy(g_temp_path, temp_path.c_str(), temp_path.size() + 1);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    struct sigaction action {};
    action.sa_handler = remove_temp_and_die;
    sigemptyset(&action.sa_mask);
    ::sigaction(sig, &action, nullptr);
  }
}

void unguard() { g_temp_path[0] = '\0'; }

// The file a path names once symlinks are followed (a dangling link names its target).
fs::path resolve(const fs::path& path) {
  std::error_code ec;
  fs::path p = path;
  for (int hops = 0; hops < 40 && fs::is_symlink(fs::symlink_status(p, ec)); ++hops) {
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) break;
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return p;
}

// Temporary files of `target` are ".NAME.tmp.PID": hidden, in the same folder (so rename() is
// atomic), one per process. Built by appending: GCC 12 warns (-Wrestrict) on "." + string.
std::string temp_prefix(const fs::path& target) {
  std::string prefix = ".";
  prefix += target.filename().string();
  prefix += ".tmp.";
  return prefix;
}

// ".NAME.tmp.PID" files of processes that no longer exist (killed with SIGKILL, say).
void remove_stale_temps(const fs::path& target) {
  const std::string prefix = temp_prefix(target);
  std::error_code ec;
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    long pid = 0;
    const char* digits = name.data() + prefix.size();
    const auto [ptr, err] = std::from_chars(digits, name.data() + name.size(), pid);
    if (err != std::errc() || ptr != name.data() + name.size() || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove(it->path(), ec);
  }
}

}  // namespace

AtomicOutput::AtomicOutput(const std::string& path) {
  if (path == "-") {
    path_ = path;
    file_ = stdout;
    return;
  }
  const fs::path target = resolve(path);
  path_ = target.string();
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) throw Error("output " + path + " is a directory; name a file");
    file_ = std::fopen(path_.c_str(), "wb");  // a device or FIFO: written through, never replaced
    if (file_ == nullptr) throw Error("cannot open output " + path + ": " + std::strerror(errno));
    return;
  }
  remove_stale_temps(target);
  temp_path_ = (target.parent_path() / (temp_prefix(target) + std::to_string(::getpid()))).string();
  guard_with_signals(temp_path_);
  file_ = std::fopen(temp_path_.c_str(), "wb");
  if (file_ == nullptr) {
    unguard();
    throw Error("cannot create output file " + temp_path_ + ": " + std::strerror(errno));
  }
}

AtomicOutput::~AtomicOutput() {
  if (file_ == stdout || committed_) return;
  if (file_ != nullptr) std::fclose(file_);
  if (!temp_path_.empty()) {
    std::remove(temp_path_.c_str());
    unguard();
  }
}

void AtomicOutput::write(std::string_view data) {
  if (std::fwrite(data.data(), 1, data.size(), file_) != data.size()) {
    const std::string where = file_ == stdout ? "stdout" : temp_path_.empty() ? path_ : temp_path_;
    throw Error("cannot write to " + where + ": " + std::strerror(errno));
  }
}

void AtomicOutput::commit() {
  if (file_ == stdout) {
    if (std::fflush(stdout) != 0) throw Error(std::string("cannot write to stdout: ") + std::strerror(errno));
    committed_ = true;
    return;
  }
  const std::string where = temp_path_.empty() ? path_ : temp_path_;
  bool flushed = std::fflush(file_) == 0;
  // Devices and FIFOs need no fsync (and may refuse it); their write errors (ENOSPC) show above.
  if (flushed && !temp_path_.empty()) flushed = ::fsync(::fileno(file_)) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) throw Error("cannot write " + where + ": " + std::strerror(flushed ? errno : flush_errno));
  if (!temp_path_.empty()) {
    if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      throw Error("cannot rename " + temp_path_ + " to " + path_ + ": " + std::strerror(errno));
    }
    unguard();
  }
  committed_ = true;
}

}  // namespace ember::cli

// ember serve: the OpenAI- and TEI-compatible HTTP server (src/serve). This
// file owns what a library must not: flags, signals, printing and the exit
// code.
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <thread>

#include "commands.h"
#include "fault_handler.h"
#include "ember/error.h"
#include "serve/embedding_server.h"
#include "server_log.h"

namespace ember::cli {

namespace {

struct ServeFlags {
  EngineFlags engine;
  serve::ServeOptions options;
  int64_t max_client_batch_size = 2048;
  int64_t max_concurrent_requests = 512;
  int64_t max_queued_tokens = 0;  // 0: 64 batches' worth
  int64_t body_limit_mb = static_cast<int64_t>(serve::HttpServerOptions{}.body_limit >> 20);
  int64_t drain_timeout_s = 30;
  bool disable_log_requests = false;
  bool api_key_given = false;
  std::string log_format = "text";
  std::string log_file;
};

// systemd socket activation: the listening socket is fd 3 when LISTEN_PID is
// this process.
int activated_socket() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  if (pid == nullptr || fds == nullptr || std::atol(pid) != static_cast<long>(::getpid()) || std::atoi(fds) < 1) {
    return -1;
  }
  return 3;
}

void run_serve(ServeFlags& flags) {
  serve::ServeOptions options = flags.options;
  options.engine = flags.engine.options();
  options.request.max_inputs = static_cast<size_t>(flags.max_client_batch_size);
  options.batch.max_queued_requests = flags.max_concurrent_requests;
  options.batch.max_queued_tokens =
      flags.max_queued_tokens > 0 ? flags.max_queued_tokens : 64 * options.engine.max_batch_tokens;
  options.http.body_limit = static_cast<uint64_t>(flags.body_limit_mb) << 20;
  options.drain_timeout = std::chrono::seconds(flags.drain_timeout_s);
  if (flags.api_key_given && options.api_key.empty()) {
    throw Error("--api-key is empty: give a key, or leave the flag out to serve without authentication");
  }
  if (!flags.api_key_given) {
    if (const char* key = std::getenv("EMBER_API_KEY"); key != nullptr) {
      if (*key == '\0') {
        throw Error("EMBER_API_KEY is set but empty: set a key, or unset it to serve without authentication");
      }
      options.api_key = key;
    }
  }

  ServerLogWriter log(flags.log_format, flags.log_file);
  install_model_file_fault_handler(log.fd());
  // Each connection takes a descriptor: the soft limit (often 1024) would cap connections below
  // --max-connections, so take what the hard limit allows.
  if (rlimit files{}; ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  // SIGINT/SIGTERM are taken by one thread with sigwait(); every other thread
  // inherits the block.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  serve::EmbeddingServer server(options, log.sink(!flags.disable_log_requests));
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    log.event(serve::LogLevel::Info, std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
                                         "; draining (send it again to exit at once)");
    server.request_stop();
    sigwait(&signals, &sig);
    log.event(serve::LogLevel::Warning, "second signal: exiting without draining");
    std::_Exit(1);
  });
  signal_thread.detach();
  server.start(activated_socket());
  if (!server.wait()) {
    // The drain timeout passed with a forward pass still running: its requests were answered 503;
    // exit now instead of waiting for the pass (the kernel frees what the process holds).
    std::_Exit(0);
  }
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  auto* cmd = app.add_subcommand("serve", "Serve embeddings over HTTP (OpenAI /v1/embeddings, TEI /embed)");
  flags->engine.add_to(*cmd);
  auto& o = flags->options;
  o.http.host = "0.0.0.0";
  cmd->add_option("--host", o.http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o.http.port, "Port to listen on (0: any free port)")->capture_default_str();
  cmd->add_option("--served-model-name", o.served_model_name,
                  "Model name clients send and see (default: the model "
                  "folder's name or hub id)");
  cmd->add_option("--max-input-tokens", o.max_input_tokens, "Longest input in tokens (default: the model's maximum)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_flag("--auto-truncate", o.auto_truncate, "Cut over-long inputs instead of answering 400");
  cmd->add_option("--max-client-batch-size", flags->max_client_batch_size, "Most inputs in one request")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--max-concurrent-requests", flags->max_concurrent_requests,
                  "Accepted, unanswered requests before new ones get 429")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--max-queued-tokens", flags->max_queued_tokens,
                  "Tokens waiting for a batch before new requests get 429 "
                  "(default: 64 batches)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--max-batch-sequences", o.batch.max_batch_sequences, "Most sequences in one forward pass")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  auto* key = cmd->add_option("--api-key", o.api_key, "Require 'Authorization: Bearer KEY' (also $EMBER_API_KEY)");
  cmd->add_option("--body-limit-mb", flags->body_limit_mb, "Largest request body in MiB (larger: 413)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--max-connections", o.http.max_connections,
                  "Open HTTP connections; more are answered 503 and closed")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  cmd->add_option("--http-threads", o.io_threads, "HTTP threads (0: one per core, at least 2)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--drain-timeout", flags->drain_timeout_s,
                  "Seconds SIGTERM waits for requests in flight before exiting")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{24} * 3600));
  cmd->add_flag("--disable-log-requests", flags->disable_log_requests, "Do not log each request");
  cmd->add_option("--log-format", flags->log_format, "text or json")->capture_default_str();
  cmd->add_option("--log-file", flags->log_file, "Append the log to this file instead of stderr");
  cmd->callback([flags, key] {
    flags->api_key_given = key->count() > 0;
    run_serve(*flags);
  });
}

}  // namespace ember::cli

#pragma once
// SIGBUS from a memory-mapped model file that was truncated or replaced while in use (the CPU
// backend reads weights from the mapping; the CUDA backend copied them to the GPU and is not
// affected). Instead of a silent death by signal, the process writes one line naming the file to
// stderr (and to `log_fd` when >= 0) and exits 1, so a supervisor restarts it on intact files.
namespace ember::cli {

void install_model_file_fault_handler(int log_fd = -1);

}  // namespace ember::cli

#pragma once
// The server process's own memory: what /metrics reports, and handing freed heap back to the
// system after a large request (glibc keeps freed arenas otherwise, and RSS stayed at 1.4-1.9 GB
// after big requests against a 240 MB baseline).
#include <cstdint>

namespace ember::serve {

// Resident set size in bytes (from /proc/self/statm), or 0 where unknown.
int64_t resident_memory_bytes();

// Returns free heap memory to the system (malloc_trim). Costs a few milliseconds on a large heap:
// called after large requests only.
void release_free_memory();

}  // namespace ember::serve

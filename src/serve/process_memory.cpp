#include "serve/process_memory.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdio>

namespace ember::serve {

int64_t resident_memory_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

void release_free_memory() { ::malloc_trim(0); }

}  // namespace ember::serve

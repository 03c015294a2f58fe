#pragma once
#include <string>
#include <vector>

namespace ember::cli {

// Runs this executable as a child (`ember ARGS...`) with `stdin_text` on its standard input and
// returns the seconds from the spawn to the first complete line on its standard output: the
// time a user waits from exec to the first embedding.
double seconds_to_first_output_line(const std::vector<std::string>& args, const std::string& stdin_text);

}  // namespace ember::cli

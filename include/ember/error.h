#pragma once
// Every failure in libember surfaces as ember::Error with a message a user can act on
// (it names the file, tensor, line or option at fault). Library code never prints or exits.
#include <stdexcept>
#include <string>

namespace ember {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ember

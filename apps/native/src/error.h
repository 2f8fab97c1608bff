// lowbit's one error type: a one-line message that names the file or field and what is wrong.
#pragma once

#include <stdexcept>
#include <string>

namespace lowbit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace lowbit

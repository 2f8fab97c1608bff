// A minimal check harness for the native tests: each executable gets the fixture manifest
// (written by tests/native in Python from the reference implementations), counts its checks
// and ends with "NAME: N passed, M failed".
#pragma once

#include <cstdio>
#include <iostream>
#include <string>

#include "json_util.h"

namespace lowbit::test {

class Checks {
 public:
  explicit Checks(std::string name) : name_(std::move(name)) {}

  bool Expect(bool ok, const std::string& what) {
    ok ? ++passed_ : ++failed_;
    if (!ok) std::cerr << name_ << ": FAILED " << what << "\n";
    return ok;
  }

  int Finish() const {
    std::printf("%s: %d passed, %d failed\n", name_.c_str(), passed_, failed_);
    return failed_ == 0 && passed_ > 0 ? 0 : 1;
  }

 private:
  std::string name_;
  int passed_ = 0, failed_ = 0;
};

/*! \brief `body()`'s exit code; an exception (a fixture that cannot be read) is a failed check. */
template <typename Body>
int Guarded(Checks& checks, Body body) {
  try {
    return body();
  } catch (const std::exception& e) {
    checks.Expect(false, std::string("unexpected error: ") + e.what());
    return checks.Finish();
  }
}

/*! \brief The fixture manifest named by the only argument. */
inline Json Manifest(int argc, char** argv) {
  if (argc != 2) throw std::runtime_error("usage: TEST MANIFEST_JSON");
  return ReadJsonFile(argv[1], "test manifest");
}

}  // namespace lowbit::test

#include "json_util.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "error.h"

namespace lowbit {

bool IsFile(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& folder, const std::string& name) {
  if (folder.empty() || folder.back() == '/') return folder + name;
  return folder + "/" + name;
}

std::string FirstLine(const std::string& message) {
  size_t end = message.find('\n');
  return end == std::string::npos ? message : message.substr(0, end);
}

Json ReadJsonFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + " does not exist (the " + what + ")");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return Json::parse(text.str());
  } catch (const Json::parse_error& e) {
    throw Error(path + " is not a valid " + what + " (bad JSON: " + FirstLine(e.what()) + ")");
  }
}

}  // namespace lowbit

// Reading JSON files and fields with one-line errors.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace lowbit {

using Json = nlohmann::ordered_json;  // keys keep their order: chunks read like OpenAI's

/*! \brief The file's JSON; a missing file or bad JSON is an Error naming the file and `what`. */
Json ReadJsonFile(const std::string& path, const std::string& what);

/*! \brief Whether `path` is a regular file. */
bool IsFile(const std::string& path);

/*! \brief `folder/name`. */
std::string JoinPath(const std::string& folder, const std::string& name);

/*! \brief The first line of an exception's message (TVM's errors carry tracebacks). */
std::string FirstLine(const std::string& message);

}  // namespace lowbit

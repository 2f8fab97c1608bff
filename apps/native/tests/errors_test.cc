// Bad input gets one line and leaves the engine usable: malformed JSON, unknown and unsupported
// fields, bad values, a truncated or corrupted shard, a library built for another model.
#include <string>

#include "check.h"
#include "lowbit/engine.h"

using lowbit::Json;

namespace {

struct Errors {
  std::vector<Json> chunks;
};

void Collect(const char* chunk_json, void* user_data) {
  static_cast<Errors*>(user_data)->chunks.push_back(Json::parse(chunk_json));
}

bool OneLine(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

}  // namespace

int Run(lowbit::test::Checks& checks, int argc, char** argv) {
  Json manifest = lowbit::test::Manifest(argc, argv);
  const std::string model_dir = manifest["model_dir"], model_lib = manifest["model_lib"];

  for (const Json& c : lowbit::ReadJsonFile(manifest["bad_engines"], "bad engines")) {  // {model_dir, model_lib, error}
    lowbit_engine* engine = lowbit_engine_create(c["model_dir"].get<std::string>().c_str(),
                                                 c["model_lib"].get<std::string>().c_str(), nullptr);
    std::string error = lowbit_last_error();
    checks.Expect(engine == nullptr && OneLine(error) && error.find(c["error"].get<std::string>()) != std::string::npos,
                  "create(" + c["model_dir"].get<std::string>() + ", " + c["model_lib"].get<std::string>() +
                      ") should fail with '" + c["error"].get<std::string>() + "', got '" + error + "'");
    lowbit_engine_free(engine);
  }
  checks.Expect(lowbit_engine_create(model_dir.c_str(), model_lib.c_str(), "{\"context_windw\": 5}") == nullptr &&
                    std::string(lowbit_last_error()).find("context_windw") != std::string::npos,
                "an unknown engine option is refused");

  lowbit_engine* engine = lowbit_engine_create(model_dir.c_str(), model_lib.c_str(), "{\"context_window\": 256}");
  if (!checks.Expect(engine != nullptr, std::string("create: ") + lowbit_last_error())) return checks.Finish();
  const std::vector<std::pair<std::string, std::string>> bad_requests = {
      {"{\"messages\": [", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temprature\": 0}", "unknown field 'temprature'"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{}]}", "'tools' is not supported"},
      {"{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "role \"robot\" is not supported"},
      {"{\"messages\": []}", "non-empty list"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_p\": 1.5}", "top_p must be in (0, 1]"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}", "'temperature' has the wrong type"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logit_bias\": {\"99999999\": 5}}", "outside the vocabulary"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 3}", "n must be 1"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"" + std::string(2000, 'x') + " " + std::string(2000, 'y') +
           "\"}]}", "does not fit the context window of 256"},
  };
  for (const auto& [request, expected] : bad_requests) {
    Errors out;
    int rc = lowbit_engine_chat_completion(engine, request.c_str(), Collect, &out);
    std::string error = lowbit_last_error();
    bool one_chunk = out.chunks.size() == 1 && out.chunks[0].contains("error") &&
                     out.chunks[0]["error"]["message"] == error;
    checks.Expect(rc == -1 && one_chunk && OneLine(error) && error.find(expected) != std::string::npos,
                  "request " + request.substr(0, 80) + " should give one error chunk with '" + expected + "', got '" + error + "'");
  }
  Errors ok;  // and the engine still answers
  int rc = lowbit_engine_chat_completion(engine, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 4}",
                                         Collect, &ok);
  checks.Expect(rc == 0 && ok.chunks.size() >= 2 && ok.chunks.back().contains("usage"), "a good request after bad ones works");
  lowbit_engine_free(engine);
  return checks.Finish();
}

int main(int argc, char** argv) {
  lowbit::test::Checks checks("errors");
  return lowbit::test::Guarded(checks, [&] { return Run(checks, argc, argv); });
}

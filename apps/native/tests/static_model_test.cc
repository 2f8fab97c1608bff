// A model linked into the program (llvm-static archive, loaded as system://PREFIX) generates the
// tokens the Python engine generates from the same folder with the shared library.
#include "check.h"
#include "engine.h"

using lowbit::Json;

int Run(lowbit::test::Checks& checks, int argc, char** argv) {
  Json manifest = lowbit::test::Manifest(argc, argv);
  Json cases = lowbit::ReadJsonFile(manifest["static_cases"], "static model cases");
  lowbit::Engine engine(cases["model_dir"], "system://" + cases["prefix"].get<std::string>());
  for (const Json& c : cases["raw"]) {
    lowbit::GenerationRequest request;
    request.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    request.max_tokens = c["max_tokens"];
    request.stop_token_ids = engine.DefaultStopTokenIds();
    lowbit::GenerationResult result = engine.Generate(request, [](const std::string&) {});
    checks.Expect(Json(result.tokens) == c["tokens"], "tokens " + Json(result.tokens).dump() + " vs Python " + c["tokens"].dump());
  }
  return checks.Finish();
}

int main(int argc, char** argv) {
  lowbit::test::Checks checks("static_model");
  return lowbit::test::Guarded(checks, [&] { return Run(checks, argc, argv); });
}

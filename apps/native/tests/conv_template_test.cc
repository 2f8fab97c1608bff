// The conv_template renderer gives the prompt Python's ConvTemplate (runtime/tokenizer.py) gives,
// for multi-turn chats over several templates, and the same refusals.
#include "check.h"
#include "conv_template.h"
#include "error.h"

using lowbit::Json;

int Run(lowbit::test::Checks& checks, int argc, char** argv) {
  Json manifest = lowbit::test::Manifest(argc, argv);
  Json cases = lowbit::ReadJsonFile(manifest["conv_cases"], "conv cases");
  for (size_t i = 0; i < cases.size(); ++i) {
    const Json& c = cases[i];
    const std::string label = "case " + std::to_string(i) + " (" + c["conv"].value("name", "") + ")";
    lowbit::ConvTemplate conv = lowbit::ConvTemplate::FromJson(c["conv"]);
    if (c.contains("error")) {
      std::string message;
      try {
        conv.Render(c["messages"], c["add_generation_prompt"]);
      } catch (const lowbit::Error& e) {
        message = e.what();
      }
      checks.Expect(message.find(c["error"].get<std::string>()) != std::string::npos,
                    label + ": expected an error with '" + c["error"].get<std::string>() + "', got '" + message + "'");
      continue;
    }
    std::string got = conv.Render(c["messages"], c["add_generation_prompt"]);
    checks.Expect(got == c["text"].get<std::string>(), label + ": got " + Json(got).dump() + " want " + c["text"].dump());
    checks.Expect(conv.system_prefix_token_ids() == c["prefix_ids"].get<std::vector<int32_t>>(), label + ": prefix ids");
  }
  return checks.Finish();
}

int main(int argc, char** argv) {
  lowbit::test::Checks checks("conv_template");
  return lowbit::test::Guarded(checks, [&] { return Run(checks, argc, argv); });
}

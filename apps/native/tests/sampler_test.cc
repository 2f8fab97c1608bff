// The sampler against runtime/sampler.py: NumPy's default_rng stream, the token an inverse-CDF
// draw picks for a given uniform, and whole seeded runs with penalties (counts), bias and filters.
#include <cstring>

#include "check.h"
#include "sampler.h"

using lowbit::Json;

namespace {

lowbit::SamplingParams Params(const Json& p) {
  lowbit::SamplingParams s;
  s.temperature = p["temperature"];
  s.top_p = p["top_p"];
  s.top_k = p["top_k"];
  s.repetition_penalty = p["repetition_penalty"];
  s.presence_penalty = p["presence_penalty"];
  s.frequency_penalty = p["frequency_penalty"];
  for (const Json& pair : p["logit_bias"]) s.logit_bias.emplace_back(pair[0].get<int32_t>(), pair[1].get<double>());
  if (!p["seed"].is_null()) s.seed = p["seed"].get<uint64_t>();
  return s;
}

}  // namespace

int Run(lowbit::test::Checks& checks, int argc, char** argv) {
  Json manifest = lowbit::test::Manifest(argc, argv);
  Json cases = lowbit::ReadJsonFile(manifest["sampler_cases"], "sampler cases");
  for (const Json& c : cases["rng"]) {
    lowbit::Pcg64 rng(c["seed"].get<uint64_t>());
    for (const Json& want : c["doubles"]) {
      double got = rng.NextDouble();
      checks.Expect(std::memcmp(&got, &want.get_ref<const double&>(), sizeof got) == 0,
                    "seed " + c["seed"].dump() + ": random() " + std::to_string(got) + " vs NumPy " + want.dump());
    }
  }
  int i = 0;
  for (const Json& c : cases["pick"]) {
    lowbit::Sampler sampler(Params(c["params"]));
    auto adjusted = sampler.Adjusted(c["logits"].get<std::vector<float>>(), c["history"].get<std::vector<int32_t>>());
    int32_t got = sampler.Pick(adjusted, c["u"]);
    checks.Expect(got == c["token"].get<int32_t>(), "pick case " + std::to_string(i) + ": " + std::to_string(got) +
                                                        " vs Python " + c["token"].dump());
    ++i;
  }
  i = 0;
  for (const Json& c : cases["runs"]) {
    lowbit::Sampler sampler(Params(c["params"]));
    std::vector<int32_t> got;
    for (const Json& step : c["steps"])
      got.push_back(sampler.Sample(step["logits"].get<std::vector<float>>(), step["history"].get<std::vector<int32_t>>()));
    checks.Expect(Json(got) == c["tokens"], "run " + std::to_string(i) + ": " + Json(got).dump() + " vs Python " + c["tokens"].dump());
    ++i;
  }
  return checks.Finish();
}

int main(int argc, char** argv) {
  lowbit::test::Checks checks("sampler");
  return lowbit::test::Guarded(checks, [&] { return Run(checks, argc, argv); });
}

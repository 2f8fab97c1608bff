// The engine on the bundled model against the Python engine (same folder, same library): greedy
// raw-prompt tokens equal `lowbit run`'s, chat replies equal the Python conv_template path turn by
// turn (the second turn reusing the first's KV cache), and the C API's chunks, usage and abort.
#include <string>
#include <vector>

#include "check.h"
#include "engine.h"
#include "lowbit/engine.h"

using lowbit::Json;

namespace {

struct Collected {
  std::vector<Json> chunks;
  std::string text;
  std::string finish_reason;
  Json usage;
  bool abort_on_first = false;
  lowbit_engine* engine = nullptr;
};

void Collect(const char* chunk_json, void* user_data) {
  auto* out = static_cast<Collected*>(user_data);
  Json chunk = Json::parse(chunk_json);
  out->chunks.push_back(chunk);
  if (chunk.contains("usage")) out->usage = chunk["usage"];
  if (!chunk.contains("choices") || chunk["choices"].empty()) return;
  const Json& choice = chunk["choices"][0];
  if (choice.contains("delta")) out->text += choice["delta"].value("content", "");
  if (choice.contains("text")) out->text += choice["text"].get<std::string>();
  if (!choice["finish_reason"].is_null()) out->finish_reason = choice["finish_reason"];
  if (out->abort_on_first) lowbit_engine_abort(out->engine);
}

}  // namespace

int Run(lowbit::test::Checks& checks, int argc, char** argv) {
  Json manifest = lowbit::test::Manifest(argc, argv);
  Json cases = lowbit::ReadJsonFile(manifest["run_cases"], "run cases");
  const std::string model_dir = manifest["model_dir"], model_lib = manifest["model_lib"];

  {  // the C++ engine: raw prompts, greedy, tokens as the Python engine samples them
    lowbit::Engine engine(model_dir, model_lib);
    for (const Json& c : cases["raw"]) {
      lowbit::GenerationRequest request;
      request.prompt = engine.tokenizer().Encode(c["prompt"], true);
      request.max_tokens = c["max_tokens"];
      request.stop = c["stop"].get<std::vector<std::string>>();
      request.stop_token_ids = engine.DefaultStopTokenIds();
      checks.Expect(Json(request.prompt) == c["prompt_ids"], "prompt ids of " + c["prompt"].dump());
      lowbit::GenerationResult result = engine.Generate(request, [](const std::string&) {});
      checks.Expect(Json(result.tokens) == c["tokens"], "tokens of " + c["prompt"].dump() + ": " + Json(result.tokens).dump() +
                                                            " vs Python " + c["tokens"].dump());
      checks.Expect(result.text == c["text"].get<std::string>(), "text of " + c["prompt"].dump() + ": " + Json(result.text).dump());
      checks.Expect(result.finish_reason == c["finish_reason"].get<std::string>(), "finish reason " + result.finish_reason);
    }
  }

  lowbit_engine* engine = lowbit_engine_create(model_dir.c_str(), model_lib.c_str(), nullptr);
  if (!checks.Expect(engine != nullptr, std::string("create: ") + lowbit_last_error())) return checks.Finish();

  for (const Json& c : cases["raw"]) {  // the same through the C API's completion endpoint
    Json request = {{"prompt", c["prompt"]}, {"temperature", 0}, {"max_tokens", c["max_tokens"]}, {"stop", c["stop"]}};
    Collected out;
    int rc = lowbit_engine_completion(engine, request.dump().c_str(), Collect, &out);
    checks.Expect(rc == 0, std::string("completion: ") + lowbit_last_error());
    checks.Expect(out.text == c["text"].get<std::string>(), "completion text " + Json(out.text).dump());
    checks.Expect(out.finish_reason == c["finish_reason"].get<std::string>(), "completion finish " + out.finish_reason);
    checks.Expect(out.chunks.back().contains("usage") && out.chunks.back()["choices"].empty(), "the last chunk is the usage");
    checks.Expect(out.usage["completion_tokens"] == c["tokens"].size(), "usage completion_tokens " + out.usage.dump());
    checks.Expect(out.usage["extra"]["decode_tokens_per_s"].get<double>() > 0 &&
                      out.usage["extra"]["prefill_tokens_per_s"].get<double>() > 0, "usage tok/s " + out.usage.dump());
  }

  Json messages = Json::array();  // a conversation, turn by turn, as a client sends it
  for (size_t turn = 0; turn < cases["chat"].size(); ++turn) {
    const Json& c = cases["chat"][turn];
    for (const Json& m : c["new_messages"]) messages.push_back(m);
    Json request = {{"messages", messages}, {"temperature", 0}, {"max_tokens", c["max_tokens"]}};
    Collected out;
    int rc = lowbit_engine_chat_completion(engine, request.dump().c_str(), Collect, &out);
    const std::string label = "chat turn " + std::to_string(turn);
    checks.Expect(rc == 0, label + ": " + lowbit_last_error());
    checks.Expect(out.text == c["text"].get<std::string>(), label + " text " + Json(out.text).dump() + " vs Python " + c["text"].dump());
    checks.Expect(out.chunks.front()["object"] == "chat.completion.chunk" &&
                      out.chunks.front()["choices"][0]["delta"]["role"] == "assistant", label + ": the first delta has the role");
    checks.Expect(out.usage["prompt_tokens"] == c["prompt_tokens"], label + " prompt tokens " + out.usage.dump());
    if (turn > 0)
      checks.Expect(out.usage["extra"]["cached_prompt_tokens"].get<int64_t>() >= c["min_cached"].get<int64_t>(),
                    label + ": reuses the previous turn's KV cache " + out.usage.dump());
    messages.push_back({{"role", "assistant"}, {"content", out.text}});
  }

  {  // reset forgets the conversation: the same request then reuses nothing
    lowbit_engine_reset(engine);
    Json request = {{"messages", messages}, {"temperature", 0}, {"max_tokens", 2}};
    Collected out;
    lowbit_engine_chat_completion(engine, request.dump().c_str(), Collect, &out);
    checks.Expect(out.usage["extra"]["cached_prompt_tokens"] == 0, "after reset nothing is cached: " + out.usage.dump());
  }

  {  // abort from the callback: the reply ends "interrupted" and the engine goes on
    Collected out;
    out.abort_on_first = true;
    out.engine = engine;
    Json request = {{"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 64}};
    lowbit_engine_completion(engine, request.dump().c_str(), Collect, &out);
    checks.Expect(out.finish_reason == "interrupted" && out.usage["completion_tokens"].get<int64_t>() < 64,
                  "abort: " + out.finish_reason + " " + out.usage.dump());
    Collected again;
    const Json& c = cases["raw"][0];
    request = {{"prompt", c["prompt"]}, {"temperature", 0}, {"max_tokens", c["max_tokens"]}, {"stop", c["stop"]}};
    lowbit_engine_completion(engine, request.dump().c_str(), Collect, &again);
    checks.Expect(again.text == c["text"].get<std::string>(), "after an abort the engine answers as before");
  }

  {  // seeded sampling repeats itself
    Json request = {{"prompt", "The weather today"}, {"temperature", 0.8}, {"top_p", 0.9}, {"seed", 7}, {"max_tokens", 12}};
    Collected a, b;
    lowbit_engine_completion(engine, request.dump().c_str(), Collect, &a);
    lowbit_engine_completion(engine, request.dump().c_str(), Collect, &b);
    checks.Expect(!a.text.empty() && a.text == b.text, "a seeded request repeats: " + Json(a.text).dump() + " / " + Json(b.text).dump());
    checks.Expect(a.text == cases["seeded_text"].get<std::string>(),
                  "seeded sampling equals Python's: " + Json(a.text).dump() + " vs " + cases["seeded_text"].dump());
  }
  lowbit_engine_free(engine);
  return checks.Finish();
}

int main(int argc, char** argv) {
  lowbit::test::Checks checks("engine");
  return lowbit::test::Guarded(checks, [&] { return Run(checks, argc, argv); });
}

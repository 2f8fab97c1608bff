// lowbit-native: generate from a compiled model with the native engine (no Python), e.g. on a
// phone's shell or under qemu.
//
//   lowbit-native MODEL_DIR MODEL_LIB --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
//   lowbit-native MODEL_DIR MODEL_LIB --chat TEXT ...        (one user turn, the conv_template)
//   lowbit-native MODEL_DIR MODEL_LIB --request JSON_FILE    (an OpenAI chat request; prints chunks)
//
// Text streams to stdout; the speed line goes to stderr. --tokens prints the generated token ids
// as a JSON list after the text.
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "engine.h"
#include "error.h"

namespace {

int Usage() {
  std::cerr << "usage: lowbit-native MODEL_DIR MODEL_LIB (--prompt TEXT | --chat TEXT | --request FILE)\n"
               "       [--max-tokens N] [--temperature T] [--seed S] [--tokens]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return Usage();
  std::string prompt, chat, request_file;
  lowbit::Json sampling = lowbit::Json::object();
  bool print_tokens = false;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw lowbit::Error(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--prompt") prompt = value();
      else if (arg == "--chat") chat = value();
      else if (arg == "--request") request_file = value();
      else if (arg == "--max-tokens") sampling["max_tokens"] = std::stoll(value());
      else if (arg == "--temperature") sampling["temperature"] = std::stod(value());
      else if (arg == "--seed") sampling["seed"] = std::stoull(value());
      else if (arg == "--tokens") print_tokens = true;
      else return Usage();
    } catch (const std::exception& e) {
      std::cerr << "lowbit-native: bad value for " << arg << "\n";
      return 2;
    }
  }
  try {
    lowbit::Engine engine(argv[1], argv[2]);
    if (!request_file.empty()) {
      std::ifstream in(request_file);
      if (!in) throw lowbit::Error("cannot read " + request_file);
      std::stringstream text;
      text << in.rdbuf();
      bool ok = engine.ChatCompletion(text.str(), [](const std::string& chunk) { std::cout << chunk << "\n" << std::flush; });
      return ok ? 0 : 1;
    }
    lowbit::GenerationRequest request;
    if (!chat.empty()) {
      request.prompt = engine.ChatPromptIds(lowbit::Json::array({{{"role", "user"}, {"content", chat}}}));
      request.stop = engine.conv_template().stop_str();
    } else if (!prompt.empty()) {
      request.prompt = engine.tokenizer().Encode(prompt, true);
    } else {
      return Usage();
    }
    request.sampling = engine.Sampling(sampling);
    request.max_tokens = sampling.value("max_tokens", int64_t{256});
    request.stop_token_ids = engine.DefaultStopTokenIds();
    lowbit::GenerationResult result = engine.Generate(request, [](const std::string& text) { std::cout << text << std::flush; });
    std::cout << "\n";
    if (print_tokens) std::cout << lowbit::Json(result.tokens).dump() << "\n";
    std::fprintf(stderr, "prefill: %lld tok, %.1f tok/s; decode: %zu tok, %.1f tok/s\n",
                 static_cast<long long>(result.prompt_tokens), result.prompt_tokens / std::max(result.prefill_seconds, 1e-9),
                 result.tokens.size(), result.tokens.size() / std::max(result.decode_seconds, 1e-9));
  } catch (const std::exception& e) {
    std::cerr << "lowbit-native: " << lowbit::FirstLine(e.what()) << "\n";
    return 1;
  }
  return 0;
}

#include "engine.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <set>

#include "error.h"

namespace lowbit {
namespace {

const char kChatConfig[] = "mlc-chat-config.json";

// Holds back text that may be the start of a stop string; cuts the output at the first one
// (runtime/engine.py's StopStrings; the text is whole UTF-8 characters, so byte offsets agree).
class StopStrings {
 public:
  explicit StopStrings(const std::vector<std::string>& stops) {
    for (const auto& s : stops)
      if (!s.empty()) stops_.push_back(s);
  }

  /*! \brief (text safe to emit now, whether a stop string was reached). */
  std::pair<std::string, bool> Push(const std::string& delta) {
    text_ += delta;
    size_t first = std::string::npos;
    for (const auto& s : stops_) {
      size_t from = emitted_ > s.size() ? emitted_ - s.size() : 0;
      first = std::min(first, text_.find(s, from));
    }
    if (first != std::string::npos) {
      std::string out = first > emitted_ ? text_.substr(emitted_, first - emitted_) : "";
      emitted_ = std::max(emitted_, first);
      return {out, true};
    }
    size_t hold = 0;
    for (const auto& s : stops_)
      for (size_t k = 1; k < s.size(); ++k)
        if (text_.size() >= k && text_.compare(text_.size() - k, k, s, 0, k) == 0) hold = std::max(hold, k);
    size_t end = std::max(emitted_, text_.size() - hold);
    std::string out = text_.substr(emitted_, end - emitted_);
    emitted_ = end;
    return {out, false};
  }

  std::string Flush() {
    std::string out = text_.substr(emitted_);
    emitted_ = text_.size();
    return out;
  }

 private:
  std::vector<std::string> stops_;
  std::string text_;
  size_t emitted_ = 0;
};

std::vector<int32_t> AsIdList(const Json& value) {
  if (value.is_number_integer()) return {value.get<int32_t>()};
  if (value.is_array()) return value.get<std::vector<int32_t>>();
  return {};
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// The request fields the engine reads, and OpenAI fields it refuses (rather than ignore).
const std::set<std::string> kCommonFields = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "logit_bias", "seed", "stop", "stream", "stream_options", "n", "user"};
const std::set<std::string> kChatFields = {"messages", "max_completion_tokens", "response_format"};
const std::set<std::string> kCompletionFields = {"prompt"};
const std::set<std::string> kUnsupported = {
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "logprobs",
    "top_logprobs", "echo", "best_of", "suffix"};

void CheckFields(const Json& request, bool chat) {
  if (!request.is_object()) throw Error("the request must be a JSON object");
  for (const auto& [key, value] : request.items()) {
    if (kCommonFields.count(key) || (chat ? kChatFields : kCompletionFields).count(key)) continue;
    if (kUnsupported.count(key)) {
      if (value.is_null() || value == false) continue;
      throw Error("field '" + key + "' is not supported by the native engine");
    }
    throw Error("unknown field '" + key + "'");
  }
  if (request.contains("n") && !request["n"].is_null() && request["n"] != 1)
    throw Error("the native engine generates one choice: n must be 1");
  if (request.contains("response_format") && !request["response_format"].is_null() &&
      request["response_format"].value("type", "") != "text")
    throw Error("response_format other than text is not supported by the native engine");
}

// A field's value, or `fallback` when absent or null (clients that send every field send nulls).
template <typename T>
T Field(const Json& request, const char* key, T fallback) {
  if (!request.contains(key) || request[key].is_null()) return fallback;
  try {
    return request[key].get<T>();
  } catch (const Json::exception&) {
    throw Error(std::string("field '") + key + "' has the wrong type");
  }
}

}  // namespace

Engine::Engine(const std::string& model_dir, const std::string& model_lib, const EngineOptions& options) {
  std::string config_path = JoinPath(model_dir, kChatConfig);
  if (!IsFile(config_path)) throw Error(model_dir + " is not an MLC model folder (no " + kChatConfig + ")");
  chat_config_ = ReadJsonFile(config_path, "chat config");
  if (!chat_config_.is_object()) throw Error(config_path + " is not a JSON object");
  for (const char* key : {"model_type", "quantization", "model_config"})
    if (!chat_config_.contains(key)) throw Error(config_path + " has no '" + key + "'");
  if (!chat_config_.contains("conv_template") || !chat_config_["conv_template"].is_object())
    throw Error(config_path + " has no conv_template object (convert the model with lowbit or mlc_llm)");
  conv_ = ConvTemplate::FromJson(chat_config_["conv_template"]);
  std::string tokenizer_path = JoinPath(model_dir, "tokenizer.json");
  if (!IsFile(tokenizer_path)) throw Error(model_dir + " has no tokenizer.json");
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::FromFile(tokenizer_path));
  std::string tokenizer_config = JoinPath(model_dir, "tokenizer_config.json");
  tokenizer_config_ = IsFile(tokenizer_config) ? ReadJsonFile(tokenizer_config, "tokenizer config") : Json::object();
  model_ = std::make_unique<Model>(model_dir, model_lib, chat_config_, ModelOptions{options.context_window, options.check_md5});
  size_t slash = model_dir.find_last_not_of('/');
  std::string trimmed = model_dir.substr(0, slash + 1);
  model_id_ = trimmed.substr(trimmed.find_last_of('/') + 1);
}

std::vector<int32_t> Engine::DefaultStopTokenIds() const {
  std::vector<int32_t> ids = AsIdList(chat_config_.value("eos_token_id", Json()));
  for (int32_t id : conv_.stop_token_ids()) ids.push_back(id);
  Json eos = tokenizer_config_.value("eos_token", Json());
  if (eos.is_object()) eos = eos.value("content", Json());
  if (eos.is_string() && tokenizer_->TokenToId(eos.get<std::string>()) >= 0)
    ids.push_back(tokenizer_->TokenToId(eos.get<std::string>()));
  std::vector<int32_t> unique;
  for (int32_t id : ids)
    if (std::find(unique.begin(), unique.end(), id) == unique.end()) unique.push_back(id);
  return unique;
}

SamplingParams Engine::Sampling(const Json& request) const {
  auto pick = [&](const char* key, double fallback) {
    if (request.contains(key) && !request[key].is_null()) return Field<double>(request, key, fallback);
    return chat_config_.contains(key) && chat_config_[key].is_number() ? chat_config_[key].get<double>() : fallback;
  };
  SamplingParams p;
  p.temperature = pick("temperature", 0.0);
  p.top_p = pick("top_p", 1.0);
  p.repetition_penalty = pick("repetition_penalty", 1.0);
  p.presence_penalty = Field<double>(request, "presence_penalty", 0.0);
  p.frequency_penalty = Field<double>(request, "frequency_penalty", 0.0);
  p.top_k = Field<int64_t>(request, "top_k", 0);
  if (request.contains("seed") && !request["seed"].is_null()) {
    if (!request["seed"].is_number_integer() || request["seed"].get<int64_t>() < 0)
      throw Error("seed must be a non-negative integer");
    p.seed = request["seed"].get<uint64_t>();
  }
  if (request.contains("logit_bias") && !request["logit_bias"].is_null()) {
    if (!request["logit_bias"].is_object()) throw Error("logit_bias must map token ids to numbers");
    for (const auto& [token, bias] : request["logit_bias"].items()) {
      size_t used = 0;
      int32_t id = -1;
      try {
        id = std::stoi(token, &used);
      } catch (const std::exception&) {
      }
      if (used != token.size() || !bias.is_number()) throw Error("logit_bias must map token ids to numbers");
      p.logit_bias.emplace_back(id, bias.get<double>());
    }
  }
  p.Validate(model_->vocab_size());
  return p;
}

std::vector<int32_t> Engine::ChatPromptIds(const Json& messages) const {
  std::vector<int32_t> ids = conv_.system_prefix_token_ids();
  std::vector<int32_t> text = tokenizer_->Encode(conv_.Render(messages), false);
  ids.insert(ids.end(), text.begin(), text.end());
  return ids;
}

void Engine::CheckPrompt(const std::vector<int32_t>& ids) const {
  if (ids.empty()) throw Error("the prompt is empty");
  if (static_cast<int64_t>(ids.size()) >= model_->context_window())
    throw Error("prompt of " + std::to_string(ids.size()) + " tokens does not fit the context window of " +
                std::to_string(model_->context_window()) + " tokens");
}

GenerationResult Engine::Generate(const GenerationRequest& request, const std::function<void(const std::string&)>& on_text) {
  const std::vector<int32_t>& ids = request.prompt;
  const int64_t window = model_->context_window();
  CheckPrompt(ids);
  abort_ = false;
  GenerationResult result;
  const std::vector<int32_t>& cached = model_->cached();
  size_t keep = 0;  // the common prefix with what the KV cache holds
  while (keep < cached.size() && keep < ids.size() && cached[keep] == ids[keep]) ++keep;
  model_->Rewind(static_cast<int64_t>(std::min(keep, ids.size() - 1)));  // ≥ 1 token to prefill, for logits
  result.cached_prompt_tokens = static_cast<int64_t>(model_->cached().size());
  std::vector<int32_t> fresh(ids.begin() + static_cast<int64_t>(model_->cached().size()), ids.end());
  result.prompt_tokens = static_cast<int64_t>(fresh.size());

  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = model_->Prefill(fresh);
  result.prefill_seconds = Seconds(t0);

  Sampler sampler(request.sampling);
  StreamDecoder stream(*tokenizer_);
  StopStrings stops(request.stop);
  const std::set<int32_t> stop_ids(request.stop_token_ids.begin(), request.stop_token_ids.end());
  const int64_t budget = request.max_tokens < 0 ? window : request.max_tokens;
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    on_text(text);
  };
  t0 = std::chrono::steady_clock::now();
  while (true) {
    if (abort_) {
      result.finish_reason = "interrupted";
      break;
    }
    if (budget < 1) {
      result.finish_reason = "length";
      break;
    }
    const int64_t room = window - static_cast<int64_t>(model_->cached().size());
    int32_t token = sampler.Sample(logits, model_->cached());
    result.tokens.push_back(token);
    if (stop_ids.count(token)) {
      result.finish_reason = "stop";
      break;
    }
    auto [text, hit] = stops.Push(stream.Push(token));
    emit(text);
    if (hit) {
      result.finish_reason = "stop";
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= budget) {
      result.finish_reason = "length";
    } else if (room < 1) {
      result.finish_reason = "context";
    }
    if (!result.finish_reason.empty()) break;
    logits = model_->Decode(token);
  }
  result.decode_seconds = Seconds(t0);
  if (result.finish_reason != "stop") emit(stops.Flush());
  return result;
}

bool Engine::ChatCompletion(const std::string& request_json, const ChunkCallback& on_chunk) {
  return Serve(request_json, true, on_chunk);
}

bool Engine::Completion(const std::string& request_json, const ChunkCallback& on_chunk) {
  return Serve(request_json, false, on_chunk);
}

bool Engine::Serve(const std::string& request_json, bool chat, const ChunkCallback& on_chunk) {
  const std::string id = std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(++next_request_);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  auto chunk = [&](Json choices) {
    return Json{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model_id_}, {"choices", std::move(choices)}};
  };
  bool started = false;  // the model has been run: a failure now leaves the KV cache unknown
  last_error_.clear();
  try {
    Json request;
    try {
      request = Json::parse(request_json);
    } catch (const Json::parse_error& e) {
      throw Error(std::string("the request is not valid JSON (") + FirstLine(e.what()) + ")");
    }
    CheckFields(request, chat);
    GenerationRequest gen;
    std::vector<std::string> stops;
    if (request.contains("stop") && !request["stop"].is_null()) {
      const Json& stop = request["stop"];
      if (stop.is_string()) {
        stops = {stop.get<std::string>()};
      } else if (stop.is_array() && std::all_of(stop.begin(), stop.end(), [](const Json& s) { return s.is_string(); })) {
        stops = stop.get<std::vector<std::string>>();
      } else {
        throw Error("stop must be a string or a list of strings");
      }
    }
    if (chat) {
      if (!request.contains("messages")) throw Error("the request has no messages");
      gen.prompt = ChatPromptIds(request["messages"]);
      for (const auto& s : conv_.stop_str()) stops.push_back(s);
    } else {
      if (!request.contains("prompt") || !request["prompt"].is_string()) throw Error("prompt must be a string");
      gen.prompt = tokenizer_->Encode(request["prompt"].get<std::string>(), true);
    }
    gen.stop = stops;
    gen.sampling = Sampling(request);
    for (const char* key : {"max_tokens", "max_completion_tokens"}) {
      int64_t limit = Field<int64_t>(request, key, -1);
      if (request.contains(key) && !request[key].is_null()) {
        if (limit < 0) throw Error(std::string(key) + " must be >= 0");
        gen.max_tokens = limit;
      }
    }
    gen.stop_token_ids = DefaultStopTokenIds();

    CheckPrompt(gen.prompt);
    bool first = true;
    started = true;
    GenerationResult result = Generate(gen, [&](const std::string& text) {
      Json delta = chat ? Json{{"content", text}} : Json();
      if (chat && first) delta["role"] = "assistant";
      first = false;
      on_chunk(chunk(Json::array({chat ? Json{{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}}
                                       : Json{{"index", 0}, {"text", text}, {"finish_reason", nullptr}}}))
                   .dump());
    });
    std::string reason = result.finish_reason == "context" ? "length" : result.finish_reason;
    on_chunk(chunk(Json::array({chat ? Json{{"index", 0}, {"delta", Json::object()}, {"finish_reason", reason}}
                                     : Json{{"index", 0}, {"text", ""}, {"finish_reason", reason}}}))
                 .dump());
    const auto generated = static_cast<int64_t>(result.tokens.size());
    const int64_t prompt = result.prompt_tokens + result.cached_prompt_tokens;
    Json usage = {{"prompt_tokens", prompt},
                  {"completion_tokens", generated},
                  {"total_tokens", prompt + generated},
                  {"extra",
                   {{"prefill_tokens", result.prompt_tokens},
                    {"cached_prompt_tokens", result.cached_prompt_tokens},
                    {"prefill_tokens_per_s", result.prefill_seconds > 0 ? result.prompt_tokens / result.prefill_seconds : 0.0},
                    {"decode_tokens_per_s", result.decode_seconds > 0 ? generated / result.decode_seconds : 0.0},
                    {"ttft_s", result.prefill_seconds}}}};
    Json last = chunk(Json::array());
    last["usage"] = usage;
    on_chunk(last.dump());
    return true;
  } catch (const std::exception& e) {
    const bool bad_request = dynamic_cast<const Error*>(&e) != nullptr && !started;
    if (started) model_->Reset();  // a failure mid-forward: start the next request from a clean cache
    last_error_ = FirstLine(e.what());
    Json error = {{"error", {{"message", last_error_}, {"type", bad_request ? "invalid_request_error" : "internal_error"}}}};
    on_chunk(error.dump());
    return false;
  }
}

}  // namespace lowbit

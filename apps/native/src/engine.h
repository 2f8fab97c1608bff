// The native engine: an MLC folder + a compiled lowbit library, one conversation at a time, with
// OpenAI-shaped JSON in and streamed JSON chunks out (the core of include/lowbit/engine.h).
// Generation follows runtime/engine.py: the cached prefix of the previous turn is reused, stop
// tokens end the reply unseen, stop strings cut it before them, text is held back while it may
// still become a stop string, and UTF-8 characters are never split.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conv_template.h"
#include "json_util.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

namespace lowbit {

struct EngineOptions {
  int64_t context_window = 0;  // 0: the library's
  bool check_md5 = true;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // the whole context, tokenized
  SamplingParams sampling;
  int64_t max_tokens = -1;  // -1: until the context is full
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // sampled, the stop token included
  std::string text;
  std::string finish_reason;  // "stop", "length", "context" or "interrupted"
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

using ChunkCallback = std::function<void(const std::string& chunk_json)>;

class Engine {
 public:
  Engine(const std::string& model_dir, const std::string& model_lib, const EngineOptions& options = {});

  /*! \brief Stream an OpenAI chat completion request's reply as chat.completion.chunk JSON,
   *  ending with a usage chunk; a bad request or a failure is one error chunk. Returns success. */
  bool ChatCompletion(const std::string& request_json, const ChunkCallback& on_chunk);
  /*! \brief The same for an OpenAI (legacy) completion request: a raw prompt, no template. */
  bool Completion(const std::string& request_json, const ChunkCallback& on_chunk);

  /*! \brief Generate after `request.prompt`, calling `on_text` with each text delta. */
  GenerationResult Generate(const GenerationRequest& request, const std::function<void(const std::string&)>& on_text);

  /*! \brief Stop the running generation after its current token (any thread). */
  void Abort() { abort_ = true; }
  /*! \brief Forget the cached conversation. */
  void Reset() { model_->Reset(); }

  /*! \brief The token ids of a chat rendered by the conv_template, the assistant's turn next. */
  std::vector<int32_t> ChatPromptIds(const Json& messages) const;
  std::vector<int32_t> DefaultStopTokenIds() const;
  /*! \brief Sampling from the request's fields, the rest from mlc-chat-config.json. */
  SamplingParams Sampling(const Json& request) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ConvTemplate& conv_template() const { return conv_; }
  Model& model() { return *model_; }
  /*! \brief The message of the last request's error chunk. */
  const std::string& last_error() const { return last_error_; }

 private:
  bool Serve(const std::string& request_json, bool chat, const ChunkCallback& on_chunk);
  void CheckPrompt(const std::vector<int32_t>& ids) const;

  Json chat_config_, tokenizer_config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ConvTemplate conv_;
  std::string model_id_;
  std::atomic<bool> abort_{false};
  uint64_t next_request_ = 0;
  std::string last_error_;
};

}  // namespace lowbit

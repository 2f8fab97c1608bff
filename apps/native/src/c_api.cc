// The C API of include/lowbit/engine.h over lowbit::Engine: no exception crosses it.
#include "lowbit/engine.h"

#include <memory>
#include <string>

#include "engine.h"
#include "error.h"
#include "json_util.h"

namespace {

thread_local std::string last_error;

lowbit::EngineOptions ParseOptions(const char* options_json) {
  lowbit::EngineOptions options;
  if (options_json == nullptr || *options_json == '\0') return options;
  lowbit::Json json;
  try {
    json = lowbit::Json::parse(options_json);
  } catch (const lowbit::Json::parse_error& e) {
    throw lowbit::Error(std::string("engine options are not valid JSON (") + lowbit::FirstLine(e.what()) + ")");
  }
  if (!json.is_object()) throw lowbit::Error("engine options must be a JSON object");
  for (const auto& [key, value] : json.items()) {
    if (key == "context_window" && value.is_number_integer() && value.get<int64_t>() >= 0) {
      options.context_window = value.get<int64_t>();
    } else if (key == "check_md5" && value.is_boolean()) {
      options.check_md5 = value.get<bool>();
    } else {
      throw lowbit::Error("unknown or invalid engine option '" + key + "'");
    }
  }
  return options;
}

int Run(lowbit_engine* engine, const char* request_json, lowbit_chunk_callback callback, void* user_data, bool chat);

}  // namespace

struct lowbit_engine {
  std::unique_ptr<lowbit::Engine> engine;
};

extern "C" {

lowbit_engine* lowbit_engine_create(const char* model_dir, const char* model_lib, const char* options_json) {
  last_error.clear();
  try {
    if (model_dir == nullptr || model_lib == nullptr) throw lowbit::Error("model_dir and model_lib are required");
    auto handle = std::make_unique<lowbit_engine>();
    handle->engine = std::make_unique<lowbit::Engine>(model_dir, model_lib, ParseOptions(options_json));
    return handle.release();
  } catch (const std::exception& e) {
    last_error = lowbit::FirstLine(e.what());
  } catch (...) {
    last_error = "unknown error";
  }
  return nullptr;
}

int lowbit_engine_chat_completion(lowbit_engine* engine, const char* request_json, lowbit_chunk_callback callback,
                                  void* user_data) {
  return Run(engine, request_json, callback, user_data, true);
}

int lowbit_engine_completion(lowbit_engine* engine, const char* request_json, lowbit_chunk_callback callback,
                             void* user_data) {
  return Run(engine, request_json, callback, user_data, false);
}

void lowbit_engine_abort(lowbit_engine* engine) {
  if (engine) engine->engine->Abort();
}

void lowbit_engine_reset(lowbit_engine* engine) {
  if (!engine) return;
  try {
    engine->engine->Reset();
  } catch (const std::exception& e) {
    last_error = lowbit::FirstLine(e.what());
  }
}

void lowbit_engine_free(lowbit_engine* engine) { delete engine; }

const char* lowbit_last_error(void) { return last_error.c_str(); }

}  // extern "C"

namespace {

int Run(lowbit_engine* engine, const char* request_json, lowbit_chunk_callback callback, void* user_data, bool chat) {
  last_error.clear();
  if (engine == nullptr || request_json == nullptr || callback == nullptr) {
    last_error = "engine, request and callback are required";
    return -1;
  }
  auto forward = [&](const std::string& chunk) { callback(chunk.c_str(), user_data); };
  try {
    bool ok = chat ? engine->engine->ChatCompletion(request_json, forward) : engine->engine->Completion(request_json, forward);
    if (ok) return 0;
    last_error = engine->engine->last_error();
  } catch (const std::exception& e) {  // thrown by the callback's caller side, e.g. out of memory
    last_error = lowbit::FirstLine(e.what());
  }
  return -1;
}

}  // namespace

/* lowbit's native engine: a plain C API for apps (JNI, Swift, C, C++).
 *
 * An engine holds one compiled model (an MLC weight folder + a lowbit model library) and one
 * conversation. Requests are OpenAI JSON strings; replies stream back as JSON chunks through a
 * callback, on the calling thread:
 *   - chat:       {"messages": [...], "temperature", "top_p", "max_tokens", "stop", "seed", ...}
 *                 → "chat.completion.chunk" objects with choices[0].delta.content
 *   - completion: {"prompt": "...", ...} (no chat template) → "text_completion" objects
 * The last chunk has "choices": [] and "usage" (prompt/completion/total tokens, and in "extra" the
 * prefill and decode tokens/s). A bad request, or any failure, is a single chunk
 * {"error": {"message": "...", "type": "..."}}; the engine stays usable.
 * Sending the whole conversation each turn (as OpenAI clients do) reuses the KV cache of the
 * common prefix.
 */
#ifndef LOWBIT_ENGINE_H_
#define LOWBIT_ENGINE_H_

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lowbit_engine lowbit_engine;

/* Called once per JSON chunk; `chunk_json` is valid during the call only. */
typedef void (*lowbit_chunk_callback)(const char* chunk_json, void* user_data);

/* A new engine, or NULL (then lowbit_last_error() says why, in one line).
 * model_dir: the MLC folder (mlc-chat-config.json, tensor-cache.json, shards, tokenizer.json).
 * model_lib: the library file, or "system://PREFIX" for a library linked into the program
 *            (a static build; PREFIX is its system_lib_prefix).
 * options_json: NULL or {"context_window": N, "check_md5": true}. */
lowbit_engine* lowbit_engine_create(const char* model_dir, const char* model_lib, const char* options_json);

/* Stream the reply to an OpenAI chat completion request. Returns 0, or -1 after an error chunk. */
int lowbit_engine_chat_completion(lowbit_engine* engine, const char* request_json,
                                  lowbit_chunk_callback callback, void* user_data);

/* Stream the continuation of a raw prompt (an OpenAI completion request). 0 or -1, as above. */
int lowbit_engine_completion(lowbit_engine* engine, const char* request_json,
                             lowbit_chunk_callback callback, void* user_data);

/* Stop the running request after its current token; callable from any thread (or the callback). */
void lowbit_engine_abort(lowbit_engine* engine);

/* Forget the conversation (the KV cache). */
void lowbit_engine_reset(lowbit_engine* engine);

void lowbit_engine_free(lowbit_engine* engine);

/* The last error of this thread (one line; "" when none). Valid until the next call. */
const char* lowbit_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_ENGINE_H_ */

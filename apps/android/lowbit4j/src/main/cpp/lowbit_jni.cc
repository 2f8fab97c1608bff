// The native side of ai.lowbit.LowbitEngine, over the C API of lowbit/engine.h only.
//
// Strings cross as UTF-8 byte arrays (String.getBytes(UTF_8), new String(bytes, UTF_8)): JNI's own
// string functions use modified UTF-8, which encodes NUL and characters outside the BMP differently.
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "lowbit/engine.h"

namespace {

// Classes and methods looked up once in JNI_OnLoad; the classes are global references.
struct JavaRefs {
  jclass string;
  jmethodID string_from_bytes;  // String(byte[], Charset)
  jobject utf8;                 // StandardCharsets.UTF_8
  jclass lowbit_exception;
  jmethodID lowbit_exception_init;
  jclass illegal_argument;
  jmethodID illegal_argument_init;
  jmethodID on_chunk;           // ChunkListener.onChunk(String)
} refs;

jclass GlobalClass(JNIEnv* env, const char* name) {
  jclass local = env->FindClass(name);
  if (local == nullptr) return nullptr;
  auto global = static_cast<jclass>(env->NewGlobalRef(local));
  env->DeleteLocalRef(local);
  return global;
}

// A Java string from UTF-8, or null with an exception pending.
jstring JavaString(JNIEnv* env, const char* utf8) {
  const auto n = static_cast<jsize>(std::strlen(utf8));
  jbyteArray bytes = env->NewByteArray(n);
  if (bytes == nullptr) return nullptr;
  env->SetByteArrayRegion(bytes, 0, n, reinterpret_cast<const jbyte*>(utf8));
  auto text = static_cast<jstring>(env->NewObject(refs.string, refs.string_from_bytes, bytes, refs.utf8));
  env->DeleteLocalRef(bytes);
  return text;
}

void Throw(JNIEnv* env, jclass type, jmethodID init, const char* utf8_message) {
  jstring message = JavaString(env, utf8_message);
  if (message == nullptr) return;
  auto error = static_cast<jthrowable>(env->NewObject(type, init, message));
  env->DeleteLocalRef(message);
  if (error != nullptr) env->Throw(error);
}

// The C string of UTF-8 bytes from Java; false, with IllegalArgumentException pending, if it holds
// a NUL (a C string would end there).
bool CString(JNIEnv* env, jbyteArray bytes, const char* what, std::string* out) {
  const jsize n = env->GetArrayLength(bytes);
  out->resize(static_cast<size_t>(n));
  env->GetByteArrayRegion(bytes, 0, n, reinterpret_cast<jbyte*>(out->data()));
  if (out->find('\0') == std::string::npos) return true;
  Throw(env, refs.illegal_argument, refs.illegal_argument_init, (std::string(what) + " contains a NUL character").c_str());
  return false;
}

lowbit_engine* Engine(jlong handle) { return reinterpret_cast<lowbit_engine*>(static_cast<intptr_t>(handle)); }

struct Stream {
  JNIEnv* env;
  jobject listener;
  lowbit_engine* engine;
};

// Hands one chunk to the listener. Once the listener has thrown, the request is aborted and the
// remaining chunks are dropped: no Java call may run while an exception is pending.
void OnChunk(const char* chunk_json, void* user_data) {
  auto* stream = static_cast<Stream*>(user_data);
  JNIEnv* env = stream->env;
  if (env->ExceptionCheck()) return;
  jstring chunk = JavaString(env, chunk_json);
  if (chunk != nullptr) {
    env->CallVoidMethod(stream->listener, refs.on_chunk, chunk);
    env->DeleteLocalRef(chunk);
  }
  if (env->ExceptionCheck()) lowbit_engine_abort(stream->engine);
}

}  // namespace

extern "C" {

JNIEXPORT jint JNI_OnLoad(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  refs.string = GlobalClass(env, "java/lang/String");
  refs.lowbit_exception = GlobalClass(env, "ai/lowbit/LowbitException");
  refs.illegal_argument = GlobalClass(env, "java/lang/IllegalArgumentException");
  jclass charsets = env->FindClass("java/nio/charset/StandardCharsets");
  jclass listener = env->FindClass("ai/lowbit/ChunkListener");
  if (!refs.string || !refs.lowbit_exception || !refs.illegal_argument || !charsets || !listener) return JNI_ERR;
  refs.string_from_bytes = env->GetMethodID(refs.string, "<init>", "([BLjava/nio/charset/Charset;)V");
  refs.lowbit_exception_init = env->GetMethodID(refs.lowbit_exception, "<init>", "(Ljava/lang/String;)V");
  refs.illegal_argument_init = env->GetMethodID(refs.illegal_argument, "<init>", "(Ljava/lang/String;)V");
  refs.on_chunk = env->GetMethodID(listener, "onChunk", "(Ljava/lang/String;)V");
  jfieldID utf8 = env->GetStaticFieldID(charsets, "UTF_8", "Ljava/nio/charset/Charset;");
  if (!refs.string_from_bytes || !refs.lowbit_exception_init || !refs.illegal_argument_init || !refs.on_chunk || !utf8)
    return JNI_ERR;
  jobject utf8_charset = env->GetStaticObjectField(charsets, utf8);
  refs.utf8 = env->NewGlobalRef(utf8_charset);
  env->DeleteLocalRef(utf8_charset);
  env->DeleteLocalRef(charsets);
  env->DeleteLocalRef(listener);
  return refs.utf8 ? JNI_VERSION_1_6 : JNI_ERR;
}

JNIEXPORT jlong JNICALL Java_ai_lowbit_LowbitEngine_nativeCreate(JNIEnv* env, jclass, jbyteArray model_dir,
                                                                 jbyteArray model_lib, jbyteArray options_json) {
  std::string dir, lib, options;
  if (!CString(env, model_dir, "modelDir", &dir) || !CString(env, model_lib, "modelLib", &lib)) return 0;
  if (options_json != nullptr && !CString(env, options_json, "optionsJson", &options)) return 0;
  lowbit_engine* engine = lowbit_engine_create(dir.c_str(), lib.c_str(), options_json ? options.c_str() : nullptr);
  if (engine == nullptr) Throw(env, refs.lowbit_exception, refs.lowbit_exception_init, lowbit_last_error());
  return static_cast<jlong>(reinterpret_cast<intptr_t>(engine));
}

JNIEXPORT void JNICALL Java_ai_lowbit_LowbitEngine_nativeRun(JNIEnv* env, jclass, jlong handle, jbyteArray request_json,
                                                             jboolean chat, jobject listener) {
  std::string request;
  if (!CString(env, request_json, "requestJson", &request)) return;
  Stream stream{env, listener, Engine(handle)};
  const int status = chat ? lowbit_engine_chat_completion(stream.engine, request.c_str(), OnChunk, &stream)
                          : lowbit_engine_completion(stream.engine, request.c_str(), OnChunk, &stream);
  if (env->ExceptionCheck()) return;  // the listener's exception reaches the caller
  if (status != 0) Throw(env, refs.lowbit_exception, refs.lowbit_exception_init, lowbit_last_error());
}

JNIEXPORT void JNICALL Java_ai_lowbit_LowbitEngine_nativeAbort(JNIEnv*, jclass, jlong handle) {
  lowbit_engine_abort(Engine(handle));
}

JNIEXPORT void JNICALL Java_ai_lowbit_LowbitEngine_nativeReset(JNIEnv*, jclass, jlong handle) {
  lowbit_engine_reset(Engine(handle));
}

JNIEXPORT void JNICALL Java_ai_lowbit_LowbitEngine_nativeFree(JNIEnv*, jclass, jlong handle) {
  lowbit_engine_free(Engine(handle));
}

}  // extern "C"

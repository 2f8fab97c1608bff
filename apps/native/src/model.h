// A compiled lowbit model library and its MLC weight folder on the TVM runtime: the relax VM, the
// weights in the library's argument order, and the paged KV cache, driven as the Python engine
// (runtime/engine.py) drives them: embed → prefill (in chunks) / decode with one sequence per
// conversation.
#pragma once

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <string>
#include <vector>

#include "json_util.h"
#include "tensor_cache.h"

namespace lowbit {

/*! \brief What `lowbit compile` stores in a library's `_metadata` (lowbit/artifact.py). */
struct LibraryMetadata {
  std::string model_type, quantization, target, device, compute_dtype, system_lib_prefix;
  int64_t context_window_size = 0, prefill_chunk_size = 0;
  Json params;  // [{"name", "shape", "dtype"}] in argument order
  int format = 0;

  static LibraryMetadata FromJson(const std::string& text, const std::string& library);
};

struct ModelOptions {
  int64_t context_window = 0;  // 0: the library's
  bool check_md5 = true;
};

class Model {
 public:
  /*! \brief Load `model_lib` (a file, or "system://PREFIX" for a library linked statically into
   *  the program) for the folder's weights; every mismatch is a one-line Error. */
  Model(const std::string& model_dir, const std::string& model_lib, const Json& chat_config,
        const ModelOptions& options);

  const LibraryMetadata& metadata() const { return metadata_; }
  int64_t context_window() const { return context_window_; }
  int64_t vocab_size() const { return vocab_size_; }

  /*! \brief Append `ids` to the sequence (in prefill chunks); the last position's logits. */
  std::vector<float> Prefill(const std::vector<int32_t>& ids);
  /*! \brief Append one token; its logits. */
  std::vector<float> Decode(int32_t token);
  /*! \brief Drop cached tokens so that `length` remain. */
  void Rewind(int64_t length);
  /*! \brief Forget the sequence (an empty KV cache). */
  void Reset();
  /*! \brief The tokens in the KV cache. */
  const std::vector<int32_t>& cached() const { return cached_; }

 private:
  std::vector<float> Forward(const char* function, const std::vector<int32_t>& ids);
  tvm::ffi::Function VmFunction(const std::string& name);

  LibraryMetadata metadata_;
  DLDevice device_{kDLCPU, 0};
  tvm::ffi::Optional<tvm::ffi::Module> vm_;  // set in the constructor
  tvm::ffi::Array<tvm::ffi::Tensor> params_;
  tvm::ffi::Any kv_cache_;
  tvm::ffi::Function embed_, prefill_, decode_;
  tvm::ffi::Function add_sequence_, remove_sequence_, popn_, begin_forward_, end_forward_, create_view_;
  int64_t context_window_ = 0, prefill_chunk_ = 0, vocab_size_ = 0;
  std::vector<int32_t> cached_;
};

}  // namespace lowbit

#include "model.h"

#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/string.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "error.h"

namespace lowbit {

namespace ffi = tvm::ffi;

namespace {

constexpr int64_t kPageSize = 16;       // KV cache page, as runtime/engine.py
constexpr int kPooledAllocator = 2;     // the relax VM's pooled allocator
constexpr char kSystemLibScheme[] = "system://";

struct AlignedAlloc {  // 64-byte aligned host memory, DLPack's rule for zero-copy
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    void* p = nullptr;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) throw Error("out of memory");
    t->data = p;
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor HostTensor(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype, DLDevice{kDLCPU, 0});
}

char* Data(const ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  return static_cast<char*>(dl->data) + dl->byte_offset;
}

DLDevice DeviceNamed(const std::string& name, const std::string& library) {
  static const std::map<std::string, DLDeviceType> kTypes = {
      {"cpu", kDLCPU},       {"cuda", kDLCUDA},     {"metal", kDLMetal}, {"opencl", kDLOpenCL},
      {"vulkan", kDLVulkan}, {"webgpu", kDLWebGPU}, {"rocm", kDLROCM}};
  auto it = kTypes.find(name);
  if (it == kTypes.end()) throw Error("model library " + library + " runs on unknown device " + name);
  return DLDevice{it->second, 0};
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        --exp;
      }
      bits = sign | exp << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

ffi::Module LoadLibrary(const std::string& model_lib) {
  if (model_lib.rfind(kSystemLibScheme, 0) == 0) {
    std::string prefix = model_lib.substr(sizeof(kSystemLibScheme) - 1);
    auto library = ffi::Function::GetGlobalRequired("ffi.SystemLib")(prefix).cast<ffi::Module>();
    if (!library->GetFunction("vm_load_executable").has_value())  // an unknown prefix gives an empty module
      throw Error("no model with system_lib_prefix '" + prefix + "' is linked into this program " +
                  "(its model archive and app config come from different `lowbit package` runs?)");
    return library;
  }
  if (!IsFile(model_lib)) throw Error("model library " + model_lib + " does not exist");
  try {
    return ffi::Module::LoadFromFile(model_lib);
  } catch (const std::exception& e) {
    throw Error("cannot load model library " + model_lib + ": " + FirstLine(e.what()));
  }
}

// Whether a library parameter's declared shape (negative = any size) fits the record's.
bool ShapeFits(const Json& want, const std::vector<int64_t>& have) {
  if (!want.is_array() || want.size() != have.size()) return false;
  for (size_t i = 0; i < have.size(); ++i)
    if (want[i].is_number_integer() && want[i].get<int64_t>() >= 0 && want[i].get<int64_t>() != have[i]) return false;
  return true;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// The library's relax VM, initialised for `device` (with the CPU as host).
ffi::Module StartVm(const ffi::Module& library, DLDevice device, const std::string& lib_name, const std::string& device_name) {
  ffi::Optional<ffi::Function> load = library->GetFunction("vm_load_executable");
  if (!load.has_value()) throw Error("model library " + lib_name + " is not a relax model library (no vm_load_executable)");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  ffi::Function init = vm->GetFunction("vm_initialization").value();
  try {
    if (device.device_type == kDLCPU) {
      init(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    } else {
      init(static_cast<int>(device.device_type), device.device_id, kPooledAllocator, static_cast<int>(kDLCPU), 0,
           kPooledAllocator);
    }
  } catch (const std::exception& e) {
    throw Error("model library " + lib_name + " runs on " + device_name + ", which this TVM runtime cannot open (" +
                FirstLine(e.what()) + ")");
  }
  return vm;
}

}  // namespace

LibraryMetadata LibraryMetadata::FromJson(const std::string& text, const std::string& library) {
  LibraryMetadata m;
  try {
    Json raw = Json::parse(text);
    m.format = raw.value("format", 1);
    if (m.format > 2)
      throw Error("model library " + library + " has metadata format " + std::to_string(m.format) +
                  ", newer than this engine understands (2): rebuild the engine");
    m.model_type = raw.at("model_type").get<std::string>();
    m.quantization = raw.at("quantization").get<std::string>();
    m.device = m.format == 1 ? "cpu" : raw.at("device").get<std::string>();
    m.target = m.format == 1 ? "llvm" : raw.value("target", std::string());
    m.compute_dtype = raw.value("compute_dtype", std::string());
    m.context_window_size = raw.at("context_window_size").get<int64_t>();
    m.prefill_chunk_size = raw.at("prefill_chunk_size").get<int64_t>();
    m.system_lib_prefix = raw.value("system_lib_prefix", std::string());
    m.params = raw.value("params", Json::array());
  } catch (const Json::exception& e) {
    throw Error("model library " + library + " has unreadable metadata (" + FirstLine(e.what()) + ")");
  }
  return m;
}

ffi::Function Model::VmFunction(const std::string& name) {
  ffi::Optional<ffi::Function> f = vm_.value()->GetFunction(name);
  if (!f.has_value()) throw Error("the model library has no function " + name + " (not a lowbit/MLC model library?)");
  return *f;
}

Model::Model(const std::string& model_dir, const std::string& model_lib, const Json& chat_config,
             const ModelOptions& options) {
  const std::string lib_name = Basename(model_lib);
  TensorCacheIndex index = ReadTensorCacheIndex(model_dir);
  ffi::Module library = LoadLibrary(model_lib);
  vm_ = StartVm(library, DLDevice{kDLCPU, 0}, lib_name, "cpu");  // the metadata function is host code

  std::vector<std::string> names;
  ffi::Optional<ffi::Function> metadata_fn = vm_.value()->GetFunction("_metadata");
  if (metadata_fn.has_value()) {
    metadata_ = LibraryMetadata::FromJson((*metadata_fn)().cast<ffi::String>(), lib_name);
    for (const char* key : {"model_type", "quantization"}) {
      std::string have = chat_config.value(key, std::string());
      const std::string& want = std::string(key) == "model_type" ? metadata_.model_type : metadata_.quantization;
      if (have != want)
        throw Error("model library " + lib_name + " is for " + key + " '" + want + "' but " + model_dir + " has '" + have + "'");
    }
    for (const Json& p : metadata_.params) {
      const std::string name = p.at("name").get<std::string>();
      const ParamRecord* rec = index.Find(name);
      if (rec == nullptr)
        throw Error("model library " + lib_name + " needs weight " + name + ", which " + model_dir +
                    " lacks (wrong library for this folder?)");
      if (!ShapeFits(p.at("shape"), rec->shape) || p.at("dtype").get<std::string>() != rec->dtype)
        throw Error("model library " + lib_name + " expects " + name + " as " + p.at("dtype").get<std::string>() +
                    p.at("shape").dump() + ", " + model_dir + " has " + rec->dtype + ShapeText(rec->shape) +
                    " (wrong library for this folder?)");
      names.push_back(name);
    }
  } else {  // not built by lowbit: trust the folder's order, as the Python engine does
    metadata_.device = "cpu";
    metadata_.context_window_size = chat_config.value("context_window_size", int64_t{0});
    metadata_.prefill_chunk_size = chat_config.value("prefill_chunk_size", int64_t{0});
    for (const auto& r : index.records) names.push_back(r.name);
  }

  device_ = DeviceNamed(metadata_.device, lib_name);
  if (device_.device_type != kDLCPU) vm_ = StartVm(library, device_, lib_name, metadata_.device);

  VerifyShards(index, options.check_md5);
  ffi::Function alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  ffi::Function copy_from = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
  for (const std::string& name : names) {
    const ParamRecord& rec = *index.Find(name);
    if (rec.dtype == "bfloat16") throw Error(rec.name + ": bfloat16 weights are not supported by this runtime");
    DLDataType dtype = ffi::StringToDLDataType(rec.dtype);
    ffi::Tensor host = HostTensor(rec.shape, dtype);
    if (static_cast<int64_t>(ffi::GetDataSize(host)) != DecodedBytes(rec))
      throw Error("weight " + rec.name + " has " + std::to_string(rec.nbytes) + " bytes, not what " + rec.dtype +
                  ShapeText(rec.shape) + " needs");
    ReadRecord(index, rec, Data(host));
    if (device_.device_type == kDLCPU) {
      params_.push_back(host);
    } else {
      ffi::Tensor on_device = alloc(ffi::Shape(rec.shape), dtype, device_, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
      copy_from(on_device, static_cast<void*>(Data(host)), static_cast<int64_t>(ffi::GetDataSize(host)));
      params_.push_back(on_device);
    }
  }

  const int64_t library_window = metadata_.context_window_size;
  context_window_ = options.context_window > 0 ? std::min(options.context_window, library_window) : library_window;
  prefill_chunk_ = metadata_.prefill_chunk_size;
  if (context_window_ < 1 || prefill_chunk_ < 1) throw Error(model_dir + ": the context window and prefill chunk must be positive");
  const Json& model_config = chat_config.value("model_config", Json::object());
  vocab_size_ = chat_config.contains("vocab_size") ? chat_config["vocab_size"].get<int64_t>()
                                                   : model_config.value("vocab_size", int64_t{0});
  if (vocab_size_ < 1) throw Error(model_dir + "/mlc-chat-config.json has no vocab_size");

  embed_ = VmFunction("embed");
  prefill_ = VmFunction("prefill");
  decode_ = VmFunction("decode");
  kv_cache_ = VmFunction("create_paged_kv_cache")(ffi::Shape{1}, ffi::Shape{context_window_}, ffi::Shape{prefill_chunk_},
                                                  ffi::Shape{kPageSize}, ffi::Shape{0});
  add_sequence_ = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_add_sequence");
  remove_sequence_ = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_remove_sequence");
  popn_ = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_popn");
  begin_forward_ = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_begin_forward");
  end_forward_ = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_end_forward");
  create_view_ = ffi::Function::GetGlobalRequired("runtime.TVMTensorCreateView");
  add_sequence_(kv_cache_, int64_t{0});
}

std::vector<float> Model::Forward(const char* function, const std::vector<int32_t>& ids) {
  const auto n = static_cast<int64_t>(ids.size());
  ffi::Tensor ids_t = HostTensor({n}, DLDataType{kDLInt, 32, 1});
  std::memcpy(Data(ids_t), ids.data(), ids.size() * sizeof(int32_t));
  if (device_.device_type != kDLCPU) {
    ffi::Tensor on_device = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope")(
        ffi::Shape{n}, DLDataType{kDLInt, 32, 1}, device_, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
    ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes")(on_device, static_cast<void*>(Data(ids_t)), n * 4);
    ids_t = on_device;
  }
  ffi::Tensor embedded = embed_(ids_t, params_).cast<ffi::Tensor>();
  ffi::Tensor batch = create_view_(embedded, ffi::Shape{1, n, embedded.size(-1)}, embedded.dtype(), int64_t{0}).cast<ffi::Tensor>();
  begin_forward_(kv_cache_, ffi::Shape{0}, ffi::Shape{n});
  ffi::Any out;
  try {
    out = (std::string(function) == "decode" ? decode_ : prefill_)(batch, kv_cache_, params_);
  } catch (...) {
    end_forward_(kv_cache_);
    throw;
  }
  end_forward_(kv_cache_);
  cached_.insert(cached_.end(), ids.begin(), ids.end());

  ffi::Tensor logits = out.cast<ffi::Array<ffi::Any>>()[0].cast<ffi::Tensor>();
  const DLDataType dtype = logits.dtype();
  const int64_t total = logits.numel();
  std::vector<char> bytes(static_cast<size_t>(total * dtype.bits / 8));
  if (logits.device().device_type == kDLCPU) {
    std::memcpy(bytes.data(), Data(logits), bytes.size());
  } else {
    ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes")(logits, static_cast<void*>(bytes.data()),
                                                                      static_cast<int64_t>(bytes.size()));
  }
  std::vector<float> last(static_cast<size_t>(vocab_size_));
  const int64_t start = total - vocab_size_;  // the last position's row
  if (dtype.code == kDLFloat && dtype.bits == 32) {
    std::memcpy(last.data(), bytes.data() + start * 4, last.size() * 4);
  } else if (dtype.code == kDLFloat && dtype.bits == 16) {
    const auto* half = reinterpret_cast<const uint16_t*>(bytes.data()) + start;
    for (size_t i = 0; i < last.size(); ++i) last[i] = HalfToFloat(half[i]);
  } else {
    throw Error("the model library returns logits of an unsupported dtype " + ffi::DLDataTypeToString(dtype));
  }
  return last;
}

std::vector<float> Model::Prefill(const std::vector<int32_t>& ids) {
  if (ids.empty()) throw Error("prefill needs at least one token");
  if (static_cast<int64_t>(cached_.size() + ids.size()) > context_window_)
    throw Error(std::to_string(cached_.size() + ids.size()) + " tokens exceed the context window of " +
                std::to_string(context_window_));
  std::vector<float> logits;
  for (size_t start = 0; start < ids.size(); start += static_cast<size_t>(prefill_chunk_)) {
    size_t end = std::min(ids.size(), start + static_cast<size_t>(prefill_chunk_));
    logits = Forward("prefill", std::vector<int32_t>(ids.begin() + start, ids.begin() + end));
  }
  return logits;
}

std::vector<float> Model::Decode(int32_t token) {
  if (static_cast<int64_t>(cached_.size()) + 1 > context_window_)
    throw Error("the context window of " + std::to_string(context_window_) + " tokens is full");
  return Forward("decode", {token});
}

void Model::Rewind(int64_t length) {
  int64_t n = static_cast<int64_t>(cached_.size()) - length;
  if (n <= 0) return;
  popn_(kv_cache_, int64_t{0}, n);
  cached_.resize(static_cast<size_t>(length));
}

void Model::Reset() {
  remove_sequence_(kv_cache_, int64_t{0});
  add_sequence_(kv_cache_, int64_t{0});
  cached_.clear();
}

}  // namespace lowbit

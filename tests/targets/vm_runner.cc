// A minimal host for a lowbit model library on the tvm-ffi API alone (no Python), used to run the
// aarch64 build under qemu: one prefill over the given tokens, every position's logits to a file.
//
// usage: vm_runner LIB PARAMS_TXT PARAMS_BIN IDS OUT
//   PARAMS_TXT  one line per parameter in the library's order: "name dtype ndim d0 d1 ..."
//   PARAMS_BIN  the parameters' raw little-endian bytes, concatenated in that order
//   IDS         comma-separated token ids
//   OUT         receives prefill_all_logits' float32 logits [1, len(IDS), vocab], raw
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    void* p = nullptr;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) std::abort();
    t->data = p;
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype,
                                  DLDevice{kDLCPU, 0});
}

char* Data(const ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();  // tvm-ffi 0.1: no operator-> to the DLTensor fields
  return static_cast<char*>(dl->data) + dl->byte_offset;
}

ffi::Array<ffi::Tensor> ReadParams(const std::string& txt, const std::string& bin) {
  std::ifstream manifest(txt), blob(bin, std::ios::binary);
  if (!manifest || !blob) throw std::runtime_error("cannot open the parameter files");
  ffi::Array<ffi::Tensor> params;
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string name, dtype;
    int ndim = 0;
    fields >> name >> dtype >> ndim;
    std::vector<int64_t> shape(ndim);
    for (auto& d : shape) fields >> d;
    ffi::Tensor t = Empty(shape, ffi::StringToDLDataType(dtype));
    auto n = static_cast<std::streamsize>(ffi::GetDataSize(t));
    if (!blob.read(Data(t), n)) throw std::runtime_error("short read at " + name);
    params.push_back(t);
  }
  return params;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: vm_runner LIB PARAMS_TXT PARAMS_BIN IDS OUT\n";
    return 2;
  }
  try {
    ffi::Array<ffi::Tensor> params = ReadParams(argv[2], argv[3]);
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // pooled allocator
    auto fn = [&](const char* name) { return vm->GetFunction(name).value(); };
    auto builtin = [](const char* name) { return ffi::Function::GetGlobalRequired(name); };

    std::vector<int32_t> ids;
    std::stringstream list(argv[4]);
    for (std::string tok; std::getline(list, tok, ',');) ids.push_back(std::stoi(tok));
    const auto n = static_cast<int64_t>(ids.size());
    ffi::Tensor ids_t = Empty({n}, DLDataType{kDLInt, 32, 1});
    std::memcpy(Data(ids_t), ids.data(), ids.size() * sizeof(int32_t));
    ffi::Tensor emb = fn("embed")(ids_t, params).cast<ffi::Tensor>();
    ffi::Tensor batch = Empty({1, n, emb.size(-1)}, emb.dtype());  // [n, h] → [1, n, h]
    std::memcpy(Data(batch), Data(emb), ffi::GetDataSize(batch));

    // max batch 1, 256 tokens, prefill chunk 256, page 16, no sliding window
    ffi::Any kv = fn("create_paged_kv_cache")(ffi::Shape{1}, ffi::Shape{256}, ffi::Shape{256},
                                              ffi::Shape{16}, ffi::Shape{0});
    builtin("vm.builtin.kv_state_add_sequence")(kv, int64_t{0});
    builtin("vm.builtin.kv_state_begin_forward")(kv, ffi::Shape{0}, ffi::Shape{n});
    ffi::Any out = fn("prefill_all_logits")(batch, kv, params);
    builtin("vm.builtin.kv_state_end_forward")(kv);
    ffi::Tensor logits = out.cast<ffi::Array<ffi::Any>>()[0].cast<ffi::Tensor>();
    std::ofstream(argv[5], std::ios::binary)
        .write(Data(logits), static_cast<std::streamsize>(ffi::GetDataSize(logits)));
  } catch (const std::exception& e) {
    std::cerr << "vm_runner: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

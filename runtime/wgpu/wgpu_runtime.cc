// lowbit's WebGPU runtime for TVM: runs the WGSL kernels of a library built for the ``webgpu``
// device on wgpu-native (Vulkan, Metal or D3D12 underneath; lavapipe on a CPU-only Linux machine).
//
// Loaded into a process (dlopen, RTLD_GLOBAL) before the model library, it registers:
//   * ``device_api.webgpu``: allocate (one storage buffer per allocation; the "pointer" TVM
//     sees is the WGPUBuffer handle), free, copy (host <-> device through the queue and mapped
//     staging buffers, device <-> device in a command encoder), synchronise;
//   * ``ffi.Module.load_from_bytes.webgpu``: the device module of a compiled library, as TVM's
//     webgpu codegen serialises it (a map kernel name -> FunctionInfo, then kernel name -> WGSL);
//   * each kernel's launch: buffers bound in parameter order (read-only unless the function's
//     ``paramWriteAccess`` tag marks them written), then one uniform with the scalar arguments
//     (32 bits each) and the x grid size (``packGridDimX``); grids wider than 65535 workgroups
//     in x are folded into z, which the WGSL unfolds;
//   * ``lowbit.wgpu.adapter``: the adapter's description, or an empty string when there is none;
//     ``lowbit.wgpu.has_f16``: whether it runs fp16 shaders (WGSL ``enable f16``).

#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>
#include <webgpu.h>
#include <wgpu.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace lowbit_wgpu {

using tvm::runtime::DeviceAPI;
using tvm::runtime::DeviceAttrKind;
namespace ffi = tvm::ffi;

constexpr uint32_t kMaxGridX = 65535;

WGPUStringView View(const std::string& s) { return WGPUStringView{s.data(), s.size()}; }
std::string Str(WGPUStringView v) {
  if (v.data == nullptr) return "";
  return v.length == WGPU_STRLEN ? std::string(v.data) : std::string(v.data, v.length);
}
uint64_t RoundUp4(uint64_t n) { return (n + 3) & ~uint64_t(3); }

// The process's one adapter and device.
class Context {
 public:
  static Context* Get() {
    static Context* ctx = new Context();  // never destroyed: buffers may outlive static teardown
    if (ctx->device_ == nullptr) {
      TVM_FFI_THROW(RuntimeError) << "no WebGPU adapter: " << ctx->why_
                                  << " (on Linux install a Vulkan driver, e.g. Debian "
                                     "mesa-vulkan-drivers for lavapipe on the CPU)";
    }
    return ctx;
  }
  static const Context* Probe() {
    static Context* ctx = nullptr;
    try {
      ctx = Get();
    } catch (const ffi::Error&) {
    }
    return ctx;
  }

  WGPUDevice device() const { return device_; }
  WGPUQueue queue() const { return queue_; }
  const WGPULimits& limits() const { return limits_; }
  const std::string& description() const { return description_; }
  bool has_f16() const { return has_f16_; }

  // Raise the first validation error the device reported since the last check, after ``what``.
  void CheckError(const std::string& what = "") {
    std::string error;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error.swap(error_);
    }
    if (!error.empty()) TVM_FFI_THROW(RuntimeError) << "WebGPU: " << (what.empty() ? "" : what + ": ") << error;
  }

  void Wait() {
    wgpuDevicePoll(device_, true, nullptr);
    CheckError();
  }

 private:
  Context() {
    // Vulkan, Metal, D3D12: not wgpu's OpenGL fallback, which has no fp16 shaders
    WGPUInstanceExtras extras{};
    extras.chain.sType = static_cast<WGPUSType>(WGPUSType_InstanceExtras);
    extras.backends = WGPUInstanceBackend_Primary;
    WGPUInstanceDescriptor instance_desc = WGPU_INSTANCE_DESCRIPTOR_INIT;
    instance_desc.nextInChain = &extras.chain;
    instance_ = wgpuCreateInstance(&instance_desc);
    if (instance_ == nullptr) {
      why_ = "wgpu-native could not create an instance";
      return;
    }
    WGPURequestAdapterOptions options = WGPU_REQUEST_ADAPTER_OPTIONS_INIT;
    options.powerPreference = WGPUPowerPreference_HighPerformance;
    WGPURequestAdapterCallbackInfo on_adapter = WGPU_REQUEST_ADAPTER_CALLBACK_INFO_INIT;
    on_adapter.mode = WGPUCallbackMode_AllowProcessEvents;
    on_adapter.callback = [](WGPURequestAdapterStatus status, WGPUAdapter adapter, WGPUStringView message,
                             void* self, void*) {
      auto* ctx = static_cast<Context*>(self);
      if (status == WGPURequestAdapterStatus_Success) {
        ctx->adapter_ = adapter;
      } else {
        ctx->why_ = Str(message);
      }
      ctx->answered_ = true;
    };
    on_adapter.userdata1 = this;
    wgpuInstanceRequestAdapter(instance_, &options, on_adapter);
    while (!answered_) wgpuInstanceProcessEvents(instance_);
    if (adapter_ == nullptr) {
      if (why_.empty()) why_ = "none found";
      return;
    }
    WGPUAdapterInfo info = WGPU_ADAPTER_INFO_INIT;
    wgpuAdapterGetInfo(adapter_, &info);
    description_ = Str(info.device) + " (" + Str(info.description) + ")";
    wgpuAdapterInfoFreeMembers(info);
    limits_ = WGPU_LIMITS_INIT;
    wgpuAdapterGetLimits(adapter_, &limits_);

    std::vector<WGPUFeatureName> features;
    has_f16_ = wgpuAdapterHasFeature(adapter_, WGPUFeatureName_ShaderF16);
    if (has_f16_) features.push_back(WGPUFeatureName_ShaderF16);
    WGPUDeviceDescriptor desc = WGPU_DEVICE_DESCRIPTOR_INIT;
    desc.requiredFeatureCount = features.size();
    desc.requiredFeatures = features.data();
    desc.requiredLimits = &limits_;  // all the adapter offers: big weights, 2^31-byte bindings
    desc.uncapturedErrorCallbackInfo.callback = [](WGPUDevice const*, WGPUErrorType, WGPUStringView message,
                                                   void* self, void*) {
      auto* ctx = static_cast<Context*>(self);
      std::lock_guard<std::mutex> lock(ctx->mutex_);
      if (ctx->error_.empty()) ctx->error_ = Str(message);
    };
    desc.uncapturedErrorCallbackInfo.userdata1 = this;
    WGPURequestDeviceCallbackInfo on_device = WGPU_REQUEST_DEVICE_CALLBACK_INFO_INIT;
    on_device.mode = WGPUCallbackMode_AllowProcessEvents;
    on_device.callback = [](WGPURequestDeviceStatus status, WGPUDevice device, WGPUStringView message,
                            void* self, void*) {
      auto* ctx = static_cast<Context*>(self);
      if (status == WGPURequestDeviceStatus_Success) {
        ctx->device_ = device;
      } else {
        ctx->why_ = "the adapter refused a device: " + Str(message);
      }
      ctx->answered_ = true;
    };
    on_device.userdata1 = this;
    answered_ = false;
    wgpuAdapterRequestDevice(adapter_, &desc, on_device);
    while (!answered_) wgpuInstanceProcessEvents(instance_);
    if (device_ != nullptr) queue_ = wgpuDeviceGetQueue(device_);
  }

  WGPUInstance instance_ = nullptr;
  WGPUAdapter adapter_ = nullptr;
  WGPUDevice device_ = nullptr;
  WGPUQueue queue_ = nullptr;
  WGPULimits limits_{};
  std::string description_, why_;
  bool answered_ = false, has_f16_ = false;
  std::mutex mutex_;
  std::string error_;
};

WGPUBuffer CreateBuffer(uint64_t nbytes, WGPUBufferUsage usage) {
  Context* ctx = Context::Get();
  uint64_t size = RoundUp4(nbytes == 0 ? 4 : nbytes);
  if (size > ctx->limits().maxBufferSize) {
    TVM_FFI_THROW(RuntimeError) << "WebGPU: a buffer of " << size << " bytes exceeds the adapter's maxBufferSize ("
                                << ctx->limits().maxBufferSize << ")";
  }
  WGPUBufferDescriptor desc = WGPU_BUFFER_DESCRIPTOR_INIT;
  desc.size = size;
  desc.usage = usage;
  return wgpuDeviceCreateBuffer(ctx->device(), &desc);
}

void Submit(WGPUCommandEncoder encoder) {
  WGPUCommandBuffer commands = wgpuCommandEncoderFinish(encoder, nullptr);
  wgpuQueueSubmit(Context::Get()->queue(), 1, &commands);
  wgpuCommandBufferRelease(commands);
  wgpuCommandEncoderRelease(encoder);
}

// Copy [offset, offset + size) of a device buffer to host memory (offsets need no alignment).
void ReadBuffer(WGPUBuffer buffer, uint64_t offset, void* to, uint64_t size) {
  Context* ctx = Context::Get();
  uint64_t begin = offset & ~uint64_t(3), span = RoundUp4(offset + size) - begin;
  WGPUBuffer staging = CreateBuffer(span, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst);
  WGPUCommandEncoder encoder = wgpuDeviceCreateCommandEncoder(ctx->device(), nullptr);
  wgpuCommandEncoderCopyBufferToBuffer(encoder, buffer, begin, staging, 0, span);
  Submit(encoder);
  struct Mapped {
    bool done = false;
    WGPUMapAsyncStatus status{};
    std::string message;
  } mapped;
  WGPUBufferMapCallbackInfo on_map = WGPU_BUFFER_MAP_CALLBACK_INFO_INIT;
  on_map.mode = WGPUCallbackMode_AllowProcessEvents;
  on_map.callback = [](WGPUMapAsyncStatus status, WGPUStringView message, void* out, void*) {
    auto* m = static_cast<Mapped*>(out);
    m->status = status;
    m->message = Str(message);
    m->done = true;
  };
  on_map.userdata1 = &mapped;
  wgpuBufferMapAsync(staging, WGPUMapMode_Read, 0, span, on_map);
  while (!mapped.done) wgpuDevicePoll(ctx->device(), true, nullptr);
  ctx->CheckError();
  if (mapped.status != WGPUMapAsyncStatus_Success) {
    wgpuBufferRelease(staging);
    TVM_FFI_THROW(RuntimeError) << "WebGPU: cannot map a read-back buffer: " << mapped.message;
  }
  const auto* data = static_cast<const char*>(wgpuBufferGetConstMappedRange(staging, 0, span));
  std::memcpy(to, data + (offset - begin), size);
  wgpuBufferUnmap(staging);
  wgpuBufferDestroy(staging);
  wgpuBufferRelease(staging);
}

// Copy host memory into a device buffer; the queue needs 4-byte offsets and sizes, so a ragged
// edge is completed with the bytes already on the device.
void WriteBuffer(WGPUBuffer buffer, uint64_t offset, const void* from, uint64_t size) {
  if (size == 0) return;
  Context* ctx = Context::Get();
  if (offset % 4 == 0 && size % 4 == 0) {
    wgpuQueueWriteBuffer(ctx->queue(), buffer, offset, from, size);
    return;
  }
  uint64_t begin = offset & ~uint64_t(3), span = RoundUp4(offset + size) - begin;
  std::vector<char> staged(span);
  ReadBuffer(buffer, begin, staged.data(), span);
  std::memcpy(staged.data() + (offset - begin), from, size);
  wgpuQueueWriteBuffer(ctx->queue(), buffer, begin, staged.data(), span);
}

class WgpuDeviceAPI final : public DeviceAPI {
 public:
  static WgpuDeviceAPI* Global() {
    static auto* api = new WgpuDeviceAPI();
    return api;
  }

  void SetDevice(DLDevice) final {}

  void GetAttr(DLDevice, DeviceAttrKind kind, ffi::Any* rv) final {
    if (kind == tvm::runtime::kExist) {
      *rv = static_cast<int>(Context::Probe() != nullptr);
      return;
    }
    const Context* ctx = Context::Probe();
    if (ctx == nullptr) return;
    const WGPULimits& l = ctx->limits();
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(l.maxComputeInvocationsPerWorkgroup);
        break;
      case tvm::runtime::kWarpSize:
        *rv = static_cast<int64_t>(1);
        break;
      case tvm::runtime::kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(l.maxComputeWorkgroupStorageSize);
        break;
      case tvm::runtime::kDeviceName:
        *rv = ffi::String(ctx->description());
        break;
      case tvm::runtime::kMaxThreadDimensions:
        *rv = ffi::String("[" + std::to_string(l.maxComputeWorkgroupSizeX) + ", " +
                          std::to_string(l.maxComputeWorkgroupSizeY) + ", " +
                          std::to_string(l.maxComputeWorkgroupSizeZ) + "]");
        break;
      default:
        break;
    }
  }

  void* AllocDataSpace(DLDevice, size_t nbytes, size_t, DLDataType) final {
    return CreateBuffer(nbytes, WGPUBufferUsage_Storage | WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst);
  }

  void FreeDataSpace(DLDevice, void* ptr) final {
    auto buffer = static_cast<WGPUBuffer>(ptr);
    wgpuBufferDestroy(buffer);
    wgpuBufferRelease(buffer);
  }

  void StreamSync(DLDevice, TVMStreamHandle) final { Context::Get()->Wait(); }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset, size_t size,
                      DLDevice dev_from, DLDevice dev_to, DLDataType, TVMStreamHandle) final {
    bool from_gpu = dev_from.device_type == kDLWebGPU, to_gpu = dev_to.device_type == kDLWebGPU;
    if (from_gpu && to_gpu) {
      if (from_offset % 4 || to_offset % 4 || size % 4) {
        TVM_FFI_THROW(RuntimeError) << "WebGPU: device copies need 4-byte offsets and sizes (" << from_offset
                                    << ", " << to_offset << ", " << size << ")";
      }
      WGPUCommandEncoder encoder = wgpuDeviceCreateCommandEncoder(Context::Get()->device(), nullptr);
      wgpuCommandEncoderCopyBufferToBuffer(encoder, static_cast<WGPUBuffer>(const_cast<void*>(from)), from_offset,
                                           static_cast<WGPUBuffer>(to), to_offset, size);
      Submit(encoder);
    } else if (from_gpu) {
      ReadBuffer(static_cast<WGPUBuffer>(const_cast<void*>(from)), from_offset, static_cast<char*>(to) + to_offset,
                 size);
    } else if (to_gpu) {
      WriteBuffer(static_cast<WGPUBuffer>(to), to_offset, static_cast<const char*>(from) + from_offset, size);
    } else {
      std::memcpy(static_cast<char*>(to) + to_offset, static_cast<const char*>(from) + from_offset, size);
    }
  }
};

// ---- the device module ------------------------------------------------------------------

// Reads TVM's binary stream: little-endian u64 counts and lengths, DLDataType as 4 bytes.
class Reader {
 public:
  explicit Reader(const ffi::Bytes& bytes) : data_(bytes.data()), size_(bytes.size()) {}
  uint64_t U64() {
    uint64_t v;
    Take(&v, 8);
    return v;
  }
  std::string String() {
    std::string s(U64(), '\0');
    Take(s.data(), s.size());
    return s;
  }
  DLDataType DataType() {
    DLDataType t;
    Take(&t, 4);
    return t;
  }
  int32_t I32() {
    int32_t v;
    Take(&v, 4);
    return v;
  }

 private:
  void Take(void* out, size_t n) {
    if (pos_ + n > size_) TVM_FFI_THROW(ValueError) << "truncated WebGPU module in the library";
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
  }
  const char* data_;
  size_t size_, pos_ = 0;
};

struct KernelInfo {
  std::vector<DLDataType> arg_types;
  std::vector<int> grid_axis;  // per launch argument: 0-2 blockIdx.{x,y,z}, 3-5 threadIdx
  std::vector<bool> writes;    // per buffer argument
};

// One kernel: its pipeline (built at the first launch) and how its arguments bind.
class Kernel {
 public:
  Kernel(std::string name, KernelInfo info, std::string wgsl)
      : name_(std::move(name)), info_(std::move(info)), wgsl_(std::move(wgsl)) {
    for (size_t i = 0; i < info_.arg_types.size(); ++i) {
      (info_.arg_types[i].code == kDLOpaqueHandle ? buffers_ : pods_).push_back(i);
    }
    if (info_.writes.size() != buffers_.size()) info_.writes.assign(buffers_.size(), true);
  }

  void Launch(ffi::PackedArgs args) {
    Context* ctx = Context::Get();
    size_t nargs = info_.arg_types.size();
    TVM_FFI_ICHECK_EQ(static_cast<size_t>(args.size()), nargs + info_.grid_axis.size()) << name_;
    uint32_t grid[3] = {1, 1, 1};
    for (size_t i = 0; i < info_.grid_axis.size(); ++i) {
      int axis = info_.grid_axis[i];
      if (axis < 3) grid[axis] = static_cast<uint32_t>(args[nargs + i].cast<int64_t>());
    }
    if (grid[0] == 0 || grid[1] == 0) return;  // an empty launch (e.g. no rows)
    TVM_FFI_ICHECK_EQ(grid[2], 1u) << name_ << ": blockIdx.z is reserved for folding wide x grids";
    uint32_t pack_x = grid[0];
    while (grid[0] > kMaxGridX) {
      grid[0] = (grid[0] + 1) / 2;
      grid[2] *= 2;
    }
    if (grid[1] > ctx->limits().maxComputeWorkgroupsPerDimension) {
      TVM_FFI_THROW(RuntimeError) << "WebGPU: " << name_ << " needs " << grid[1]
                                  << " workgroups in y, over the adapter's maxComputeWorkgroupsPerDimension ("
                                  << ctx->limits().maxComputeWorkgroupsPerDimension << ")";
    }
    Build();
    std::vector<uint32_t> pod(pods_.size() + 1);
    for (size_t j = 0; j < pods_.size(); ++j) {
      const DLDataType& t = info_.arg_types[pods_[j]];
      if (t.code == kDLFloat) {
        float f = static_cast<float>(args[pods_[j]].cast<double>());
        std::memcpy(&pod[j], &f, 4);
      } else {
        pod[j] = static_cast<uint32_t>(args[pods_[j]].cast<int64_t>());
      }
    }
    pod.back() = pack_x;
    WGPUBuffer uniform = CreateBuffer(pod.size() * 4, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst);
    wgpuQueueWriteBuffer(ctx->queue(), uniform, 0, pod.data(), pod.size() * 4);
    std::vector<WGPUBindGroupEntry> entries(buffers_.size() + 1, WGPU_BIND_GROUP_ENTRY_INIT);
    for (size_t b = 0; b < buffers_.size(); ++b) {
      auto buffer = static_cast<WGPUBuffer>(args[buffers_[b]].cast<void*>());
      entries[b].binding = b;
      entries[b].buffer = buffer;
      entries[b].size = wgpuBufferGetSize(buffer);
    }
    entries.back().binding = buffers_.size();
    entries.back().buffer = uniform;
    entries.back().size = pod.size() * 4;
    WGPUBindGroupDescriptor group_desc = WGPU_BIND_GROUP_DESCRIPTOR_INIT;
    group_desc.layout = group_layout_;
    group_desc.entryCount = entries.size();
    group_desc.entries = entries.data();
    WGPUBindGroup group = wgpuDeviceCreateBindGroup(ctx->device(), &group_desc);
    WGPUCommandEncoder encoder = wgpuDeviceCreateCommandEncoder(ctx->device(), nullptr);
    WGPUComputePassEncoder pass = wgpuCommandEncoderBeginComputePass(encoder, nullptr);
    wgpuComputePassEncoderSetPipeline(pass, pipeline_);
    wgpuComputePassEncoderSetBindGroup(pass, 0, group, 0, nullptr);
    wgpuComputePassEncoderDispatchWorkgroups(pass, grid[0], grid[1], grid[2]);
    wgpuComputePassEncoderEnd(pass);
    wgpuComputePassEncoderRelease(pass);
    Submit(encoder);
    wgpuBindGroupRelease(group);
    wgpuBufferRelease(uniform);
    ctx->CheckError("kernel " + name_);
  }

 private:
  void Build() {
    if (pipeline_ != nullptr) return;
    Context* ctx = Context::Get();
    WGPUShaderSourceWGSL source = WGPU_SHADER_SOURCE_WGSL_INIT;
    source.code = View(wgsl_);
    WGPUShaderModuleDescriptor module_desc = WGPU_SHADER_MODULE_DESCRIPTOR_INIT;
    module_desc.nextInChain = &source.chain;
    WGPUShaderModule module = wgpuDeviceCreateShaderModule(ctx->device(), &module_desc);
    std::vector<WGPUBindGroupLayoutEntry> layout(buffers_.size() + 1, WGPU_BIND_GROUP_LAYOUT_ENTRY_INIT);
    for (size_t b = 0; b <= buffers_.size(); ++b) {
      layout[b].binding = b;
      layout[b].visibility = WGPUShaderStage_Compute;
      layout[b].buffer.type = b == buffers_.size() ? WGPUBufferBindingType_Uniform
                              : info_.writes[b]    ? WGPUBufferBindingType_Storage
                                                   : WGPUBufferBindingType_ReadOnlyStorage;
    }
    WGPUBindGroupLayoutDescriptor group_desc = WGPU_BIND_GROUP_LAYOUT_DESCRIPTOR_INIT;
    group_desc.entryCount = layout.size();
    group_desc.entries = layout.data();
    group_layout_ = wgpuDeviceCreateBindGroupLayout(ctx->device(), &group_desc);
    WGPUPipelineLayoutDescriptor pipeline_layout_desc = WGPU_PIPELINE_LAYOUT_DESCRIPTOR_INIT;
    pipeline_layout_desc.bindGroupLayoutCount = 1;
    pipeline_layout_desc.bindGroupLayouts = &group_layout_;
    WGPUPipelineLayout pipeline_layout = wgpuDeviceCreatePipelineLayout(ctx->device(), &pipeline_layout_desc);
    WGPUComputePipelineDescriptor desc = WGPU_COMPUTE_PIPELINE_DESCRIPTOR_INIT;
    desc.layout = pipeline_layout;
    desc.compute.module = module;
    desc.compute.entryPoint = View(name_);
    pipeline_ = wgpuDeviceCreateComputePipeline(ctx->device(), &desc);
    wgpuPipelineLayoutRelease(pipeline_layout);
    wgpuShaderModuleRelease(module);
    ctx->CheckError("building kernel " + name_);  // a WGSL or layout error surfaces here
  }

  std::string name_;
  KernelInfo info_;
  std::string wgsl_;
  std::vector<size_t> buffers_, pods_;
  WGPUBindGroupLayout group_layout_ = nullptr;
  WGPUComputePipeline pipeline_ = nullptr;
};

class WgslModule final : public ffi::ModuleObj {
 public:
  explicit WgslModule(ffi::Bytes bytes) : bytes_(bytes) {
    Reader in(bytes);
    std::unordered_map<std::string, KernelInfo> infos;
    for (uint64_t n = in.U64(); n > 0; --n) {
      std::string key = in.String();
      KernelInfo info;
      in.String();  // the name again
      for (uint64_t a = in.U64(); a > 0; --a) info.arg_types.push_back(in.DataType());
      for (uint64_t t = in.U64(); t > 0; --t) {
        std::string tag = in.String();
        if (tag.rfind("paramWriteAccess:", 0) == 0) {
          for (char c : tag.substr(17)) {
            if (c == '0' || c == '1') info.writes.push_back(c == '1');
          }
        } else if (tag.rfind("blockIdx.", 0) == 0 || tag.rfind("threadIdx.", 0) == 0) {
          info.grid_axis.push_back(tag.back() - 'x' + (tag[0] == 't' ? 3 : 0));
        } else {
          TVM_FFI_THROW(ValueError) << "WebGPU kernel " << key << ": unknown launch tag " << tag;
        }
      }
      for (uint64_t e = in.U64(); e > 0; --e) in.I32();  // arg_extra_tags: none for WGSL
      infos.emplace(key, std::move(info));
    }
    for (uint64_t n = in.U64(); n > 0; --n) {
      std::string key = in.String(), wgsl = in.String();
      source_ += wgsl;
      auto it = infos.find(key);
      TVM_FFI_ICHECK(it != infos.end()) << "WebGPU kernel " << key << " has no function info";
      kernels_.emplace(key, std::make_shared<Kernel>(key, it->second, std::move(wgsl)));
    }
  }

  const char* kind() const final { return "webgpu"; }
  int GetPropertyMask() const final { return ffi::Module::kBinarySerializable | ffi::Module::kRunnable; }
  ffi::Bytes SaveToBytes() const final { return bytes_; }
  ffi::String InspectSource(const ffi::String&) const final { return source_; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    std::shared_ptr<Kernel> kernel = it->second;
    return ffi::Function::FromPacked([kernel](ffi::PackedArgs args, ffi::Any*) { kernel->Launch(args); });
  }

 private:
  ffi::Bytes bytes_;
  std::string source_;
  std::unordered_map<std::string, std::shared_ptr<Kernel>> kernels_;
};

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("ffi.Module.load_from_bytes.webgpu",
           [](const ffi::Bytes& bytes) { return ffi::Module(ffi::make_object<WgslModule>(bytes)); })
      .def_packed("device_api.webgpu",
                  [](ffi::PackedArgs, ffi::Any* rv) { *rv = static_cast<void*>(WgpuDeviceAPI::Global()); })
      .def("lowbit.wgpu.adapter", []() -> ffi::String {
        const Context* ctx = Context::Probe();
        return ctx == nullptr ? "" : ctx->description();
      })
      .def("lowbit.wgpu.has_f16", []() {
        const Context* ctx = Context::Probe();
        return ctx != nullptr && ctx->has_f16();
      });
}

}  // namespace lowbit_wgpu

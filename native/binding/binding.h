// Shared declarations of the binding files. Only Node-API glue lives in native/binding/.
#pragma once
#include <napi.h>

namespace svdq::binding {
void registerTensors(Napi::Env env, Napi::Object exports);  // tensors.cpp: safetensors read/write
void registerEngine(Napi::Env env, Napi::Object exports);   // engine.cpp: Engine class (load, forward)
void registerQuant(Napi::Env env, Napi::Object exports);    // quant.cpp: quantize, quant kernels
void registerLora(Napi::Env env, Napi::Object exports);     // lora.cpp: attach/rescale/detach LoRAs on an Engine
void registerGpu(Napi::Env env, Napi::Object exports);      // gpu.cpp: CUDA backend availability, kernel test/bench entries
void registerConvert(Napi::Env env, Napi::Object exports);  // convert.cpp: other formats' checkpoints to ours
}  // namespace svdq::binding

#include <string>
#include <vector>

#include "svdq/tensor.h"

namespace svdq::binding {
// A tensor received from JS as {dtype, shape, data: Uint8Array}; `data` is borrowed from the JS buffer.
struct JsTensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};
// Validates dtype name, shape (non-negative integers) and byte length == numel x dtype size; errors name `what`.
JsTensor tensorFromJs(Napi::Env env, const Napi::Value& v, const std::string& what);
// Copies bytes into a fresh {dtype, shape, data: Uint8Array}.
Napi::Object tensorToJs(Napi::Env env, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t bytes);
Napi::Object tensorToJs(Napi::Env env, const Tensor& t);  // F32
// Converts any svdq::Error / std::exception into a JS Error and rethrows it there.
[[noreturn]] void throwJs(Napi::Env env, const std::exception& e);
}  // namespace svdq::binding

#include <memory>
#include <shared_mutex>

namespace svdq {
class FluxModel;
}
namespace svdq::binding {
// A loaded model as the bindings share it: forwards hold `lock` shared, changes (LoRAs) exclusive.
struct EngineHandle {
  std::unique_ptr<FluxModel> model;
  std::shared_mutex lock;
  ~EngineHandle();
};
// The handle behind a JS Engine object, or nullptr when `v` is not one (or was disposed).
std::shared_ptr<EngineHandle> engineFromJs(const Napi::Value& v);
}  // namespace svdq::binding

namespace svdq::binding {
// Runs f, turning svdq::Error (any std::exception) into a JS exception; JS errors pass through.
template <class F>
Napi::Value guard(Napi::Env env, F f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}
}  // namespace svdq::binding

// Shared declarations of the binding files. Only Node-API glue lives in native/binding/.
#pragma once
#include <napi.h>

namespace svdq::binding {
void registerTensors(Napi::Env env, Napi::Object exports);  // tensors.cpp: safetensors read/write
void registerEngine(Napi::Env env, Napi::Object exports);   // engine.cpp: Engine class (load, forward)
void registerQuant(Napi::Env env, Napi::Object exports);    // quant.cpp: quantize, quant kernels
void registerLora(Napi::Env env, Napi::Object exports);     // lora.cpp: attach/rescale/detach LoRAs on an Engine
}  // namespace svdq::binding

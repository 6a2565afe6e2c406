// Node-API glue for tensors and safetensors files: JS <-> C++ tensor conversion, read, inspect, write.
#include <cmath>

#include "binding.h"
#include "svdq/safetensors.h"

namespace svdq::binding {

JsTensor tensorFromJs(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, what + ": expected a tensor {dtype, shape, data}");
  Napi::Object o = v.As<Napi::Object>();
  JsTensor t;
  Napi::Value dt = o.Get("dtype");
  if (!dt.IsString() || !dtypeFromName(dt.As<Napi::String>().Utf8Value(), &t.dtype))
    throw Napi::TypeError::New(env, what + ": unknown dtype '" + (dt.IsString() ? dt.As<Napi::String>().Utf8Value() : "") + "'");
  Napi::Value sh = o.Get("shape");
  if (!sh.IsArray()) throw Napi::TypeError::New(env, what + ": shape must be an array of integers");
  Napi::Array arr = sh.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value d = arr.Get(i);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (x < 0 || x != std::floor(x) || x > 9.0e15) throw Napi::TypeError::New(env, what + ": shape must hold non-negative integers");
    t.shape.push_back(static_cast<int64_t>(x));
  }
  Napi::Value d = o.Get("data");
  if (!d.IsTypedArray() || d.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, what + ": data must be a Uint8Array of little-endian bytes");
  auto u = d.As<Napi::Uint8Array>();
  t.data = u.Data();
  t.bytes = u.ByteLength();
  size_t expected = static_cast<size_t>(numel(t.shape)) * dtypeSize(t.dtype);
  if (expected != t.bytes)
    throw Napi::RangeError::New(env, what + ": shape " + shapeString(t.shape) + " of " + dtypeName(t.dtype) + " needs " +
                                         std::to_string(expected) + " bytes, got " + std::to_string(t.bytes));
  return t;
}

namespace {
Napi::Array shapeToJs(Napi::Env env, const std::vector<int64_t>& shape) {
  Napi::Array sh = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); i++) sh.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(shape[i])));
  return sh;
}
}  // namespace

Napi::Object tensorToJs(Napi::Env env, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("dtype", dtypeName(dtype));
  o.Set("shape", shapeToJs(env, shape));
  o.Set("data", Napi::Uint8Array::New(env, bytes));
  if (bytes) std::memcpy(o.Get("data").As<Napi::Uint8Array>().Data(), data, bytes);
  return o;
}

Napi::Object tensorToJs(Napi::Env env, const Tensor& t) {
  return tensorToJs(env, DType::F32, t.shape, t.ptr(), t.data.size() * sizeof(float));
}

void throwJs(Napi::Env env, const std::exception& e) { throw Napi::Error::New(env, e.what()); }

namespace {

std::string pathArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "expected a file path");
  return info[0].As<Napi::String>().Utf8Value();
}

Napi::Object metadataToJs(Napi::Env env, const SafetensorsFile& f) {
  Napi::Object m = Napi::Object::New(env);
  for (const auto& [k, v] : f.metadata()) m.Set(k, v);
  return m;
}

// readSafetensors(path) -> {metadata, tensors: {name: {dtype, shape, data}}}
Napi::Value ReadSafetensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = pathArg(info);
  try {
    auto f = SafetensorsFile::open(path);
    Napi::Object out = Napi::Object::New(env), tensors = Napi::Object::New(env);
    for (const auto& name : f->names()) {
      const TensorInfo& ti = f->info(name);
      tensors.Set(name, tensorToJs(env, ti.dtype, ti.shape, f->bytes(name), ti.end - ti.begin));
    }
    out.Set("metadata", metadataToJs(env, *f));
    out.Set("tensors", tensors);
    return out;
  } catch (const Error& e) {
    throwJs(env, e);
  }
}

// inspectSafetensors(path) -> {metadata, tensors: {name: {dtype, shape}}} (reads the header only)
Napi::Value InspectSafetensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = pathArg(info);
  try {
    auto f = SafetensorsFile::open(path);
    Napi::Object out = Napi::Object::New(env), tensors = Napi::Object::New(env);
    for (const auto& name : f->names()) {
      const TensorInfo& ti = f->info(name);
      Napi::Object t = Napi::Object::New(env);
      t.Set("dtype", dtypeName(ti.dtype));
      t.Set("shape", shapeToJs(env, ti.shape));
      tensors.Set(name, t);
    }
    out.Set("metadata", metadataToJs(env, *f));
    out.Set("tensors", tensors);
    return out;
  } catch (const Error& e) {
    throwJs(env, e);
  }
}

// writeSafetensors(path, {name: tensor}, metadata?: {k: string}, overwrite?: boolean)
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = pathArg(info);
  if (info.Length() < 2 || !info[1].IsObject()) throw Napi::TypeError::New(env, "expected {name: tensor}");
  Napi::Object tensors = info[1].As<Napi::Object>();
  bool overwrite = info.Length() >= 4 && info[3].ToBoolean().Value();
  try {
    SafetensorsWriter w(path, overwrite);
    if (info.Length() >= 3 && info[2].IsObject()) {
      Napi::Object m = info[2].As<Napi::Object>();
      Napi::Array keys = m.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); i++) {
        std::string k = keys.Get(i).ToString();
        Napi::Value v = m.Get(k);
        if (!v.IsString()) throw Napi::TypeError::New(env, "metadata '" + k + "' must be a string");
        w.setMetadata(k, v.As<Napi::String>().Utf8Value());
      }
    }
    Napi::Array names = tensors.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); i++) {
      std::string n = names.Get(i).ToString();
      JsTensor t = tensorFromJs(env, tensors.Get(n), "tensor '" + n + "'");
      w.add(n, t.dtype, t.shape, t.data, t.bytes);
    }
    w.finish();
    return env.Undefined();
  } catch (const Error& e) {
    throwJs(env, e);
  }
}

}  // namespace

void registerTensors(Napi::Env env, Napi::Object exports) {
  exports.Set("readSafetensors", Napi::Function::New(env, ReadSafetensors));
  exports.Set("inspectSafetensors", Napi::Function::New(env, InspectSafetensors));
  exports.Set("writeSafetensors", Napi::Function::New(env, WriteSafetensors));
}

}  // namespace svdq::binding

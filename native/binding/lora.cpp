// Node-API glue for LoRAs on a loaded Engine (svdq/lora.h does the work). Changes run on a worker
// thread under the engine's exclusive lock, so they wait for forwards in flight and never race them.
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "binding.h"
#include "svdq/flux.h"
#include "svdq/lora.h"

namespace svdq::binding {
namespace {

// A model of shape-only layers (no weights, no forward) so bench/lora.ts can time attaching a LoRA
// to FLUX.1-dev's full layer set without building a 12B-parameter model on the CPU.
class ShapeOnlyLinear : public Linear {
 public:
  ShapeOnlyLinear(int64_t in, int64_t out) : in_(in), out_(out) {}
  int64_t inFeatures() const override { return in_; }
  int64_t outFeatures() const override { return out_; }
  void forward(const float*, int64_t, float*) const override { throw Error("shape-only layer has no forward"); }
  std::string kind() const override { return "shape-only"; }
  size_t weightBytes() const override { return 0; }

 private:
  int64_t in_, out_;
};

struct ShapeModel {
  LinearMap linears;
  std::shared_mutex lock;
};

struct ModelRef {
  LinearMap* linears;
  std::shared_mutex* lock;
  std::shared_ptr<void> keepAlive;  // holds the model while a worker runs
};

// shapeModel({name: [in, out]}) -> External handle usable wherever an Engine is expected here.
Napi::Value ShapeModelNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "expected {layer: [in, out]}");
  auto model = std::make_shared<ShapeModel>();
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Array names = o.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    std::string n = names.Get(i).ToString();
    Napi::Array io = o.Get(n).As<Napi::Array>();
    model->linears[n] = std::make_unique<ShapeOnlyLinear>(io.Get(0u).As<Napi::Number>().Int64Value(),
                                                         io.Get(1u).As<Napi::Number>().Int64Value());
  }
  auto* holder = new std::shared_ptr<ShapeModel>(model);
  return Napi::External<std::shared_ptr<ShapeModel>>::New(env, holder, [](Napi::Env, std::shared_ptr<ShapeModel>* p) { delete p; });
}

ModelRef modelArg(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1 && info[0].IsExternal()) {
    auto sp = *info[0].As<Napi::External<std::shared_ptr<ShapeModel>>>().Data();
    return {&sp->linears, &sp->lock, sp};
  }
  if (info.Length() >= 1) {
    if (std::shared_ptr<EngineHandle> h = engineFromJs(info[0])) {
      if (!h->model) throw Napi::Error::New(info.Env(), "the engine was disposed");
      return {&h->model->linears, &h->lock, h};
    }
  }
  throw Napi::TypeError::New(info.Env(), "expected a loaded Engine (not disposed) or a LoRA shape model as first argument");
}

int idArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "LoRA id must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v != static_cast<int>(v) || v < 1) throw Napi::RangeError::New(info.Env(), "LoRA id must be a positive integer");
  return static_cast<int>(v);
}

float strengthArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "LoRA strength must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v)) throw Napi::RangeError::New(info.Env(), "LoRA strength must be finite");
  return static_cast<float>(v);
}

// {dtype, data: Uint8Array} -> borrowed bytes (kept alive by the worker's references).
void bytesArg(Napi::Env env, const Napi::Value& v, const std::string& key, DType* type, const uint8_t** data, size_t* n,
              std::vector<Napi::ObjectReference>* keep) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, key + ": expected a tensor {dtype, shape, data}");
  Napi::Object o = v.As<Napi::Object>();
  std::string dt = o.Get("dtype").ToString();
  if (dt == "F32") *type = DType::F32;
  else if (dt == "F16") *type = DType::F16;
  else if (dt == "BF16") *type = DType::BF16;
  else throw Napi::TypeError::New(env, key + ": dtype " + dt + " is not a floating type (F32, F16, BF16)");
  Napi::Value d = o.Get("data");
  if (!d.IsTypedArray() || d.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, key + ": data must be a Uint8Array");
  auto u = d.As<Napi::Uint8Array>();
  *data = u.Data();
  *n = u.ByteLength();
  keep->push_back(Napi::Persistent(u.As<Napi::Object>()));
}

int64_t intField(Napi::Env env, const Napi::Object& o, const char* f, const std::string& what) {
  Napi::Value v = o.Get(f);
  if (!v.IsNumber()) throw Napi::TypeError::New(env, what + ": '" + f + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}

// Runs `work` on a worker thread holding the engine's exclusive lock; resolves with its int result.
class LoraWorker : public Napi::AsyncWorker {
 public:
  // prepare (optional) runs first without the lock: work that only reads layer shapes.
  LoraWorker(Napi::Env env, ModelRef ref, std::function<int(LinearMap&)> work,
             std::vector<Napi::ObjectReference> keep = {}, std::function<void(const LinearMap&)> prepare = {})
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        ref_(std::move(ref)),
        work_(std::move(work)),
        prepare_(std::move(prepare)),
        keep_(std::move(keep)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      if (prepare_) prepare_(*ref_.linears);
      std::unique_lock<std::shared_mutex> lock(*ref_.lock);
      result_ = work_(*ref_.linears);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), result_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  ModelRef ref_;
  std::function<int(LinearMap&)> work_;
  std::function<void(const LinearMap&)> prepare_;
  std::vector<Napi::ObjectReference> keep_;  // JS buffers the work reads from
  int result_ = 0;
};

Napi::Value run(const Napi::CallbackInfo& info, std::function<int(LinearMap&)> work,
                std::vector<Napi::ObjectReference> keep = {}, std::function<void(const LinearMap&)> prepare = {}) {
  auto* w = new LoraWorker(info.Env(), modelArg(info), std::move(work), std::move(keep), std::move(prepare));
  w->Queue();
  return w->promise();
}

// loraLayers(engine) -> [{name, in, out, kind}]
Napi::Value LoraLayers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelRef ref = modelArg(info);
  std::shared_lock<std::shared_mutex> lock(*ref.lock);
  Napi::Array out = Napi::Array::New(env, ref.linears->size());
  uint32_t i = 0;
  for (const auto& kv : *ref.linears) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", kv.first);
    o.Set("in", Napi::Number::New(env, static_cast<double>(kv.second->inFeatures())));
    o.Set("out", Napi::Number::New(env, static_cast<double>(kv.second->outFeatures())));
    o.Set("kind", kv.second->kind());
    out.Set(i++, o);
  }
  return out;
}

// attachLora(engine, id, layers, strength, file) -> Promise<layers patched>
// layers: [{layer, rank, parts: [{downKey, upKey, down: tensor, up: tensor, rank, rowStart, rows, col,
// swapHalves, scale}]}] as sidecar/formats/lora.ts planLora() makes them. The factors are decoded
// and fused on the worker thread straight into the engine's buffers (one pass over the data).
Napi::Value AttachLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int id = idArg(info, 1);
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "LoRA layers must be an array");
  float strength = strengthArg(info, 3);
  std::string file = info.Length() > 4 && info[4].IsString() ? info[4].As<Napi::String>().Utf8Value() : "LoRA";
  Napi::Array arr = info[2].As<Napi::Array>();
  auto layers = std::make_shared<std::vector<LoraLayerSource>>();
  std::vector<Napi::ObjectReference> keep;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    if (!arr.Get(i).IsObject()) throw Napi::TypeError::New(env, "LoRA layer plan must be an object");
    Napi::Object l = arr.Get(i).As<Napi::Object>();
    LoraLayerSource src;
    src.layer = l.Get("layer").ToString();
    src.rank = intField(env, l, "rank", "LoRA layer '" + src.layer + "'");
    Napi::Value partsV = l.Get("parts");
    if (!partsV.IsArray()) throw Napi::TypeError::New(env, "LoRA layer '" + src.layer + "': parts must be an array");
    Napi::Array parts = partsV.As<Napi::Array>();
    for (uint32_t j = 0; j < parts.Length(); ++j) {
      Napi::Object p = parts.Get(j).As<Napi::Object>();
      LoraSourcePart sp;
      sp.downKey = p.Get("downKey").ToString();
      sp.upKey = p.Get("upKey").ToString();
      bytesArg(env, p.Get("down"), sp.downKey, &sp.downType, &sp.down, &sp.downBytes, &keep);
      bytesArg(env, p.Get("up"), sp.upKey, &sp.upType, &sp.up, &sp.upBytes, &keep);
      sp.rank = intField(env, p, "rank", sp.downKey);
      sp.rowStart = intField(env, p, "rowStart", sp.upKey);
      sp.rows = intField(env, p, "rows", sp.upKey);
      sp.col = intField(env, p, "col", sp.downKey);
      sp.swapHalves = p.Get("swapHalves").ToBoolean();
      Napi::Value sc = p.Get("scale");
      if (!sc.IsNumber()) throw Napi::TypeError::New(env, sp.downKey + ": scale must be a number");
      sp.scale = static_cast<float>(sc.As<Napi::Number>().DoubleValue());
      src.parts.push_back(std::move(sp));
    }
    layers->push_back(std::move(src));
  }
  const int threads = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
  // Decoding (the long part) happens before the exclusive lock, so forwards keep running meanwhile.
  auto patches = std::make_shared<std::vector<LoraPatch>>();
  return run(
      info, [id, strength, patches](LinearMap& m) { return attachLora(m, id, std::move(*patches), strength, false); },
      std::move(keep),
      [layers, patches, file, threads](const LinearMap& m) { *patches = assembleLoraSources(m, *layers, file, threads); });
}

Napi::Value SetLoraStrength(const Napi::CallbackInfo& info) {
  int id = idArg(info, 1);
  float s = strengthArg(info, 2);
  return run(info, [id, s](LinearMap& m) { return setLoraStrength(m, id, s); });
}

// orderLoras(engine, ids: number[]) -> Promise<0>: the order the layers add their LoRAs in.
Napi::Value OrderLoras(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(info.Env(), "orderLoras(engine, ids): ids must be an array");
  Napi::Array a = info[1].As<Napi::Array>();
  std::vector<int> ids;
  for (uint32_t i = 0; i < a.Length(); ++i) ids.push_back(a.Get(i).ToNumber().Int32Value());
  return run(info, [ids](LinearMap& m) {
    orderLoras(m, ids);
    return 0;
  });
}

Napi::Value RemoveLora(const Napi::CallbackInfo& info) {
  int id = idArg(info, 1);
  return run(info, [id](LinearMap& m) { return removeLora(m, id); });
}

// loraState(engine) -> [{layer, loras: [{id, rank, strength}]}] for layers that carry any LoRA.
Napi::Value LoraState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelRef ref = modelArg(info);
  std::shared_lock<std::shared_mutex> lock(*ref.lock);
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& kv : *ref.linears) {
    if (kv.second->loras.empty()) continue;
    Napi::Array list = Napi::Array::New(env, kv.second->loras.size());
    uint32_t j = 0;
    for (const auto& f : kv.second->loras) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", f.id);
      o.Set("rank", Napi::Number::New(env, static_cast<double>(f.down.shape.empty() ? 0 : f.down.shape[0])));
      o.Set("strength", f.scale);
      list.Set(j++, o);
    }
    Napi::Object l = Napi::Object::New(env);
    l.Set("layer", kv.first);
    l.Set("loras", list);
    out.Set(i++, l);
  }
  return out;
}

// loraLayerForward(engine, layer, x: Float32Array [M*in], M) -> Float32Array [M*out]: one linear's
// forward, LoRAs included, so tests can check a single layer against X·(s·B·A)^T from its raw input.
Napi::Value LoraLayerForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelRef ref = modelArg(info);
  if (info.Length() < 4 || !info[1].IsString() || !info[2].IsTypedArray() || !info[3].IsNumber())
    throw Napi::TypeError::New(env, "expected (engine, layer, x: Float32Array, M)");
  std::string layer = info[1].As<Napi::String>().Utf8Value();
  auto x = info[2].As<Napi::TypedArray>();
  if (x.TypedArrayType() != napi_float32_array) throw Napi::TypeError::New(env, "x must be a Float32Array");
  auto xf = x.As<Napi::Float32Array>();
  int64_t M = info[3].As<Napi::Number>().Int64Value();
  std::shared_lock<std::shared_mutex> lock(*ref.lock);
  auto it = ref.linears->find(layer);
  if (it == ref.linears->end()) throw Napi::Error::New(env, "layer '" + layer + "': the model has no such linear layer");
  const Linear& l = *it->second;
  if (M <= 0 || static_cast<int64_t>(xf.ElementLength()) != M * l.inFeatures())
    throw Napi::RangeError::New(env, "layer '" + layer + "': x has " + std::to_string(xf.ElementLength()) +
                                         " values, expected M x " + std::to_string(l.inFeatures()));
  auto y = Napi::Float32Array::New(env, static_cast<size_t>(M * l.outFeatures()));
  try {
    l.forward(xf.Data(), M, y.Data());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  return y;
}

// loraFactors(engine, layer) -> [{id, strength, down: Float32Array [r*in], up: Float32Array [out*r]}]:
// the factors as the layer holds them (copies), to check the native decode against the reference.
Napi::Value LoraFactorsOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelRef ref = modelArg(info);
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "expected (engine, layer)");
  std::string layer = info[1].As<Napi::String>().Utf8Value();
  std::shared_lock<std::shared_mutex> lock(*ref.lock);
  auto it = ref.linears->find(layer);
  if (it == ref.linears->end()) throw Napi::Error::New(env, "layer '" + layer + "': the model has no such linear layer");
  Napi::Array out = Napi::Array::New(env, it->second->loras.size());
  uint32_t i = 0;
  for (const auto& f : it->second->loras) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", f.id);
    o.Set("strength", f.scale);
    auto d = Napi::Float32Array::New(env, f.down.data.size());
    std::memcpy(d.Data(), f.down.ptr(), f.down.data.size() * sizeof(float));
    auto u = Napi::Float32Array::New(env, f.up.data.size());
    std::memcpy(u.Data(), f.up.ptr(), f.up.data.size() * sizeof(float));
    o.Set("down", d);
    o.Set("up", u);
    out.Set(i++, o);
  }
  return out;
}

// Promise-returning functions report bad arguments as rejections too, never as a synchronous throw.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value AsPromise(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(info.Env());
    d.Reject(e.Value());
    return d.Promise();
  } catch (const std::exception& e) {
    auto d = Napi::Promise::Deferred::New(info.Env());
    d.Reject(Napi::Error::New(info.Env(), e.what()).Value());
    return d.Promise();
  }
}

}  // namespace

void registerLora(Napi::Env env, Napi::Object exports) {
  exports.Set("loraLayers", Napi::Function::New(env, LoraLayers, "loraLayers"));
  exports.Set("attachLora", Napi::Function::New(env, AsPromise<AttachLora>, "attachLora"));
  exports.Set("setLoraStrength", Napi::Function::New(env, AsPromise<SetLoraStrength>, "setLoraStrength"));
  exports.Set("removeLora", Napi::Function::New(env, AsPromise<RemoveLora>, "removeLora"));
  exports.Set("orderLoras", Napi::Function::New(env, AsPromise<OrderLoras>, "orderLoras"));
  exports.Set("loraLayerForward", Napi::Function::New(env, LoraLayerForward, "loraLayerForward"));
  exports.Set("loraFactors", Napi::Function::New(env, LoraFactorsOf, "loraFactors"));
  exports.Set("loraState", Napi::Function::New(env, LoraState, "loraState"));
  exports.Set("loraShapeModel", Napi::Function::New(env, ShapeModelNew, "loraShapeModel"));
}

}  // namespace svdq::binding

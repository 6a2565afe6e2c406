// Node-API glue for LoRAs on a loaded Engine (svdq/lora.h does the work). Changes run on a worker
// thread under the engine's exclusive lock, so they wait for forwards in flight and never race them.
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "binding.h"
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
  throw Napi::TypeError::New(info.Env(), "expected an Engine (or a LoRA shape model) as first argument");
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

Tensor matrixArg(Napi::Env env, const Napi::Object& patch, const char* field, int64_t rows, int64_t cols,
                 const std::string& layer) {
  Napi::Value v = patch.Get(field);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw Napi::TypeError::New(env, "LoRA layer '" + layer + "': " + field + " must be a Float32Array");
  }
  auto a = v.As<Napi::Float32Array>();
  if (static_cast<int64_t>(a.ElementLength()) != rows * cols) {
    throw Napi::RangeError::New(env, "LoRA layer '" + layer + "': " + field + " has " + std::to_string(a.ElementLength()) +
                                         " values, expected " + std::to_string(rows) + " x " + std::to_string(cols));
  }
  Tensor t;
  t.shape = {rows, cols};
  t.data.resize(static_cast<size_t>(rows * cols));
  std::memcpy(t.ptr(), a.Data(), sizeof(float) * static_cast<size_t>(rows * cols));
  return t;
}

// Runs `work` on a worker thread holding the engine's exclusive lock; resolves with its int result.
class LoraWorker : public Napi::AsyncWorker {
 public:
  LoraWorker(Napi::Env env, ModelRef ref, std::function<int(LinearMap&)> work)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), ref_(std::move(ref)), work_(std::move(work)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
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
  int result_ = 0;
};

Napi::Value run(const Napi::CallbackInfo& info, std::function<int(LinearMap&)> work) {
  auto* w = new LoraWorker(info.Env(), modelArg(info), std::move(work));
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

// attachLora(engine, id, [{layer, rank, down: Float32Array [rank*in], up: Float32Array [out*rank]}], strength) -> Promise<int>
Napi::Value AttachLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelRef ref = modelArg(info);
  int id = idArg(info, 1);
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "LoRA patches must be an array");
  float strength = strengthArg(info, 3);
  Napi::Array arr = info[2].As<Napi::Array>();
  std::vector<LoraPatch> patches;
  patches.reserve(arr.Length());
  {
    // Shapes come from the model: the copies below are sized from them, so a lying `rank` cannot overrun.
    std::shared_lock<std::shared_mutex> lock(*ref.lock);
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Object p = arr.Get(i).As<Napi::Object>();
      std::string layer = p.Get("layer").ToString();
      auto it = ref.linears->find(layer);
      if (it == ref.linears->end()) throw Napi::Error::New(env, "LoRA layer '" + layer + "': the model has no such linear layer");
      if (!p.Get("rank").IsNumber()) throw Napi::TypeError::New(env, "LoRA layer '" + layer + "': rank must be a number");
      int64_t r = p.Get("rank").As<Napi::Number>().Int64Value();
      if (r <= 0) throw Napi::Error::New(env, "LoRA layer '" + layer + "': rank " + std::to_string(r) + " (must be > 0)");
      LoraPatch lp;
      lp.layer = layer;
      lp.down = matrixArg(env, p, "down", r, it->second->inFeatures(), layer);
      lp.up = matrixArg(env, p, "up", it->second->outFeatures(), r, layer);
      patches.push_back(std::move(lp));
    }
  }
  auto shared = std::make_shared<std::vector<LoraPatch>>(std::move(patches));
  return run(info, [id, strength, shared](LinearMap& m) { return attachLora(m, id, std::move(*shared), strength); });
}

Napi::Value SetLoraStrength(const Napi::CallbackInfo& info) {
  int id = idArg(info, 1);
  float s = strengthArg(info, 2);
  return run(info, [id, s](LinearMap& m) { return setLoraStrength(m, id, s); });
}

Napi::Value RemoveLora(const Napi::CallbackInfo& info) {
  int id = idArg(info, 1);
  return run(info, [id](LinearMap& m) { return removeLora(m, id); });
}

}  // namespace

void registerLora(Napi::Env env, Napi::Object exports) {
  exports.Set("loraLayers", Napi::Function::New(env, LoraLayers, "loraLayers"));
  exports.Set("attachLora", Napi::Function::New(env, AttachLora, "attachLora"));
  exports.Set("setLoraStrength", Napi::Function::New(env, SetLoraStrength, "setLoraStrength"));
  exports.Set("removeLora", Napi::Function::New(env, RemoveLora, "removeLora"));
  exports.Set("loraShapeModel", Napi::Function::New(env, ShapeModelNew, "loraShapeModel"));
}

}  // namespace svdq::binding

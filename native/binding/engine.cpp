// Node-API glue for the engine: class Engine { constructor(path, options), forward(inputs, cancel?),
// info(), dispose() }. Forwards run on worker threads so the event loop stays free.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>

#include "binding.h"
#include "svdq/flux.h"

namespace svdq::binding {

EngineHandle::~EngineHandle() = default;

namespace {

Napi::FunctionReference* engineCtor = nullptr;

class Engine : public Napi::ObjectWrap<Engine> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("forward", &Engine::forward), InstanceMethod("info", &Engine::info),
                        InstanceMethod("dispose", &Engine::dispose)});
  }

  explicit Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "Engine(path, options?): path must be a string");
    FluxLoadOptions opts;
    if (info.Length() >= 2 && info[1].IsObject()) {
      Napi::Object o = info[1].As<Napi::Object>();
      if (o.Has("axesDim") && !o.Get("axesDim").IsUndefined()) {
        if (!o.Get("axesDim").IsArray()) throw Napi::TypeError::New(env, "options.axesDim must be an array of integers");
        Napi::Array a = o.Get("axesDim").As<Napi::Array>();
        std::vector<int> axes;
        for (uint32_t i = 0; i < a.Length(); i++) axes.push_back(a.Get(i).ToNumber().Int32Value());
        opts.axesDim = axes;
      }
      if (o.Has("memoryLimitBytes") && o.Get("memoryLimitBytes").IsNumber())
        opts.memoryLimitBytes = static_cast<size_t>(o.Get("memoryLimitBytes").As<Napi::Number>().DoubleValue());
      if (o.Has("threads") && o.Get("threads").IsNumber()) opts.threads = o.Get("threads").As<Napi::Number>().Int32Value();
    }
    try {
      handle_ = std::make_shared<EngineHandle>();
      handle_->model = FluxModel::load(info[0].As<Napi::String>().Utf8Value(), opts);
    } catch (const std::exception& e) {
      throwJs(env, e);
    }
  }

  std::shared_ptr<EngineHandle> handle() const { return handle_; }

 private:
  std::shared_ptr<EngineHandle> live(Napi::Env env) const {
    if (!handle_) throw Napi::Error::New(env, "the engine was disposed");
    return handle_;
  }

  Napi::Value forward(const Napi::CallbackInfo& info);
  Napi::Value info(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info) {
    handle_.reset();  // workers in flight keep their own reference
    return info.Env().Undefined();
  }

  std::shared_ptr<EngineHandle> handle_;
};

// Converts a JS tensor of a floating dtype to F32, naming the input on error.
Tensor floatTensor(Napi::Env env, const Napi::Value& v, const std::string& what) {
  JsTensor t = tensorFromJs(env, v, what);
  if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
    throw Napi::TypeError::New(env, what + ": dtype " + dtypeName(t.dtype) + " is not supported (F32, BF16, F16)");
  Tensor out(t.shape);
  toF32(t.dtype, t.data, out.ptr(), out.data.size());
  return out;
}

Tensor floatInput(Napi::Env env, const Napi::Object& inputs, const char* name) {
  return floatTensor(env, inputs.Get(name), std::string("input '") + name + "'");
}

// An attention mask as an additive bias: float masks are added as they are; boolean masks follow
// PyTorch's SDPA (true = attend), false becoming -inf.
Tensor attentionBias(Napi::Env env, const Napi::Value& v) {
  const std::string what = "input 'attention_mask'";
  JsTensor t = tensorFromJs(env, v, what);
  if (t.dtype != DType::BOOL) return floatTensor(env, v, what);
  Tensor out(t.shape);
  for (size_t i = 0; i < out.data.size(); i++) out.data[i] = t.data[i] ? 0.f : -std::numeric_limits<float>::infinity();
  return out;
}

bool present(const Napi::Object& o, const char* key) {
  return o.Has(key) && !o.Get(key).IsUndefined() && !o.Get(key).IsNull();
}

constexpr const char* kInputNames[] = {"x", "timestep", "context", "y", "guidance", "attention_mask", "ref_latents",
                                       "ref_latents_method"};

class ForwardWorker : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Env env, std::shared_ptr<EngineHandle> h, FluxInputs in, Napi::Int32Array cancel)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), handle_(std::move(h)), in_(std::move(in)) {
    if (!cancel.IsEmpty()) {
      cancelRef_ = Napi::Persistent(cancel.As<Napi::Object>());
      cancelFlag_ = reinterpret_cast<std::atomic<int>*>(cancel.Data());
    }
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      std::shared_lock<std::shared_mutex> lock(handle_->lock);
      ForwardHooks hooks;
      hooks.cancel = cancelFlag_;
      if (cancelFlag_ && cancelFlag_->load()) throw Error("cancelled");
      out_ = handle_->model->forward(in_, &hooks);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(tensorToJs(Env(), out_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<EngineHandle> handle_;
  FluxInputs in_;
  Tensor out_;
  Napi::ObjectReference cancelRef_;
  // Int32Array memory shared with JS (Atomics.store); std::atomic<int> has int's layout here.
  std::atomic<int>* cancelFlag_ = nullptr;
};

Napi::Value Engine::forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = live(env);
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "forward(inputs): inputs must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); i++) {
    std::string k = keys.Get(i).ToString();
    if (std::none_of(std::begin(kInputNames), std::end(kInputNames), [&](const char* n) { return k == n; })) {
      std::string known;
      for (const char* n : kInputNames) known += (known.empty() ? "" : ", ") + std::string(n);
      throw Napi::TypeError::New(env, "forward: unknown input '" + k + "' (expected " + known + ")");
    }
  }
  FluxInputs in;
  in.x = floatInput(env, o, "x");
  in.timestep = floatInput(env, o, "timestep");
  in.context = floatInput(env, o, "context");
  in.y = floatInput(env, o, "y");
  if (present(o, "guidance")) in.guidance = floatInput(env, o, "guidance");
  if (present(o, "attention_mask")) in.attentionMask = attentionBias(env, o.Get("attention_mask"));
  if (present(o, "ref_latents")) {
    if (!o.Get("ref_latents").IsArray()) throw Napi::TypeError::New(env, "input 'ref_latents': expected an array of tensors");
    Napi::Array refs = o.Get("ref_latents").As<Napi::Array>();
    for (uint32_t i = 0; i < refs.Length(); i++)
      in.refLatents.push_back(floatTensor(env, refs.Get(i), "input 'ref_latents[" + std::to_string(i) + "]'"));
  }
  if (present(o, "ref_latents_method")) {
    if (!o.Get("ref_latents_method").IsString())
      throw Napi::TypeError::New(env, "input 'ref_latents_method': expected a string");
    in.refMethod = o.Get("ref_latents_method").As<Napi::String>().Utf8Value();
  }
  Napi::Int32Array cancel;
  if (info.Length() >= 2 && info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_int32_array)
    cancel = info[1].As<Napi::Int32Array>();
  auto* w = new ForwardWorker(env, h, std::move(in), cancel);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Engine::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = live(env);
  std::shared_lock<std::shared_mutex> lock(h->lock);
  const FluxModel& m = *h->model;
  const FluxConfig& c = m.config();
  Napi::Object cfg = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { cfg.Set(k, Napi::Number::New(env, v)); };
  num("inChannels", c.inChannels);
  num("outChannels", c.outChannels);
  num("hidden", c.hidden);
  num("numHeads", c.numHeads);
  num("headDim", c.headDim);
  num("depthDouble", c.depthDouble);
  num("depthSingle", c.depthSingle);
  num("contextDim", c.contextDim);
  num("vecDim", c.vecDim);
  num("mlpHidden", c.mlpHidden);
  cfg.Set("guidanceEmbed", c.guidanceEmbed);
  Napi::Array axes = Napi::Array::New(env, c.axesDim.size());
  for (size_t i = 0; i < c.axesDim.size(); i++) axes.Set(static_cast<uint32_t>(i), c.axesDim[i]);
  cfg.Set("axesDim", axes);
  Napi::Object out = Napi::Object::New(env);
  out.Set("path", m.path());
  out.Set("config", cfg);
  out.Set("weightBytes", Napi::Number::New(env, static_cast<double>(m.weightBytes())));
  Napi::Array layers = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& name : m.linearNames()) {
    const Linear& l = m.linear(name);
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", name);
    e.Set("kind", l.kind());
    e.Set("in", Napi::Number::New(env, static_cast<double>(l.inFeatures())));
    e.Set("out", Napi::Number::New(env, static_cast<double>(l.outFeatures())));
    layers.Set(i++, e);
  }
  out.Set("layers", layers);
  Napi::Object meta = Napi::Object::New(env);
  for (const auto& [k, v] : m.metadata()) meta.Set(k, v);
  out.Set("metadata", meta);
  return out;
}

}  // namespace

std::shared_ptr<EngineHandle> engineFromJs(const Napi::Value& v) {
  if (!engineCtor || !v.IsObject()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.InstanceOf(engineCtor->Value())) return nullptr;
  return Engine::Unwrap(o)->handle();
}

void registerEngine(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Engine::define(env);
  engineCtor = new Napi::FunctionReference(Napi::Persistent(ctor));
  exports.Set("Engine", ctor);
}

}  // namespace svdq::binding

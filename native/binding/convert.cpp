// Node-API glue for checkpoint conversion: convertCheckpoint(input, output, {from, force}) -> Promise,
// run on a worker thread (a FLUX.1-dev file is gigabytes).
#include "binding.h"
#include "svdq/flux.h"

namespace svdq::binding {
namespace {

class ConvertWorker : public Napi::AsyncWorker {
 public:
  ConvertWorker(Napi::Env env, std::string in, std::string out, bool force)
      : Napi::AsyncWorker(env), in_(std::move(in)), out_(std::move(out)), force_(force),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      convertNunchakuCheckpoint(in_, out_, force_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string in_, out_;
  bool force_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value ConvertCheckpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString())
    throw Napi::TypeError::New(env, "convertCheckpoint(input, output, {from: 'nunchaku', force?})");
  std::string from = "nunchaku";
  bool force = false;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    if (o.Has("from") && !o.Get("from").IsUndefined()) from = o.Get("from").ToString().Utf8Value();
    force = o.Has("force") && o.Get("force").ToBoolean();
  }
  if (from != "nunchaku") throw Napi::Error::New(env, "convertCheckpoint: from '" + from + "' is not supported (nunchaku)");
  auto* w = new ConvertWorker(env, info[0].ToString().Utf8Value(), info[1].ToString().Utf8Value(), force);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void registerConvert(Napi::Env env, Napi::Object exports) {
  exports.Set("convertCheckpoint", Napi::Function::New(env, ConvertCheckpoint));
}

}  // namespace svdq::binding

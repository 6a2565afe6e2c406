// Node-API glue for the quantizer: the numeric primitives and one-layer quantization for tests,
// and the async checkpoint quantizer (svdq/quant_pipeline.h) with progress through a ThreadSafeFunction.
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "binding.h"
#include "svdq/quant.h"
#include "svdq/quant_gptq.h"
#include "svdq/quant_kernels.h"
#include "svdq/quant_layer.h"
#include "svdq/quant_pipeline.h"

namespace svdq::binding {
namespace {
using namespace svdq::quant;

template <class T>
const T* arr(const Napi::CallbackInfo& info, size_t i, int64_t need, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray()) throw Napi::TypeError::New(info.Env(), std::string(what) + ": expected a typed array");
  auto ta = info[i].As<Napi::TypedArray>();
  if (static_cast<int64_t>(ta.ByteLength()) != need * static_cast<int64_t>(sizeof(T)))
    throw Napi::RangeError::New(info.Env(), std::string(what) + ": " + std::to_string(ta.ByteLength()) + " bytes, expected " +
                                                std::to_string(need * sizeof(T)));
  return reinterpret_cast<const T*>(static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}
int64_t num(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + ": expected a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v != static_cast<int64_t>(v)) throw Napi::RangeError::New(info.Env(), std::string(what) + ": expected a non-negative integer");
  return static_cast<int64_t>(v);
}
template <class TA, class T>
TA out(Napi::Env env, const std::vector<T>& v) {
  TA a = TA::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}

// quantizeInt4(x: Float32Array, rows, cols, unsigned?) -> {q: Int8Array, scales: Float32Array}
Napi::Value QuantizeInt4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t rows = num(info, 1, "rows"), cols = num(info, 2, "cols");
    const float* x = arr<float>(info, 0, rows * cols, "x");
    bool u = info.Length() > 3 && info[3].ToBoolean();
    std::vector<int8_t> q(rows * cols);
    std::vector<float> s(rows * cols / kInt4Group + (cols % kInt4Group ? 1 : 0));
    quantizeInt4(x, rows, cols, q.data(), s.data(), u);
    s.resize(rows * cols / kInt4Group);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("q", out<Napi::Int8Array>(info.Env(), q));
    o.Set("scales", out<Napi::Float32Array>(info.Env(), s));
    return o;
  });
}
Napi::Value DequantizeInt4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t rows = num(info, 2, "rows"), cols = num(info, 3, "cols");
    const int8_t* q = arr<int8_t>(info, 0, rows * cols, "q");
    const float* s = arr<float>(info, 1, rows * cols / kInt4Group, "scales");
    std::vector<float> o(rows * cols);
    dequantizeInt4(q, s, rows, cols, o.data());
    return out<Napi::Float32Array>(info.Env(), o);
  });
}
// quantizeNvfp4(x, rows, cols) -> {codes: Uint8Array, gscales: Uint8Array (E4M3), tensorScale}
Napi::Value QuantizeNvfp4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t rows = num(info, 1, "rows"), cols = num(info, 2, "cols");
    const float* x = arr<float>(info, 0, rows * cols, "x");
    if (cols % kFp4Group) throw Error("quantizeNvfp4: cols " + std::to_string(cols) + " is not a multiple of 16");
    float ts = nvfp4TensorScale(x, rows * cols);
    std::vector<uint8_t> c(rows * cols), g(rows * cols / kFp4Group);
    quantizeNvfp4(x, rows, cols, ts, c.data(), g.data());
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("codes", out<Napi::Uint8Array>(info.Env(), c));
    o.Set("gscales", out<Napi::Uint8Array>(info.Env(), g));
    o.Set("tensorScale", Napi::Number::New(info.Env(), ts));
    return o;
  });
}
Napi::Value DequantizeNvfp4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t rows = num(info, 3, "rows"), cols = num(info, 4, "cols");
    const uint8_t* c = arr<uint8_t>(info, 0, rows * cols, "codes");
    const uint8_t* g = arr<uint8_t>(info, 1, rows * cols / kFp4Group, "gscales");
    float ts = info[2].As<Napi::Number>().FloatValue();
    std::vector<float> o(rows * cols);
    dequantizeNvfp4(c, g, ts, rows, cols, o.data());
    return out<Napi::Float32Array>(info.Env(), o);
  });
}
Napi::Value PackNibbles(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto ta = info[0].As<Napi::Int8Array>();
    std::vector<uint8_t> o(ta.ElementLength() / 2);
    packNibbles(ta.Data(), ta.ElementLength(), o.data());
    return out<Napi::Uint8Array>(info.Env(), o);
  });
}
Napi::Value UnpackNibbles(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t n = num(info, 1, "n");
    const uint8_t* p = arr<uint8_t>(info, 0, (n + 1) / 2, "packed");
    std::vector<int8_t> o(n);
    unpackNibbles(p, n, o.data(), info.Length() < 3 || info[2].ToBoolean());
    return out<Napi::Int8Array>(info.Env(), o);
  });
}
// gemmW4A4Int4(qa, ascale, M, qw, wscale, N, K) -> Float32Array [M, N]
Napi::Value GemmW4A4Int4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t M = num(info, 2, "M"), N = num(info, 5, "N"), K = num(info, 6, "K");
    if (K % kInt4Group) throw Error("gemmW4A4Int4: K " + std::to_string(K) + " is not a multiple of 64");
    const int8_t* qa = arr<int8_t>(info, 0, M * K, "qa");
    const float* as = arr<float>(info, 1, M * K / kInt4Group, "ascale");
    const int8_t* qw = arr<int8_t>(info, 3, N * K, "qw");
    const float* ws = arr<float>(info, 4, N * K / kInt4Group, "wscale");
    std::vector<float> y(M * N);
    gemmW4A4Int4(qa, as, M, qw, ws, N, K, y.data());
    return out<Napi::Float32Array>(info.Env(), y);
  });
}
// gemmW4A4Nvfp4(ca, agscale, atscale [M], M, cw, wgscale, wtscale, N, K) -> Float32Array [M, N]:
// E2M1 codes (one per byte) with E4M3 group scales; a per-row activation tensor scale, one for W.
Napi::Value GemmW4A4Nvfp4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t M = num(info, 3, "M"), N = num(info, 7, "N"), K = num(info, 8, "K");
    if (K % kFp4Group) throw Error("gemmW4A4Nvfp4: K " + std::to_string(K) + " is not a multiple of 16");
    const uint8_t* ca = arr<uint8_t>(info, 0, M * K, "ca");
    const uint8_t* ga = arr<uint8_t>(info, 1, M * K / kFp4Group, "agscale");
    const float* ta = arr<float>(info, 2, M, "atscale");
    const uint8_t* cw = arr<uint8_t>(info, 4, N * K, "cw");
    const uint8_t* gw = arr<uint8_t>(info, 5, N * K / kFp4Group, "wgscale");
    if (!info[6].IsNumber()) throw Error("gemmW4A4Nvfp4: wtscale: expected a number");
    std::vector<float> y(M * N);
    gemmW4A4Nvfp4(ca, ga, ta, M, cw, gw, info[6].As<Napi::Number>().FloatValue(), N, K, y.data());
    return out<Napi::Float32Array>(info.Env(), y);
  });
}
// gptqInt4(W, N, K, X, S, percdamp = 0.01) -> {q: Int8Array, scales: Float32Array}: GPTQ of W [N, K] against the rows X [S, K]
Napi::Value GptqInt4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t N = num(info, 1, "N"), K = num(info, 2, "K"), S = num(info, 4, "S");
    const float* W = arr<float>(info, 0, N * K, "W");
    const float* X = arr<float>(info, 3, S * K, "X");
    const double damp = info.Length() > 5 && info[5].IsNumber() ? info[5].As<Napi::Number>().DoubleValue() : 0.01;
    std::vector<float> w(W, W + N * K), s(static_cast<size_t>(N * K / kInt4Group));
    std::vector<int8_t> q(static_cast<size_t>(N * K));
    gptqInt4(w.data(), N, K, gptqInverseHessianFactor(X, S, K, damp), q.data(), s.data());
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("q", out<Napi::Int8Array>(info.Env(), q));
    o.Set("scales", out<Napi::Float32Array>(info.Env(), s));
    return o;
  });
}
std::string str(Napi::Object o, const char* k, const char* def) {
  return o.Has(k) && !o.Get(k).IsUndefined() ? o.Get(k).ToString().Utf8Value() : def;
}
double dbl(Napi::Object o, const char* k, double def) {
  return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().DoubleValue() : def;
}
// svd(A, m, n, r, 'exact'|'randomized'|'auto', {powerIters?, oversample?, start? [rows, n]}) -> {U, S, Vt}
// (the options apply to 'randomized')
Napi::Value SvdTop(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t m = num(info, 1, "m"), n = num(info, 2, "n"), r = num(info, 3, "r");
    const float* A = arr<float>(info, 0, m * n, "A");
    std::string how = info.Length() > 4 ? info[4].ToString().Utf8Value() : "auto";
    Napi::Object o = info.Length() > 5 && info[5].IsObject() ? info[5].As<Napi::Object>() : Napi::Object::New(info.Env());
    const float* start = nullptr;
    int64_t startRows = 0;
    if (o.Has("start") && o.Get("start").IsTypedArray()) {
      auto st = o.Get("start").As<Napi::Float32Array>();
      if (st.ElementLength() % n) throw Error("svd: start has " + std::to_string(st.ElementLength()) + " values, not rows of " + std::to_string(n));
      start = st.Data(), startRows = static_cast<int64_t>(st.ElementLength()) / n;
    }
    Svd s = how == "exact" ? svdExact(A, m, n, r)
            : how == "randomized"
                ? svdRandomized(A, m, n, r, static_cast<int>(dbl(o, "powerIters", 4)), static_cast<int>(dbl(o, "oversample", 16)),
                                1234, start, startRows)
                : svdTopR(A, m, n, r);
    Napi::Object res = Napi::Object::New(info.Env());
    res.Set("U", out<Napi::Float32Array>(info.Env(), s.U));
    res.Set("S", out<Napi::Float32Array>(info.Env(), s.S));
    res.Set("Vt", out<Napi::Float32Array>(info.Env(), s.Vt));
    return res;
  });
}

QuantPrecision precisionArg(const std::string& s) {
  if (s == "int4") return QuantPrecision::Int4;
  if (s == "nvfp4") return QuantPrecision::Nvfp4;
  throw Error("unknown precision '" + s + "' (int4 | nvfp4)");
}
QuantMethod methodArg(const std::string& s) {
  if (s == "svdquant") return QuantMethod::SVDQuant;
  if (s == "smoothquant") return QuantMethod::SmoothQuant;
  if (s == "lowrank") return QuantMethod::LowRank;
  if (s == "naive") return QuantMethod::Naive;
  throw Error("unknown method '" + s + "' (svdquant | smoothquant | lowrank | naive | w4a16)");
}
LowRankMode lowrankArg(const std::string& s) {
  if (s == "svd") return LowRankMode::Svd;
  if (s == "corda") return LowRankMode::Corda;
  if (s == "whiten") return LowRankMode::Whiten;
  throw Error("unknown low-rank mode '" + s + "' (svd | corda | whiten)");
}

// quantizeLayer({W, N, K, bias?, sample, S, x?, M?, precision, method, lowrank, rank, refine, refineTol, gridStep, unsignedShift, gptq})
// -> {relError, naiveRelError, smoothing, refineSteps, gptq, rtnRelError, kind, parts..., y? (forward of x)}
Napi::Value QuantizeLayer(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    Napi::Object o = info[0].As<Napi::Object>();
    auto f32 = [&](const char* k, int64_t n) {
      auto ta = o.Get(k).As<Napi::Float32Array>();
      if (static_cast<int64_t>(ta.ElementLength()) != n)
        throw Error(std::string(k) + ": " + std::to_string(ta.ElementLength()) + " values, expected " + std::to_string(n));
      return std::vector<float>(ta.Data(), ta.Data() + n);
    };
    const int64_t N = static_cast<int64_t>(dbl(o, "N", 0)), K = static_cast<int64_t>(dbl(o, "K", 0)),
                  S = static_cast<int64_t>(dbl(o, "S", 0));
    Tensor W({N, K});
    W.data = f32("W", N * K);
    std::vector<float> bias;
    if (o.Has("bias") && o.Get("bias").IsTypedArray()) bias = f32("bias", N);
    LayerCalib cal;
    cal.sample = Tensor({S, K});
    cal.sample.data = f32("sample", S * K);
    cal.absmax.assign(K, 0.f);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t k = 0; k < K; ++k) cal.absmax[k] = std::max(cal.absmax[k], std::fabs(cal.sample.data[s * K + k]));
    const std::string method = str(o, "method", "svdquant");
    const bool gptq = o.Has("gptq") && o.Get("gptq").ToBoolean();
    Napi::Object res = Napi::Object::New(env);
    std::unique_ptr<Linear> layer;
    if (method == "w4a16") {
      if (gptq) throw Error(kGptqNotW4A16);
      W4A16Weights w = quantizeW4A16Layer("layer", W, bias);
      res.Set("qweight", out<Napi::Uint8Array>(env, w.qweight));
      res.Set("wscales", out<Napi::Float32Array>(env, w.wscales));
      res.Set("wzeros", out<Napi::Float32Array>(env, w.wzeros));
      layer = std::make_unique<W4A16Linear>(std::move(w));
    } else {
      LayerQuantOptions opt;
      opt.precision = precisionArg(str(o, "precision", "int4"));
      opt.method = methodArg(method);
      opt.lowrank = lowrankArg(str(o, "lowrank", "svd"));
      opt.rank = static_cast<int>(dbl(o, "rank", 32));
      opt.refineIters = static_cast<int>(dbl(o, "refine", 8));
      opt.refineTol = dbl(o, "refineTol", opt.refineTol);
      opt.gridStep = dbl(o, "gridStep", 0.05);
      opt.exhaustiveGrid = o.Has("exhaustiveGrid") && o.Get("exhaustiveGrid").ToBoolean();
      opt.tryUnsignedShift = o.Has("unsignedShift") && o.Get("unsignedShift").ToBoolean();
      opt.gptq = gptq;
      LayerQuantResult r = quantizeW4A4Layer("layer", W, bias, cal, opt);
      res.Set("relError", r.relError);
      res.Set("naiveRelError", r.naiveRelError);
      res.Set("smoothing", r.smoothing);
      res.Set("refineSteps", r.refineSteps);
      res.Set("gptq", r.gptq);
      res.Set("rtnRelError", r.rtnRelError);
      const W4A4Weights& w = r.weights;
      res.Set("inPadded", Napi::Number::New(env, static_cast<double>(w.inPadded)));
      res.Set("qweight", out<Napi::Uint8Array>(env, w.qweight));
      res.Set("wscales", out<Napi::Float32Array>(env, w.wscales));
      res.Set("wscales8", out<Napi::Uint8Array>(env, w.wscales8));
      res.Set("wtscale", w.wtscale);
      res.Set("smooth", out<Napi::Float32Array>(env, w.smooth));
      res.Set("loraDown", out<Napi::Float32Array>(env, w.loraDown.data));
      res.Set("loraUp", out<Napi::Float32Array>(env, w.loraUp.data));
      res.Set("bias", out<Napi::Float32Array>(env, w.bias));
      res.Set("actShift", w.actShift);
      res.Set("rank", Napi::Number::New(env, static_cast<double>(w.rank())));
      layer = std::make_unique<W4A4Linear>(r.weights);
    }
    res.Set("kind", layer->kind());
    res.Set("sampleRelError", layerRelError(*layer, W, bias, cal.sample));
    if (o.Has("x") && o.Get("x").IsTypedArray()) {
      const int64_t M = static_cast<int64_t>(dbl(o, "M", 0));
      std::vector<float> x = f32("x", M * K), y(M * N);
      layer->forward(x.data(), M, y.data());
      res.Set("y", out<Napi::Float32Array>(env, y));
    }
    return res;
  });
}

// quantizeCheckpoint(opts, onProgress?) -> Promise<report JSON string>
class QuantizeWorker : public Napi::AsyncWorker {
 public:
  QuantizeWorker(Napi::Env env, PipelineOptions opt, Napi::Function progress, std::shared_ptr<std::atomic<int>> cancel)
      : Napi::AsyncWorker(env), opt_(std::move(opt)), deferred_(Napi::Promise::Deferred::New(env)), cancel_(std::move(cancel)) {
    opt_.cancel = cancel_.get();
    if (!progress.IsEmpty())
      tsfn_ = Napi::ThreadSafeFunction::New(env, progress, "svdq-quantize-progress", 0, 1);
  }
  ~QuantizeWorker() override {
    if (tsfn_) tsfn_.Release();
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      auto cb = [this](int64_t done, int64_t total, const std::string& stage) {
        if (!tsfn_) return;
        auto* p = new std::tuple<int64_t, int64_t, std::string>(done, total, stage);
        tsfn_.NonBlockingCall(p, [](Napi::Env env, Napi::Function fn, std::tuple<int64_t, int64_t, std::string>* d) {
          fn.Call({Napi::Number::New(env, static_cast<double>(std::get<0>(*d))),
                   Napi::Number::New(env, static_cast<double>(std::get<1>(*d))), Napi::String::New(env, std::get<2>(*d))});
          delete d;
        });
      };
      report_ = quantizeCheckpoint(opt_, cb);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::String::New(Env(), report_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  PipelineOptions opt_;
  Napi::Promise::Deferred deferred_;
  Napi::ThreadSafeFunction tsfn_;
  std::string report_;
  std::shared_ptr<std::atomic<int>> cancel_;
};

Napi::Value QuantizeCheckpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "quantizeCheckpoint: expected options");
  Napi::Object o = info[0].As<Napi::Object>();
  PipelineOptions p;
  try {
    p.input = str(o, "input", "");
    p.output = str(o, "output", "");
    p.calib = str(o, "calib", "");
    p.force = o.Has("force") && o.Get("force").ToBoolean();
    p.method = str(o, "method", "svdquant");
    if (p.method != "w4a16") p.layer.method = methodArg(p.method);
    p.layer.precision = precisionArg(str(o, "precision", "int4"));
    p.layer.lowrank = lowrankArg(str(o, "lowrank", "svd"));
    p.layer.rank = static_cast<int>(dbl(o, "rank", 32));
    p.layer.refineIters = static_cast<int>(dbl(o, "refine", 8));
    p.layer.refineTol = dbl(o, "refineTol", p.layer.refineTol);
    p.layer.gridStep = dbl(o, "gridStep", 0.05);
    p.layer.exhaustiveGrid = o.Has("exhaustiveGrid") && o.Get("exhaustiveGrid").ToBoolean();
    p.layer.gptq = o.Has("gptq") && o.Get("gptq").ToBoolean();
    p.adaln16 = str(o, "adaln", "w4a16") == "16bit";
    p.calibRows = static_cast<int>(dbl(o, "calibRows", 256));
    p.randomCalibSets = static_cast<int>(dbl(o, "randomCalibSets", 2));
    p.calibBatch = static_cast<int>(dbl(o, "calibBatch", 0));
    p.unsignedGelu = !(o.Has("unsignedGelu") && !o.Get("unsignedGelu").ToBoolean());
    p.toolVersion = str(o, "toolVersion", "0.1.0");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  Napi::Function progress = info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
  auto cancel = std::make_shared<std::atomic<int>>(0);
  auto* w = new QuantizeWorker(env, std::move(p), progress, cancel);
  Napi::Promise pr = w->promise();
  // promise.cancel(): the worker stops at the next layer or block and rejects with "cancelled".
  pr.Set("cancel", Napi::Function::New(env, [cancel](const Napi::CallbackInfo&) { cancel->store(1); }));
  w->Queue();
  return pr;
}

// compareModels(reference, candidates[], inputs?: path, randomSets?, seed?) -> Promise<number[]>
class CompareWorker : public Napi::AsyncWorker {
 public:
  CompareWorker(Napi::Env env, std::string ref, std::vector<std::string> c, std::string in, int sets, uint64_t seed)
      : Napi::AsyncWorker(env), ref_(std::move(ref)), c_(std::move(c)), in_(std::move(in)), sets_(sets), seed_(seed),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      out_ = compareModels(ref_, c_, in_, sets_, seed_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Array a = Napi::Array::New(Env(), out_.size());
    for (size_t i = 0; i < out_.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(Env(), out_[i]));
    deferred_.Resolve(a);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string ref_;
  std::vector<std::string> c_;
  std::string in_;
  int sets_;
  uint64_t seed_;
  Napi::Promise::Deferred deferred_;
  std::vector<double> out_;
};

Napi::Value CompareModels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "compareModels(reference, candidates[], inputs?, randomSets?, seed?)");
  std::vector<std::string> c;
  Napi::Array a = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) c.push_back(a.Get(i).ToString().Utf8Value());
  std::string in = info.Length() > 2 && info[2].IsString() ? info[2].ToString().Utf8Value() : "";
  int sets = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int32Value() : 2;
  uint64_t seed = info.Length() > 4 && info[4].IsNumber() ? static_cast<uint64_t>(info[4].As<Napi::Number>().Int64Value()) : 99;
  auto* w = new CompareWorker(env, info[0].ToString().Utf8Value(), std::move(c), std::move(in), sets, seed);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void registerQuant(Napi::Env env, Napi::Object exports) {
  Napi::Object q = Napi::Object::New(env);
  q.Set("quantizeInt4", Napi::Function::New(env, QuantizeInt4));
  q.Set("dequantizeInt4", Napi::Function::New(env, DequantizeInt4));
  q.Set("quantizeNvfp4", Napi::Function::New(env, QuantizeNvfp4));
  q.Set("dequantizeNvfp4", Napi::Function::New(env, DequantizeNvfp4));
  q.Set("packNibbles", Napi::Function::New(env, PackNibbles));
  q.Set("unpackNibbles", Napi::Function::New(env, UnpackNibbles));
  q.Set("gemmW4A4Int4", Napi::Function::New(env, GemmW4A4Int4));
  q.Set("gemmW4A4Nvfp4", Napi::Function::New(env, GemmW4A4Nvfp4));
  q.Set("gptqInt4", Napi::Function::New(env, GptqInt4));
  q.Set("svd", Napi::Function::New(env, SvdTop));
  q.Set("quantizeLayer", Napi::Function::New(env, QuantizeLayer));
  q.Set("quantizeCheckpoint", Napi::Function::New(env, QuantizeCheckpoint));
  q.Set("compareModels", Napi::Function::New(env, CompareModels));
  exports.Set("quant", q);
}

}  // namespace svdq::binding

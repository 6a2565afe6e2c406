// Node-API glue for the CUDA backend: gpu.available() and test/bench entry points that take host
// arrays, upload, run one kernel (or one layer), download, and return the GPU result next to the CPU
// reference (svdq/quant_kernels.h, svdq/quant.h) computed on the same inputs. Options objects with
// Float32Array/Uint8Array/Int8Array fields; shapes are plain numbers.
// Without SVDQ_WITH_CUDA: available() is false and every other entry throws.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "binding.h"
#include "svdq/quant.h"
#include "svdq/quant_kernels.h"
#ifdef SVDQ_WITH_CUDA
#include "svdq/cuda_ops.h"
#endif

namespace svdq::binding {
namespace {


#ifdef SVDQ_WITH_CUDA
namespace cu = svdq::cuda;

struct Opts {
  Napi::Object o;
  std::string fn;
  bool has(const char* k) const { return o.Has(k) && !o.Get(k).IsUndefined() && !o.Get(k).IsNull(); }
  int64_t integer(const char* k, int64_t def = -1) const {
    if (!has(k)) {
      if (def >= 0) return def;
      throw Error(fn + ": option '" + k + "' is required");
    }
    double v = o.Get(k).ToNumber().DoubleValue();
    if (!(v >= 0) || v != std::floor(v)) throw Error(fn + ": option '" + k + "' must be a non-negative integer");
    return static_cast<int64_t>(v);
  }
  double number(const char* k, double def) const { return has(k) ? o.Get(k).ToNumber().DoubleValue() : def; }
  bool flag(const char* k) const { return has(k) && o.Get(k).ToBoolean(); }
  std::string str(const char* k, const std::string& def) const { return has(k) ? o.Get(k).ToString().Utf8Value() : def; }
  template <class T>
  std::vector<T> array(const char* k, int64_t n) const {
    if (!has(k) || !o.Get(k).IsTypedArray()) throw Error(fn + ": option '" + k + "' must be a typed array");
    auto ta = o.Get(k).As<Napi::TypedArray>();
    if (ta.ByteLength() != static_cast<size_t>(n) * sizeof(T))
      throw Error(fn + ": '" + k + "' has " + std::to_string(ta.ByteLength()) + " bytes, expected " +
                  std::to_string(n * sizeof(T)) + " (" + std::to_string(n) + " elements)");
    std::vector<T> v(static_cast<size_t>(n));
    std::memcpy(v.data(), static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength());
    return v;
  }
};
Opts opts(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsObject()) throw Error(std::string("gpu.") + fn + ": expected an options object");
  return Opts{info[0].As<Napi::Object>(), std::string("gpu.") + fn};
}
void requireGpu(const std::string& fn) {
  if (!cu::available()) throw Error(fn + ": no CUDA device available");
}

template <class TA, class T>
TA typed(Napi::Env env, const std::vector<T>& v) {
  TA a = TA::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}
uint16_t toBf16(float v) { return f32ToBf16(v); }
float fromBf16(uint16_t v) { return bf16ToF32(v); }
std::vector<uint16_t> bf16Vec(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = toBf16(v[i]);
  return b;
}
std::vector<float> roundedBf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = fromBf16(toBf16(v[i]));
  return r;
}
template <class T>
cu::DeviceBuffer up(const std::vector<T>& v) {
  cu::DeviceBuffer b(std::max<size_t>(v.size() * sizeof(T), 16));
  b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> down(const cu::DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T));
  return v;
}
double geluTanh(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// The CPU NVFP4 activation path of W4A4Linear::forward: a tensor scale per row, codes, decoded group scales.
void cpuNvfp4(const std::vector<float>& xs, int64_t M, int64_t Kp, std::vector<int8_t>& q, std::vector<float>& s,
              std::vector<float>& ts) {
  const int64_t G = Kp / quant::kFp4Group;
  std::vector<uint8_t> codes(static_cast<size_t>(Kp)), gsb(static_cast<size_t>(G));
  for (int64_t m = 0; m < M; ++m) {
    ts[m] = quant::nvfp4TensorScale(xs.data() + m * Kp, Kp);
    quant::quantizeNvfp4(xs.data() + m * Kp, 1, Kp, ts[m], codes.data(), gsb.data());
    for (int64_t k = 0; k < Kp; ++k) q[m * Kp + k] = static_cast<int8_t>(codes[k]);
    for (int64_t j = 0; j < G; ++j) s[m * G + j] = quant::decodeE4m3(gsb[j]);
  }
}

// quantizeAct({x [M,K], M, K, smooth [K], shift?, unsigned?, precision?: 'int4'|'nvfp4', loraDown? [r,K], rank?})
//  -> {gpu: {q, scales [M,G], tensorScale?, loraAct?}, cpu: {...}}; q one value (INT4) or code (NVFP4) per byte
//  over the CPU's Kp = roundUp(K, g). x and loraDown are rounded to BF16 first for both sides.
Napi::Value QuantizeAct(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "quantizeAct");
    requireGpu(o.fn);
    const int64_t M = o.integer("M"), K = o.integer("K"), r = o.integer("rank", 0);
    const bool fp4 = o.str("precision", "int4") == "nvfp4";
    const int64_t g = fp4 ? 16 : 64, KpC = cu::roundUp(K, g), Kp = cu::roundUp(K, 64), Mp = cu::roundUp(std::max<int64_t>(M, 1), 128);
    const int64_t Rp = r ? cu::roundUp(r, 16) : 0;
    const float shift = static_cast<float>(o.number("shift", 0));
    const bool uns = o.flag("unsigned");
    std::vector<float> x = roundedBf16(o.array<float>("x", M * K)), smooth = o.array<float>("smooth", K);
    std::vector<float> ld = r ? roundedBf16(o.array<float>("loraDown", r * K)) : std::vector<float>();

    // GPU
    std::vector<float> sm(Kp, 1.f);
    std::copy(smooth.begin(), smooth.end(), sm.begin());
    std::vector<uint16_t> ldp(static_cast<size_t>(std::max<int64_t>(Rp * Kp, 1)), 0);
    for (int64_t i = 0; i < r; ++i)
      for (int64_t k = 0; k < K; ++k) ldp[i * Kp + k] = toBf16(ld[i * K + k]);
    auto dx = up(bf16Vec(x)), dsm = up(sm), dld = up(ldp);
    cu::DeviceBuffer dq(Mp * Kp / 2), ds(Kp / g * Mp * 4), dts(Mp * 4), dla(std::max<int64_t>(Mp * Rp, 1) * 4);
    dq.fill(0xff), ds.fill(0xff), dts.fill(0xff), dla.fill(0xff);  // poison: anything not written shows
    cu::ActQuantArgs a;
    a.x = dx.as<uint16_t>(), a.M = M, a.K = K, a.Kp = Kp, a.Mp = Mp, a.smooth = dsm.as<float>(), a.shift = shift;
    a.isUnsigned = uns, a.loraDown = r ? dld.as<uint16_t>() : nullptr, a.rankPadded = static_cast<int>(Rp);
    a.qact = dq.as<uint8_t>(), a.ascales = ds.as<float>(), a.tensorScale = dts.as<float>(), a.loraAct = dla.as<float>();
    if (fp4) cu::quantizeActNvfp4(a);
    else cu::quantizeActInt4(a);
    cu::synchronize(fp4 ? "quantizeActNvfp4" : "quantizeActInt4");
    auto qp = down<uint8_t>(dq, Mp * Kp / 2);
    auto sp = down<float>(ds, Kp / g * Mp);
    std::vector<int8_t> gq(M * KpC);
    std::vector<float> gs(M * KpC / g), gts(M), gla(M * r);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < KpC; ++k) {
        int v = (qp[m * Kp / 2 + k / 2] >> ((k & 1) * 4)) & 0xf;
        if (!fp4 && !uns && v >= 8) v -= 16;
        gq[m * KpC + k] = static_cast<int8_t>(v);
      }
      for (int64_t j = 0; j < KpC / g; ++j) gs[m * (KpC / g) + j] = sp[j * Mp + m];
    }
    if (fp4) {
      auto t = down<float>(dts, Mp);
      std::copy(t.begin(), t.begin() + M, gts.begin());
    }
    if (r) {
      auto l = down<float>(dla, Mp * Rp);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < r; ++i) gla[m * r + i] = l[m * Rp + i];
    }

    // CPU reference (svdq::quant), on the same BF16-rounded inputs
    std::vector<float> xs(M * KpC, 0.f);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xs[m * KpC + k] = (x[m * K + k] + shift) / smooth[k];
    std::vector<int8_t> cq(M * KpC);
    std::vector<float> cs(M * KpC / g), cts(M), cla(M * r);
    if (fp4) {
      cpuNvfp4(xs, M, KpC, cq, cs, cts);
    } else {
      quant::quantizeInt4(xs.data(), M, KpC, cq.data(), cs.data(), uns);
    }
    for (int64_t m = 0; m < M; ++m)  // float64: the higher-precision reference of the BF16 MMA branch
      for (int64_t i = 0; i < r; ++i) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(x[m * K + k]) * ld[i * K + k];
        cla[m * r + i] = static_cast<float>(s);
      }
    Napi::Env env = info.Env();
    auto pack = [&](const std::vector<int8_t>& q, const std::vector<float>& s, const std::vector<float>& ts, const std::vector<float>& la) {
      Napi::Object res = Napi::Object::New(env);
      res.Set("q", typed<Napi::Int8Array>(env, q));
      res.Set("scales", typed<Napi::Float32Array>(env, s));
      if (fp4) res.Set("tensorScale", typed<Napi::Float32Array>(env, ts));
      if (r) res.Set("loraAct", typed<Napi::Float32Array>(env, la));
      return res;
    };
    Napi::Object out = Napi::Object::New(env);
    out.Set("gpu", pack(gq, gs, gts, gla));
    out.Set("cpu", pack(cq, cs, cts, cla));
    return out;
  });
}

// The epilogue in float64 on the CPU: + bias, + la . lu^T, GELU, residual + gate * y.
void cpuEpilogue(std::vector<double>& y, int64_t M, int64_t N, const Opts& o, int64_t r) {
  if (o.has("bias")) {
    auto b = o.array<float>("bias", N);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += b[n];
  }
  if (r) {
    auto la = o.array<float>("loraAct", M * r), lu = o.array<float>("loraUp", N * r);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t i = 0; i < r; ++i) s += double(la[m * r + i]) * lu[n * r + i];
        y[m * N + n] += s;
      }
  }
  if (o.str("act", "none") == "gelu")
    for (auto& v : y) v = geluTanh(v);
  if (o.has("residual")) {
    auto res = roundedBf16(o.array<float>("residual", M * N));
    const int64_t gr = o.integer("gateRows", 1);
    std::vector<float> gate;
    if (o.has("gate")) gate = roundedBf16(o.array<float>("gate", (M + gr - 1) / gr * N));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = res[m * N + n] + (gate.empty() ? 1.0 : gate[(m / gr) * N + n]) * y[m * N + n];
  }
}

// gemmW4A4({precision?, M, N, K (multiple of the group), qa [M,K] values/codes (Int8Array), actUnsigned?, ascales [M,G],
//   tensorScale? [M], qw [N,K] (Int8Array), wscales [N,G] (int4: Float32Array; nvfp4: Uint8Array E4M3),
//   wtscale?, bias? [N], rank?, loraAct? [M,r], loraUp? [N,r], act?, residual? [M,N], gate?, gateRows?,
//   bf16Out?, path?: 'auto'|'s4'|'s8'}) -> {gpu [M,N], cpuRaw [M,N] (group GEMM only), cpu [M,N] (epilogue in f64)}
Napi::Value GemmW4A4(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "gemmW4A4");
    requireGpu(o.fn);
    const bool fp4 = o.str("precision", "int4") == "nvfp4";
    const int64_t M = o.integer("M"), N = o.integer("N"), K = o.integer("K"), r = o.integer("rank", 0);
    const int64_t g = fp4 ? 16 : 64, G = K / g;
    if (K % g) throw Error(o.fn + ": K=" + std::to_string(K) + " is not a multiple of the group " + std::to_string(g));
    const int64_t Kp = cu::roundUp(K, 64), Gd = Kp / g, Mp = cu::roundUp(std::max<int64_t>(M, 1), 128), Np = cu::roundUp(N, 128);
    const int64_t Rp = r ? cu::roundUp(r, 16) : 0;
    auto qa = o.array<int8_t>("qa", M * K), qw = o.array<int8_t>("qw", N * K);
    auto as = o.array<float>("ascales", M * G);
    std::vector<float> ws;
    std::vector<uint8_t> ws8, as8;
    std::vector<float> ats;
    if (fp4) {
      ws8 = o.array<uint8_t>("wscales", N * G);
      ats = o.array<float>("tensorScale", M);
    } else {
      ws = o.array<float>("wscales", N * G);
    }
    const float wts = static_cast<float>(o.number("wtscale", 1));
    auto packRows = [&](const std::vector<int8_t>& q, int64_t rows, int64_t rowsPad) {
      std::vector<uint8_t> p(rowsPad * Kp / 2, 0);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t k = 0; k < K; k += 2)
          p[i * Kp / 2 + k / 2] = static_cast<uint8_t>((q[i * K + k] & 0xf) | ((q[i * K + k + 1] & 0xf) << 4));
      return p;
    };
    auto scalesT = [&](auto get, int64_t rows, int64_t rowsPad) {
      std::vector<float> t(Gd * rowsPad, 0.f);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < G; ++j) t[j * rowsPad + i] = get(i, j);
      return t;
    };
    auto dqa = up(packRows(qa, M, Mp)), dqw = up(packRows(qw, N, Np));
    // NVFP4 activation group scales arrive decoded (F32); weight scales as E4M3 bytes like a checkpoint
    auto das = up(scalesT([&](int64_t i, int64_t j) { return as[i * G + j]; }, M, Mp));
    auto dws = up(scalesT([&](int64_t i, int64_t j) { return fp4 ? quant::decodeE4m3(ws8[i * G + j]) : ws[i * G + j]; }, N, Np));
    std::vector<float> atsP(Mp, 1.f);
    std::copy(ats.begin(), ats.end(), atsP.begin());
    auto dts = up(atsP);
    cu::DeviceBuffer dbias, dla, dlu, dres, dgate;
    cu::W4A4GemmArgs a;
    a.precision = fp4 ? QuantPrecision::Nvfp4 : QuantPrecision::Int4;
    a.qact = dqa.as<uint8_t>(), a.ascales = das.as<float>(), a.tensorScale = dts.as<float>();
    a.qweight = dqw.as<uint8_t>(), a.wscales = dws.as<float>(), a.wtscale = wts;
    a.M = M, a.N = N, a.Kp = Kp, a.Mp = Mp, a.Np = Np, a.actUnsigned = o.flag("actUnsigned");
    if (o.has("bias")) {
      auto b = o.array<float>("bias", N);
      b.resize(Np, 0.f);
      dbias = up(b), a.bias = dbias.as<float>();
    }
    if (r) {
      auto la = o.array<float>("loraAct", M * r), lu = o.array<float>("loraUp", N * r);
      std::vector<float> lap(Mp * Rp, 0.f), lup(Np * Rp, 0.f);
      for (int64_t m = 0; m < M; ++m) std::copy(&la[m * r], &la[m * r] + r, &lap[m * Rp]);
      for (int64_t n = 0; n < N; ++n) std::copy(&lu[n * r], &lu[n * r] + r, &lup[n * Rp]);
      dla = up(lap), dlu = up(lup), a.loraAct = dla.as<float>(), a.loraUp = dlu.as<float>(), a.rankPadded = static_cast<int>(Rp);
    }
    a.act = o.str("act", "none") == "gelu" ? cu::Activation::GeluTanh : cu::Activation::None;
    const int64_t gr = o.integer("gateRows", 1);
    if (o.has("residual")) dres = up(bf16Vec(o.array<float>("residual", M * N))), a.residual = dres.as<uint16_t>();
    if (o.has("gate")) dgate = up(bf16Vec(o.array<float>("gate", (M + gr - 1) / gr * N))), a.gate = dgate.as<uint16_t>(), a.gateRows = gr;
    const std::string path = o.str("path", "auto");
    a.path = path == "s4" ? cu::MmaPath::S4 : path == "s8" ? cu::MmaPath::S8 : cu::MmaPath::Auto;
    const bool bf16Out = o.flag("bf16Out");
    cu::DeviceBuffer dout(std::max<int64_t>(M * N, 1) * (bf16Out ? 2 : 4));
    dout.fill(0xff);  // poison (NaN in both formats)
    if (bf16Out) a.out = dout.as<uint16_t>();
    else a.outF32 = dout.as<float>();
    cu::gemmW4A4(a);
    cu::synchronize("gemmW4A4");
    std::vector<float> gy(M * N);
    if (bf16Out) {
      auto b = down<uint16_t>(dout, M * N);
      for (int64_t i = 0; i < M * N; ++i) gy[i] = fromBf16(b[i]);
    } else {
      gy = down<float>(dout, M * N);
    }
    // CPU: the group GEMM (exact target), then the epilogue in float64
    std::vector<float> raw(M * N);
    if (fp4) {
      std::vector<uint8_t> ca(qa.begin(), qa.end()), cw(qw.begin(), qw.end());
      as8.resize(M * G);
      for (int64_t i = 0; i < M * G; ++i) as8[i] = quant::encodeE4m3(as[i]);  // exact: the scales are E4M3 values
      quant::gemmW4A4Nvfp4(ca.data(), as8.data(), ats.data(), M, cw.data(), ws8.data(), wts, N, K, raw.data());
    } else {
      quant::gemmW4A4Int4(qa.data(), as.data(), M, qw.data(), ws.data(), N, K, raw.data());
    }
    std::vector<double> y(raw.begin(), raw.end());
    cpuEpilogue(y, M, N, o, r);
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("gpu", typed<Napi::Float32Array>(env, gy));
    out.Set("cpuRaw", typed<Napi::Float32Array>(env, raw));
    std::vector<float> yf(y.begin(), y.end());
    out.Set("cpu", typed<Napi::Float32Array>(env, yf));
    return out;
  });
}

// w4a4Layer({precision?, M, in, out, x [M,in], qweight (Uint8Array [out, KpCpu/2]), wscales ([out,G] F32 or
//   E4M3 bytes), wtscale?, smooth [in], actShift?, rank?, loraDown? [r,in], loraUp? [out,r], bias? [out], path?})
//   -> {gpu [M,out] (BF16 output widened), cpu [M,out] (W4A4Linear::forward on the BF16-rounded x)}
Napi::Value W4A4Layer(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "w4a4Layer");
    requireGpu(o.fn);
    W4A4Weights w;
    const bool fp4 = o.str("precision", "int4") == "nvfp4";
    const int64_t g = fp4 ? 16 : 64, M = o.integer("M");
    w.precision = fp4 ? QuantPrecision::Nvfp4 : QuantPrecision::Int4;
    w.in = o.integer("in"), w.out = o.integer("out"), w.inPadded = cu::roundUp(w.in, g);
    const int64_t G = w.inPadded / g, r = o.integer("rank", 0);
    w.qweight = o.array<uint8_t>("qweight", w.out * w.inPadded / 2);
    if (fp4) w.wscales8 = o.array<uint8_t>("wscales", w.out * G), w.wtscale = static_cast<float>(o.number("wtscale", 1));
    else w.wscales = o.array<float>("wscales", w.out * G);
    w.smooth = o.array<float>("smooth", w.in);
    w.actShift = static_cast<float>(o.number("actShift", 0));
    if (r) {
      w.loraDown = Tensor({r, w.in}), w.loraDown.data = roundedBf16(o.array<float>("loraDown", r * w.in));
      w.loraUp = Tensor({w.out, r}), w.loraUp.data = o.array<float>("loraUp", w.out * r);
    }
    if (o.has("bias")) w.bias = o.array<float>("bias", w.out);
    std::vector<float> x = roundedBf16(o.array<float>("x", M * w.in));
    auto L = cu::uploadW4A4(w);
    cu::W4A4Workspace ws;
    auto dx = up(bf16Vec(x));
    cu::DeviceBuffer dy(std::max<int64_t>(M * w.out, 1) * 2);
    dy.fill(0xff);
    const std::string path = o.str("path", "auto");
    cu::forwardW4A4(*L, dx.as<uint16_t>(), M, ws, dy.as<uint16_t>(), nullptr, cu::Activation::None, nullptr, nullptr, 1,
                    path == "s4" ? cu::MmaPath::S4 : path == "s8" ? cu::MmaPath::S8 : cu::MmaPath::Auto);
    cu::synchronize("w4a4Layer");
    auto yb = down<uint16_t>(dy, M * w.out);
    std::vector<float> gy(M * w.out), cy(M * w.out);
    for (size_t i = 0; i < yb.size(); ++i) gy[i] = fromBf16(yb[i]);
    W4A4Linear cpu(std::move(w));
    cpu.forward(x.data(), M, cy.data());
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("gpu", typed<Napi::Float32Array>(env, gy));
    out.Set("cpu", typed<Napi::Float32Array>(env, cy));
    return out;
  });
}

// w4a16({M, K, N, x [M,K], qweight (Uint8Array [N,K/2]), wscales [N,K/64], wzeros [N,K/64], bias?})
Napi::Value W4A16(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "w4a16");
    requireGpu(o.fn);
    W4A16Weights w;
    const int64_t M = o.integer("M");
    w.in = o.integer("K"), w.out = o.integer("N");
    w.qweight = o.array<uint8_t>("qweight", w.out * w.in / 2);
    w.wscales = o.array<float>("wscales", w.out * (w.in / 64));
    w.wzeros = o.array<float>("wzeros", w.out * (w.in / 64));
    if (o.has("bias")) w.bias = o.array<float>("bias", w.out);
    std::vector<float> x = roundedBf16(o.array<float>("x", M * w.in));
    auto L = cu::uploadW4A16(w);
    auto dx = up(bf16Vec(x));
    cu::DeviceBuffer dy(std::max<int64_t>(M * w.out, 1) * 4);
    dy.fill(0xff);
    cu::W4A16Args a;
    a.x = dx.as<uint16_t>(), a.qweight = L->qweight.as<uint8_t>(), a.wscales = L->wscales.as<float>();
    a.wzeros = L->wzeros.as<float>(), a.bias = L->hasBias ? L->bias.as<float>() : nullptr;
    a.M = M, a.N = w.out, a.K = w.in, a.outF32 = dy.as<float>();
    cu::gemvW4A16(a);
    cu::synchronize("gemvW4A16");
    auto gy = down<float>(dy, M * w.out);
    std::vector<float> cy(M * w.out);
    W4A16Linear cpu(std::move(w));
    cpu.forward(x.data(), M, cy.data());
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("gpu", typed<Napi::Float32Array>(env, gy));
    out.Set("cpu", typed<Napi::Float32Array>(env, cy));
    return out;
  });
}

// gemmBf16({M, N, K, x [M,K], w [N,K]}) -> {gpu (BF16 widened), cpu (float64 on the BF16-rounded inputs)}
Napi::Value GemmBf16(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "gemmBf16");
    requireGpu(o.fn);
    const int64_t M = o.integer("M"), N = o.integer("N"), K = o.integer("K");
    auto x = roundedBf16(o.array<float>("x", M * K)), w = roundedBf16(o.array<float>("w", N * K));
    auto dx = up(bf16Vec(x)), dw = up(bf16Vec(w));
    cu::DeviceBuffer dy(std::max<int64_t>(M * N, 1) * 2);
    dy.fill(0xff);
    cu::gemmBf16(dx.as<uint16_t>(), dw.as<uint16_t>(), dy.as<uint16_t>(), M, N, K);
    cu::synchronize("gemmBf16");
    auto yb = down<uint16_t>(dy, M * N);
    std::vector<float> gy(M * N), cy(M * N);
    for (int64_t i = 0; i < M * N; ++i) gy[i] = fromBf16(yb[i]);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(x[m * K + k]) * w[n * K + k];
        cy[m * N + n] = static_cast<float>(s);
      }
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("gpu", typed<Napi::Float32Array>(env, gy));
    out.Set("cpu", typed<Napi::Float32Array>(env, cy));
    return out;
  });
}

// benchGemm({M, K, N, rank?, iters?, path?}) -> milliseconds per call on device-resident random data:
//  {quant (activation kernel with the branch), fused (quant + GEMM with the branch), plain (quant + GEMM,
//   no branch), unfused (plain + two cuBLASLt BF16 GEMMs for the branch; null without cuBLASLt),
//   bf16 (cuBLASLt; null without it), gemm (the GEMM alone, with the branch)}
Napi::Value BenchGemm(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Opts o = opts(info, "benchGemm");
    requireGpu(o.fn);
    const int64_t M = o.integer("M"), K = o.integer("K"), N = o.integer("N"), r = o.integer("rank", 32);
    const int iters = static_cast<int>(o.integer("iters", 20));
    const std::string path = o.str("path", "auto");
    if (K % 64 || N % 128 || r % 16 || r == 0) throw Error(o.fn + ": K % 64, N % 128, rank % 16 must be 0 (rank > 0)");
    const int64_t Mp = cu::roundUp(M, 128);
    cu::DeviceBuffer x(M * K * 2), sm(K * 4), ld(r * K * 2), qa(Mp * K / 2), as(K / 64 * Mp * 4), la(Mp * r * 4);
    cu::DeviceBuffer qw(N * K / 2), ws(K / 64 * N * 4), lu(N * r * 4), bias(N * 4), y(M * N * 2), w16(N * K * 2),
        la16(M * r * 2), lu16(N * r * 2);
    cu::fillUniformBf16(x.as<uint16_t>(), M * K, -2.f, 2.f, 1);
    cu::fillUniformF32(sm.as<float>(), K, 0.5f, 2.f, 2);
    cu::fillUniformBf16(ld.as<uint16_t>(), r * K, -0.05f, 0.05f, 3);
    cu::fillRandomBytes(qw.as<uint8_t>(), N * K / 2, 4);
    cu::fillUniformF32(ws.as<float>(), K / 64 * N, 0.001f, 0.01f, 5);
    cu::fillUniformF32(lu.as<float>(), N * r, -0.05f, 0.05f, 6);
    cu::fillUniformF32(bias.as<float>(), N, -0.1f, 0.1f, 7);
    cu::fillUniformBf16(w16.as<uint16_t>(), N * K, -0.05f, 0.05f, 8);
    cu::fillUniformBf16(lu16.as<uint16_t>(), N * r, -0.05f, 0.05f, 9);
    cu::ActQuantArgs q;
    q.x = x.as<uint16_t>(), q.M = M, q.K = K, q.Kp = K, q.Mp = Mp, q.smooth = sm.as<float>();
    q.qact = qa.as<uint8_t>(), q.ascales = as.as<float>(), q.loraAct = la.as<float>(), q.rankPadded = static_cast<int>(r);
    cu::ActQuantArgs qPlain = q;
    q.loraDown = ld.as<uint16_t>();
    cu::W4A4GemmArgs g;
    g.qact = qa.as<uint8_t>(), g.ascales = as.as<float>(), g.qweight = qw.as<uint8_t>(), g.wscales = ws.as<float>();
    g.M = M, g.N = N, g.Kp = K, g.Mp = Mp, g.Np = N, g.bias = bias.as<float>(), g.out = y.as<uint16_t>();
    g.path = path == "s4" ? cu::MmaPath::S4 : path == "s8" ? cu::MmaPath::S8 : cu::MmaPath::Auto;
    cu::W4A4GemmArgs gPlain = g;
    g.loraAct = la.as<float>(), g.loraUp = lu.as<float>(), g.rankPadded = static_cast<int>(r);
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    const int warm = 3;
    out.Set("quant", cu::timeMs([&] { cu::quantizeActInt4(q); }, warm, iters));
    out.Set("gemm", cu::timeMs([&] { cu::gemmW4A4(g); }, warm, iters));
    out.Set("fused", cu::timeMs([&] { cu::quantizeActInt4(q); cu::gemmW4A4(g); }, warm, iters));
    out.Set("plain", cu::timeMs([&] { cu::quantizeActInt4(qPlain); cu::gemmW4A4(gPlain); }, warm, iters));
    if (cu::hasCublasLt()) {
      out.Set("unfused", cu::timeMs([&] {
                cu::quantizeActInt4(qPlain);
                cu::gemmBf16(x.as<uint16_t>(), ld.as<uint16_t>(), la16.as<uint16_t>(), M, r, K);  // x . lora_down^T
                cu::gemmW4A4(gPlain);
                cu::gemmBf16(la16.as<uint16_t>(), lu16.as<uint16_t>(), y.as<uint16_t>(), M, N, r, 1.f, 1.f);  // y += la . lu^T
              }, warm, iters));
      out.Set("bf16", cu::timeMs([&] { cu::gemmBf16(x.as<uint16_t>(), w16.as<uint16_t>(), y.as<uint16_t>(), M, N, K); }, warm, iters));
    } else {
      out.Set("unfused", env.Null());
      out.Set("bf16", env.Null());
    }
    cu::synchronize("benchGemm");
    return out;
  });
}
#endif  // SVDQ_WITH_CUDA

Napi::Value Available(const Napi::CallbackInfo& info) {
#ifdef SVDQ_WITH_CUDA
  return Napi::Boolean::New(info.Env(), svdq::cuda::available());
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef SVDQ_WITH_CUDA
  return guard(env, [&]() -> Napi::Value {
    o.Set("built", true);
    o.Set("device", svdq::cuda::deviceName());
    o.Set("computeCapability", svdq::cuda::computeCapability());
    o.Set("cublasLt", svdq::cuda::hasCublasLt());
    return o;
  });
#else
  o.Set("built", false);
  o.Set("device", "");
  o.Set("computeCapability", 0);
  o.Set("cublasLt", false);
  return o;
#endif
}

Napi::Value NotBuilt(const Napi::CallbackInfo& info) {
  throw Napi::Error::New(info.Env(), "gpu: this addon was built without CUDA (no nvcc at configure time)");
}

}  // namespace

void registerGpu(Napi::Env env, Napi::Object exports) {
  Napi::Object g = Napi::Object::New(env);
  g.Set("available", Napi::Function::New(env, Available));
  g.Set("info", Napi::Function::New(env, Info));
#ifdef SVDQ_WITH_CUDA
  g.Set("quantizeAct", Napi::Function::New(env, QuantizeAct));
  g.Set("gemmW4A4", Napi::Function::New(env, GemmW4A4));
  g.Set("w4a4Layer", Napi::Function::New(env, W4A4Layer));
  g.Set("w4a16", Napi::Function::New(env, W4A16));
  g.Set("gemmBf16", Napi::Function::New(env, GemmBf16));
  g.Set("benchGemm", Napi::Function::New(env, BenchGemm));
#else
  for (const char* k : {"quantizeAct", "gemmW4A4", "w4a4Layer", "w4a16", "gemmBf16", "benchGemm"})
    g.Set(k, Napi::Function::New(env, NotBuilt));
#endif
  exports.Set("gpu", g);
}

}  // namespace svdq::binding

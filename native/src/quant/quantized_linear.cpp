// Quantized linear layers on the CPU (the reference arithmetic for the CUDA kernels) and their
// checkpoint reader/writer. Layout: see svdq/quant.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "layer_reader.h"
#include "svdq/blas.h"
#include "svdq/quant.h"
#include "svdq/quant_kernels.h"
#include "svdq/split_linear.h"

namespace svdq {
using namespace quant;

namespace {
int64_t groupOf(QuantPrecision p) { return p == QuantPrecision::Int4 ? kInt4Group : kFp4Group; }

std::vector<uint16_t> bf16Bits(const float* v, size_t n) {
  std::vector<uint16_t> b(n);
  for (size_t i = 0; i < n; ++i) {
    float r = roundBf16(v[i]);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    b[i] = static_cast<uint16_t>(u >> 16);
  }
  return b;
}
void addBf16(SafetensorsWriter& out, const std::string& name, const std::vector<int64_t>& shape, const float* v) {
  auto b = bf16Bits(v, static_cast<size_t>(numel(shape)));
  out.add(name, DType::BF16, shape, b.data(), b.size() * 2);
}
bool bf16Exact(const std::vector<float>& v) {
  for (float x : v)
    if (roundBf16(x) != x) return false;
  return true;
}
// Where a split layer's parts live: "<layer>.out_part.<i>" / "<layer>.in_part.<i>".
std::string partName(const std::string& layer, SplitLinear::Stack s, size_t i) {
  return layer + (s == SplitLinear::Stack::Outputs ? ".out_part." : ".in_part.") + std::to_string(i);
}
// [rows, cols] -> [cols, rows]
template <class T>
std::vector<T> transposed(const T* v, int64_t rows, int64_t cols) {
  std::vector<T> t(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = v[i * cols + j];
  return t;
}
}  // namespace

// ---------------- W4A4 ----------------
W4A4Linear::W4A4Linear(W4A4Weights w) : w_(std::move(w)) {}

std::string W4A4Linear::kind() const {
  return std::string(w_.precision == QuantPrecision::Int4 ? "svdq-int4" : "svdq-nvfp4") + "-r" +
         std::to_string(w_.rank()) + (w_.actShift > 0 ? "-u" : "");
}

size_t W4A4Linear::weightBytes() const {
  return w_.qweight.size() + (w_.wscales.size() + w_.wcscales.size()) * 2 + w_.wscales8.size() + w_.smooth.size() * 2 +
         (w_.loraDown.data.size() + w_.loraUp.data.size() + w_.bias.size()) * 2;
}

void W4A4Linear::forward(const float* x, int64_t M, float* y) const {
  const int64_t K = w_.in, Kp = w_.inPadded, N = w_.out, G = groupOf(w_.precision);
  std::vector<float> xs(static_cast<size_t>(M * Kp), 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xs[m * Kp + k] = (x[m * K + k] + w_.actShift) / w_.smooth[k];
  std::vector<int8_t> qw(static_cast<size_t>(N * Kp));
  if (w_.precision == QuantPrecision::Int4) {
    std::vector<int8_t> qa(xs.size());
    std::vector<float> as(static_cast<size_t>(M * Kp / G));
    quantizeInt4(xs.data(), M, Kp, qa.data(), as.data(), w_.actShift > 0);
    unpackNibbles(w_.qweight.data(), N * Kp, qw.data(), true);
    gemmW4A4Int4(qa.data(), as.data(), M, qw.data(), w_.wscales.data(), N, Kp, y);
  } else {
    std::vector<uint8_t> ca(xs.size()), gsa(static_cast<size_t>(M * Kp / G));
    std::vector<float> ats(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
      ats[m] = w_.actTensorScale > 0 ? w_.actTensorScale : nvfp4TensorScale(xs.data() + m * Kp, Kp);
      quantizeNvfp4(xs.data() + m * Kp, 1, Kp, ats[m], ca.data() + m * Kp, gsa.data() + m * Kp / G);
    }
    unpackNibbles(w_.qweight.data(), N * Kp, qw.data(), false);  // E2M1 codes are unsigned nibbles
    gemmW4A4Nvfp4(ca.data(), gsa.data(), ats.data(), M, reinterpret_cast<const uint8_t*>(qw.data()),
                  w_.wscales8.data(), w_.wtscale, N, Kp, y);
    if (!w_.wcscales.empty())
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * N + n] *= w_.wcscales[n];
  }
  if (!w_.bias.empty())
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += w_.bias[n];
  if (const int64_t r = w_.rank()) {
    std::vector<float> t(static_cast<size_t>(M * r));
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, r, K, 1.f, x, K, w_.loraDown.ptr(), K, 0.f, t.data(), r);
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, r, 1.f, t.data(), r, w_.loraUp.ptr(), r, 1.f, y, N);
  }
  applyLoras(*this, x, M, y);
}

// ---------------- W4A16 ----------------
W4A16Linear::W4A16Linear(W4A16Weights w) : w_(std::move(w)) {}

size_t W4A16Linear::weightBytes() const {
  return w_.qweight.size() + (w_.wscales.size() + w_.wzeros.size() + w_.bias.size()) * 2;
}

Tensor W4A16Linear::dequantized() const {
  const int64_t K = w_.in, N = w_.out, G = K / kInt4Group;
  Tensor W({N, K});
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  unpackNibbles(w_.qweight.data(), N * K, q.data(), false);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = n * G + k / kInt4Group;
      W.data[n * K + k] = q[n * K + k] * w_.wscales[g] + w_.wzeros[g];
    }
  return W;
}

void W4A16Linear::forward(const float* x, int64_t M, float* y) const {
  const int64_t K = w_.in, N = w_.out;
  Tensor W = dequantized();  // per call: adaLN layers see one row per image, the GEMV dominates anyway
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x, K, W.ptr(), K, 0.f, y, N);
  if (!w_.bias.empty())
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += w_.bias[n];
  applyLoras(*this, x, M, y);
}

// ---------------- checkpoint I/O ----------------
void writeW4A4(SafetensorsWriter& out, const std::string& L, const W4A4Weights& w) {
  const int64_t G = groupOf(w.precision), Kp = w.inPadded, N = w.out;
  out.add(L + ".qweight", DType::U8, {N, Kp / 2}, w.qweight.data(), w.qweight.size());
  if (w.precision == QuantPrecision::Int4) {
    auto t = transposed(w.wscales.data(), N, Kp / G);
    addBf16(out, L + ".wscales", {Kp / G, N}, t.data());
  } else {
    auto t = transposed(w.wscales8.data(), N, Kp / G);
    out.add(L + ".wscales", DType::F8_E4M3, {Kp / G, N}, t.data(), t.size());
    out.add(L + ".wtscale", DType::F32, {1}, &w.wtscale, 4);
    if (!w.wcscales.empty() && bf16Exact(w.wcscales)) addBf16(out, L + ".wcscales", {N}, w.wcscales.data());
    else if (!w.wcscales.empty()) out.add(L + ".wcscales", DType::F32, {N}, w.wcscales.data(), w.wcscales.size() * 4);
    if (w.actTensorScale > 0) out.add(L + ".act_tensor_scale", DType::F32, {1}, &w.actTensorScale, 4);
  }
  addBf16(out, L + ".smooth", {w.in}, w.smooth.data());
  if (w.actShift > 0) out.add(L + ".act_shift", DType::F32, {1}, &w.actShift, 4);
  if (const int64_t r = w.rank()) {  // rank 0 (naive / SmoothQuant ablations): no factors at all
    addBf16(out, L + ".lora_down", {r, w.in}, w.loraDown.ptr());
    addBf16(out, L + ".lora_up", {N, r}, w.loraUp.ptr());
  }
  // The shift compensation is a difference of large sums: keep that bias in F32.
  if (!w.bias.empty() && w.actShift > 0) out.add(L + ".bias", DType::F32, {N}, w.bias.data(), w.bias.size() * 4);
  else if (!w.bias.empty()) addBf16(out, L + ".bias", {N}, w.bias.data());
}

void writeW4A16(SafetensorsWriter& out, const std::string& L, const W4A16Weights& w) {
  const int64_t G = w.in / kInt4Group, N = w.out;
  out.add(L + ".qweight", DType::U8, {N, w.in / 2}, w.qweight.data(), w.qweight.size());
  auto s = transposed(w.wscales.data(), N, G), z = transposed(w.wzeros.data(), N, G);
  addBf16(out, L + ".wscales", {G, N}, s.data());
  addBf16(out, L + ".wzeros", {G, N}, z.data());
  // F32 when BF16 would round: Nunchaku's adaLN biases lose their folded "+1" in F32 on conversion.
  if (!w.bias.empty() && !bf16Exact(w.bias)) out.add(L + ".bias", DType::F32, {N}, w.bias.data(), w.bias.size() * 4);
  else if (!w.bias.empty()) addBf16(out, L + ".bias", {N}, w.bias.data());
}

void writeQuantizedLinear(SafetensorsWriter& out, const std::string& layer, const Linear& l) {
  // LoRAs are run-time additions on top of the checkpoint: writing one would bake it in silently.
  if (!l.loras.empty()) throw Error("layer '" + layer + "': cannot write a layer with LoRAs attached");
  if (auto* a = dynamic_cast<const W4A4Linear*>(&l)) return writeW4A4(out, layer, a->weights());
  if (auto* b = dynamic_cast<const W4A16Linear*>(&l)) return writeW4A16(out, layer, b->weights());
  if (auto* s = dynamic_cast<const SplitLinear*>(&l)) {
    for (size_t i = 0; i < s->parts().size(); ++i) writeQuantizedLinear(out, partName(layer, s->stack(), i), *s->parts()[i]);
    return;
  }
  throw Error("layer '" + layer + "' (" + l.kind() + ") is not a quantized layer");
}

namespace {
// The stacking of a layer stored as parts, if it is.
std::optional<SplitLinear::Stack> storedSplit(const SafetensorsFile& f, const std::string& layer) {
  for (auto s : {SplitLinear::Stack::Outputs, SplitLinear::Stack::Inputs})
    if (f.has(partName(layer, s, 0) + ".qweight")) return s;
  return std::nullopt;
}
size_t storedParts(const SafetensorsFile& f, const std::string& layer, SplitLinear::Stack s) {
  size_t n = 0;
  while (f.has(partName(layer, s, n) + ".qweight")) ++n;
  return n;
}
}  // namespace

bool hasQuantizedLinear(const SafetensorsFile& file, const std::string& layer) {
  return file.has(layer + ".qweight") || storedSplit(file, layer).has_value();
}

int64_t quantizedLinearOut(const SafetensorsFile& f, const std::string& layer) {
  if (f.has(layer + ".qweight")) return f.info(layer + ".qweight").shape.at(0);
  const auto s = storedSplit(f, layer);
  if (!s) throw Error(f.path() + ": missing tensor '" + layer + ".qweight'");
  if (*s == SplitLinear::Stack::Inputs) return quantizedLinearOut(f, partName(layer, *s, 0));
  int64_t out = 0;
  for (size_t i = 0, n = storedParts(f, layer, *s); i < n; ++i) out += quantizedLinearOut(f, partName(layer, *s, i));
  return out;
}

std::unique_ptr<Linear> loadQuantizedLinear(const SafetensorsFile& f, const std::string& layer) {
  LayerReader rd{f, layer};
  const std::string qk = layer + ".qweight";
  const auto split = f.has(qk) ? std::optional<SplitLinear::Stack>() : storedSplit(f, layer);
  if (const auto s = split) {
    std::vector<std::unique_ptr<Linear>> parts;
    for (size_t i = 0, n = storedParts(f, layer, *s); i < n; ++i) parts.push_back(loadQuantizedLinear(f, partName(layer, *s, i)));
    try {
      return std::make_unique<SplitLinear>(*s, std::move(parts));
    } catch (const Error& e) {
      throw Error(f.path() + ": layer '" + layer + "': " + e.what());
    }
  }
  if (!f.has(qk)) rd.fail(qk, "missing");
  const TensorInfo& qi = f.info(qk);
  if (qi.dtype != DType::U8 && qi.dtype != DType::I8) rd.fail(qk, std::string("dtype ") + dtypeName(qi.dtype) + ", expected U8");
  if (qi.shape.size() != 2 || qi.shape[0] < 1 || qi.shape[1] < 1) rd.fail(qk, "shape " + shapeString(qi.shape) + ", expected [out, in/2]");
  const int64_t N = qi.shape[0], Kp = qi.shape[1] * 2;
  const uint8_t* qb = f.bytes(qk);

  if (f.has(layer + ".wzeros")) {  // W4A16
    if (Kp % kInt4Group) rd.fail(qk, "in-features " + std::to_string(Kp) + " not a multiple of 64");
    W4A16Weights w;
    w.in = Kp, w.out = N;
    w.qweight.assign(qb, qb + N * Kp / 2);
    w.wscales = transposed(rd.floats("wscales", {Kp / kInt4Group, N}).data(), Kp / kInt4Group, N);
    w.wzeros = transposed(rd.floats("wzeros", {Kp / kInt4Group, N}).data(), Kp / kInt4Group, N);
    if (f.has(rd.key("bias"))) w.bias = rd.floats("bias", {N});
    return std::make_unique<W4A16Linear>(std::move(w));
  }

  W4A4Weights w;
  w.out = N, w.inPadded = Kp;
  const std::string sk = rd.key("smooth");
  if (!f.has(sk)) rd.fail(sk, "missing (quantized layer '" + layer + "' is incomplete)");
  const TensorInfo& si = f.info(sk);
  if (si.shape.size() != 1) rd.fail(sk, "shape " + shapeString(si.shape) + ", expected [in]");
  w.in = si.shape[0];
  const std::string wk = rd.key("wscales");
  if (!f.has(wk)) rd.fail(wk, "missing");
  w.precision = f.info(wk).dtype == DType::F8_E4M3 ? QuantPrecision::Nvfp4 : QuantPrecision::Int4;
  const int64_t G = groupOf(w.precision);
  if (Kp % G || w.in > Kp || Kp - w.in >= G)
    rd.fail(qk, "packed in-features " + std::to_string(Kp) + " do not match smooth [" + std::to_string(w.in) +
                    "] padded to the group size " + std::to_string(G));
  w.qweight.assign(qb, qb + N * Kp / 2);
  if (w.precision == QuantPrecision::Int4) {
    w.wscales = transposed(rd.floats("wscales", {Kp / G, N}).data(), Kp / G, N);
  } else {
    rd.need("wscales", {Kp / G, N});
    const uint8_t* sb = f.bytes(wk);
    w.wscales8 = transposed(sb, Kp / G, N);
    for (uint8_t b : w.wscales8)
      if ((b & 0x7f) == 0x7f) rd.fail(wk, "holds an E4M3 NaN");
    w.wtscale = rd.floats("wtscale", {1})[0];
    if (rd.has("wcscales")) w.wcscales = rd.floats("wcscales", {N});
    if (rd.has("act_tensor_scale")) {
      w.actTensorScale = rd.floats("act_tensor_scale", {1})[0];
      if (!(w.actTensorScale > 0)) rd.fail(rd.key("act_tensor_scale"), "must be positive");
    }
  }
  w.smooth = rd.floats("smooth", {w.in});
  for (float s : w.smooth)
    if (!(s > 0.f)) rd.fail(sk, "holds a non-positive smoothing factor");
  const std::string dk = rd.key("lora_down");
  int64_t r = 0;  // no factors stored: rank 0
  if (f.has(dk)) {
    const auto& ds = f.info(dk).shape;
    if (ds.size() != 2 || ds[0] < 1) rd.fail(dk, "shape " + shapeString(ds) + ", expected [rank, " + std::to_string(w.in) + "]");
    r = ds[0];
  }
  if (r > 0) {
    w.loraDown = Tensor({r, w.in});
    w.loraDown.data = rd.floats("lora_down", {r, w.in});
    w.loraUp = Tensor({N, r});
    w.loraUp.data = rd.floats("lora_up", {N, r});
  }
  if (f.has(rd.key("act_shift"))) w.actShift = rd.floats("act_shift", {1})[0];
  if (f.has(rd.key("bias"))) w.bias = rd.floats("bias", {N});
  return std::make_unique<W4A4Linear>(std::move(w));
}

}  // namespace svdq

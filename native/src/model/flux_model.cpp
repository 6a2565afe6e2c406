// FLUX transformer on the CPU backend: configuration from shapes, loading, and ComfyUI's forward.
#include <algorithm>
#include <cmath>

#include "checkpoint_keys.h"
#include "nunchaku_format.h"
#include "svdq/dense_linear.h"
#include "svdq/flux.h"
#include "svdq/ops.h"
#include "svdq/quant.h"

namespace svdq {

std::vector<int> defaultRopeAxes(int64_t headDim) {
  if (headDim == 128) return {16, 56, 56};
  const int spatial = static_cast<int>(std::lround(56.0 * headDim / 128 / 2)) * 2;
  const int first = static_cast<int>(headDim) - 2 * spatial;
  if (first <= 0 || first % 2)
    throw Error("no default RoPE axes for head dim " + std::to_string(headDim) + "; pass the axes explicitly");
  return {first, spatial, spatial};
}

namespace {

// Output features of a layer stored dense (.weight [out, in]) or quantized (ours, parts included, or Nunchaku's).
int64_t layerOut(const CheckpointKeys& keys, const std::string& layer) {
  if (keys.naming() == CheckpointKeys::Naming::Nunchaku)
    if (const int64_t n = nunchaku::layerOut(keys.file(), layer); n >= 0) return n;
  if (keys.has(layer + ".weight")) return keys.shape(layer + ".weight").at(0);
  if (hasQuantizedLinear(keys.file(), layer)) return quantizedLinearOut(keys.file(), layer);
  keys.missing(layer + ".weight");
}

std::vector<int64_t> need2d(const CheckpointKeys& keys, const std::string& key) {
  auto s = keys.shape(key);
  if (s.size() != 2)
    throw Error(keys.file().path() + ": tensor '" + key + "' should be 2-D, has shape " + shapeString(s) +
                ": not a FLUX checkpoint");
  return s;
}

// Every linear of the model with its expected [in, out], in execution order.
std::vector<std::tuple<std::string, int64_t, int64_t>> layerPlan(const FluxConfig& c) {
  std::vector<std::tuple<std::string, int64_t, int64_t>> v;
  const int64_t h = c.hidden;
  v.emplace_back("time_in.in_layer", 256, h);
  v.emplace_back("time_in.out_layer", h, h);
  if (c.guidanceEmbed) {
    v.emplace_back("guidance_in.in_layer", 256, h);
    v.emplace_back("guidance_in.out_layer", h, h);
  }
  v.emplace_back("vector_in.in_layer", c.vecDim, h);
  v.emplace_back("vector_in.out_layer", h, h);
  v.emplace_back("img_in", c.inChannels * c.patch * c.patch, h);
  v.emplace_back("txt_in", c.contextDim, h);
  for (int64_t i = 0; i < c.depthDouble; i++) {
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    for (const char* s : {"img", "txt"}) v.emplace_back(p + s + "_mod.lin", h, 6 * h);
    for (const char* s : {"img", "txt"}) v.emplace_back(p + s + "_attn.qkv", h, 3 * h);
    for (const char* s : {"img", "txt"}) {
      v.emplace_back(p + s + "_attn.proj", h, h);
      v.emplace_back(p + s + "_mlp.0", h, c.mlpHidden);
      v.emplace_back(p + s + "_mlp.2", c.mlpHidden, h);
    }
  }
  for (int64_t i = 0; i < c.depthSingle; i++) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    v.emplace_back(p + "modulation.lin", h, 3 * h);
    v.emplace_back(p + "linear1", h, 3 * h + c.mlpHidden);
    v.emplace_back(p + "linear2", h + c.mlpHidden, h);
  }
  v.emplace_back("final_layer.adaLN_modulation.1", h, 2 * h);
  v.emplace_back("final_layer.linear", h, c.outChannels * c.patch * c.patch);
  return v;
}

std::vector<std::string> normKeys(const FluxConfig& c) {
  std::vector<std::string> v;
  for (int64_t i = 0; i < c.depthDouble; i++)
    for (const char* s : {"img", "txt"})
      for (const char* n : {"query", "key"})
        v.push_back("double_blocks." + std::to_string(i) + "." + s + "_attn.norm." + n + "_norm.scale");
  for (int64_t i = 0; i < c.depthSingle; i++)
    for (const char* n : {"query", "key"}) v.push_back("single_blocks." + std::to_string(i) + ".norm." + n + "_norm.scale");
  return v;
}

}  // namespace

FluxConfig readFluxConfig(const SafetensorsFile& file, const std::optional<std::vector<int>>& axes) {
  CheckpointKeys keys(file);
  FluxConfig c;
  for (const char* k : {"img_in.weight", "txt_in.weight", "vector_in.in_layer.weight", "final_layer.linear.weight"})
    if (!keys.has(k)) keys.missing(k);
  auto imgIn = need2d(keys, "img_in.weight");
  c.hidden = imgIn[0];
  const int64_t pp = c.patch * c.patch;
  if (imgIn[1] % pp)
    throw Error(file.path() + ": img_in.weight has " + std::to_string(imgIn[1]) + " input features, not a multiple of " +
                std::to_string(pp) + " (2x2 patches)");
  c.inChannels = imgIn[1] / pp;
  c.contextDim = need2d(keys, "txt_in.weight")[1];
  c.vecDim = need2d(keys, "vector_in.in_layer.weight")[1];
  auto fin = need2d(keys, "final_layer.linear.weight");
  c.outChannels = fin[0] / pp;
  c.guidanceEmbed = keys.has("guidance_in.in_layer.weight");
  c.depthDouble = keys.countBlocks("double_blocks.", "img_attn.norm.query_norm.scale");
  c.depthSingle = keys.countBlocks("single_blocks.", "norm.query_norm.scale");
  if (c.depthDouble + c.depthSingle == 0)
    throw Error(file.path() + ": no double or single blocks found (no 'double_blocks.0.img_attn.norm.query_norm.scale' "
                "or 'single_blocks.0.norm.query_norm.scale'): not a FLUX checkpoint");
  const std::string normKey = c.depthDouble ? "double_blocks.0.img_attn.norm.query_norm.scale" : "single_blocks.0.norm.query_norm.scale";
  auto ns = keys.shape(normKey);
  if (ns.size() != 1 || ns[0] <= 0 || c.hidden % ns[0])
    throw Error(file.path() + ": '" + normKey + "' has shape " + shapeString(ns) + ", which is no head dim of hidden size " +
                std::to_string(c.hidden));
  c.headDim = ns[0];
  c.numHeads = c.hidden / c.headDim;
  c.mlpHidden = c.depthDouble ? layerOut(keys, "double_blocks.0.img_mlp.0")
                              : layerOut(keys, "single_blocks.0.linear1") - 3 * c.hidden;
  c.qkvBias = c.depthDouble ? keys.has("double_blocks.0.img_attn.qkv.bias") || file.has("double_blocks.0.img_attn.qkv.qweight") ||
                                  keys.naming() == CheckpointKeys::Naming::Nunchaku
                            : true;
  c.axesDim = axes ? *axes : defaultRopeAxes(c.headDim);
  int sum = 0;
  for (int a : c.axesDim) {
    if (a <= 0 || a % 2) throw Error("RoPE axes must be positive and even, got " + std::to_string(a));
    sum += a;
  }
  if (sum != c.headDim)
    throw Error("RoPE axes sum to " + std::to_string(sum) + " but the head dim is " + std::to_string(c.headDim));
  return c;
}

std::unique_ptr<FluxModel> FluxModel::load(const std::string& path, const FluxLoadOptions& options) {
  auto file = SafetensorsFile::open(path);
  CheckpointKeys keys(*file);
  std::unique_ptr<FluxModel> m(new FluxModel());
  m->path_ = path;
  m->metadata_ = file->metadata();
  m->config_ = readFluxConfig(*file, options.axesDim);
  m->memoryLimitBytes = options.memoryLimitBytes;
  if (options.threads > 0) cpu::setThreads(options.threads);
  const FluxConfig& c = m->config_;

  for (const auto& [name, in, out] : layerPlan(c)) {
    std::unique_ptr<Linear> layer;
    if (keys.naming() == CheckpointKeys::Naming::Nunchaku) layer = nunchaku::loadLinear(*file, name, in, out);
    else if (keys.naming() != CheckpointKeys::Naming::Diffusers && hasQuantizedLinear(*file, name))
      layer = loadQuantizedLinear(*file, name);
    if (!layer) {
      const std::string wk = name + ".weight", bk = name + ".bias";
      if (!keys.has(wk)) keys.missing(wk);
      auto ws = keys.shape(wk);
      if (ws != std::vector<int64_t>{out, in})
        throw Error(path + ": tensor '" + wk + "' has shape " + shapeString(ws) + ", expected " + shapeString({out, in}) +
                    " for this FLUX configuration");
      std::optional<Tensor> bias;
      if (keys.has(bk)) {
        auto bs = keys.shape(bk);
        if (bs != std::vector<int64_t>{out})
          throw Error(path + ": tensor '" + bk + "' has shape " + shapeString(bs) + ", expected " + shapeString({out}));
        bias = keys.loadF32(bk);
      }
      if (const uint16_t* mapped = keys.mappedBf16(wk)) {
        auto dense = std::make_unique<DenseLinear>(in, out, file, mapped, std::move(bias));
        dense->releasePagesAfterUse(options.releaseWeightPages);
        layer = std::move(dense);
      }
      else if (keys.dtype(wk) == DType::BF16)
        layer = std::make_unique<DenseLinear>(in, out, keys.loadBf16(wk), std::move(bias));
      else
        layer = std::make_unique<DenseLinear>(in, out, std::move(keys.loadF32(wk).data), std::move(bias));
    }
    if (layer->inFeatures() != in || layer->outFeatures() != out)
      throw Error(path + ": layer '" + name + "' is [in " + std::to_string(layer->inFeatures()) + ", out " +
                  std::to_string(layer->outFeatures()) + "], expected [in " + std::to_string(in) + ", out " +
                  std::to_string(out) + "]");
    m->linears[name] = std::move(layer);
  }
  for (const auto& k : normKeys(c)) {
    auto s = keys.shape(k);
    if (s != std::vector<int64_t>{c.headDim})
      throw Error(path + ": tensor '" + k + "' has shape " + shapeString(s) + ", expected " + shapeString({c.headDim}));
    m->norms_[k] = keys.loadF32(k);
  }
  return m;
}

std::vector<std::string> FluxModel::linearNames() const {
  std::vector<std::string> v;
  for (const auto& e : layerPlan(config_)) v.push_back(std::get<0>(e));
  return v;
}

Linear& FluxModel::linear(const std::string& name) const {
  auto it = linears.find(name);
  if (it == linears.end()) throw Error(path_ + ": the model has no layer '" + name + "'");
  return *it->second;
}

size_t FluxModel::weightBytes() const {
  size_t n = 0;
  for (const auto& kv : linears) n += kv.second->weightBytes();
  for (const auto& kv : norms_) n += kv.second.data.size() * 4;
  return n;
}

size_t FluxModel::forwardBytes(int64_t B, int64_t Li, int64_t Lt) const {
  const FluxConfig& c = config_;
  const int64_t L = Li + Lt;
  // Residual streams, the widest linear output (single blocks' linear1) and its GELU/concat copy,
  // attention output, and one block of attention scores.
  const int64_t perToken = 4 * c.hidden + 2 * (3 * c.hidden + c.mlpHidden) + (c.hidden + c.mlpHidden);
  return static_cast<size_t>(4 * (B * L * perToken + 256 * L + L * c.headDim));
}

namespace {

void checkShape(const char* name, const Tensor& t, const std::vector<int64_t>& expected) {
  if (t.shape != expected)
    throw Error(std::string("input '") + name + "': expected shape " + shapeString(expected) + ", got " + shapeString(t.shape));
}

struct Runner {
  const FluxModel& model;
  const ForwardHooks* hooks;

  // y [M, out] = layer(x [M, in]).
  std::vector<float> run(const std::string& name, const float* x, int64_t M) const {
    const Linear& l = model.linear(name);
    if (hooks && hooks->onLinearInput) hooks->onLinearInput(name, x, M, l.inFeatures());
    std::vector<float> y(static_cast<size_t>(M * l.outFeatures()));
    l.forward(x, M, y.data());
    return y;
  }
  void checkCancel() const {
    if (hooks && hooks->cancel && hooks->cancel->load()) throw Error("cancelled");
  }
};

// x [B, L, h] -> (1 + scale[b]) * LN(x) + shift[b]; mod [B, chunks*h], chunk indices given.
std::vector<float> modulate(const float* x, int64_t B, int64_t L, int64_t h, const std::vector<float>& mod,
                            int64_t chunks, int64_t shiftChunk, int64_t scaleChunk) {
  std::vector<float> out(x, x + B * L * h);
  cpu::layerNorm(out.data(), B * L, h);
  for (int64_t b = 0; b < B; b++) {
    const float* shift = mod.data() + b * chunks * h + shiftChunk * h;
    const float* scale = mod.data() + b * chunks * h + scaleChunk * h;
    for (int64_t l = 0; l < L; l++) {
      float* p = out.data() + (b * L + l) * h;
      for (int64_t i = 0; i < h; i++) p[i] = p[i] * (1.f + scale[i]) + shift[i];
    }
  }
  return out;
}

// x [B, L, h] += gate[b] * y [B, L, h]
void gatedAdd(float* x, const float* y, int64_t B, int64_t L, int64_t h, const std::vector<float>& mod, int64_t chunks,
              int64_t gateChunk) {
  for (int64_t b = 0; b < B; b++) {
    const float* gate = mod.data() + b * chunks * h + gateChunk * h;
    for (int64_t l = 0; l < L; l++) {
      float* p = x + (b * L + l) * h;
      const float* q = y + (b * L + l) * h;
      for (int64_t i = 0; i < h; i++) p[i] += gate[i] * q[i];
    }
  }
}

}  // namespace

std::vector<float> imageIds(int64_t h, int64_t w, int64_t patch, float index, int64_t hOffset, int64_t wOffset) {
  const int64_t hl = (h + patch - 1) / patch, wl = (w + patch - 1) / patch;
  // ComfyUI rounds pixel offsets to tokens as (offset + patch/2) / patch.
  const int64_t r0 = (hOffset + patch / 2) / patch, q0 = (wOffset + patch / 2) / patch;
  std::vector<float> ids(static_cast<size_t>(hl * wl * 3));
  for (int64_t r = 0; r < hl; r++)
    for (int64_t q = 0; q < wl; q++) {
      float* id = ids.data() + (r * wl + q) * 3;
      id[0] = index;
      id[1] = static_cast<float>(r + r0);
      id[2] = static_cast<float>(q + q0);
    }
  return ids;
}

namespace {

// Tokens of an h x w latent: whole patches after padding.
int64_t patchTokens(int64_t h, int64_t w, int64_t P) { return ((h + P - 1) / P) * ((w + P - 1) / P); }

// Tokens of batch item b of a latent [B, C, H, W] (item 0 when B is 1), circularly padded to whole
// patches as ComfyUI's pad_to_patch_size does: token (r, q), channel (c, ph, pw).
void patchify(const Tensor& t, int64_t b, int64_t P, float* out) {
  const int64_t C = t.shape[1], H = t.shape[2], W = t.shape[3], hl = (H + P - 1) / P, wl = (W + P - 1) / P;
  const float* src = t.ptr() + (t.shape[0] == 1 ? 0 : b) * C * H * W;
  for (int64_t r = 0; r < hl; r++)
    for (int64_t q = 0; q < wl; q++)
      for (int64_t ch = 0; ch < C; ch++)
        for (int64_t ph = 0; ph < P; ph++)
          for (int64_t pw = 0; pw < P; pw++) {
            const int64_t yy = (r * P + ph) % H, xx = (q * P + pw) % W;
            out[((r * wl + q) * C + ch) * P * P + ph * P + pw] = src[(ch * H + yy) * W + xx];
          }
}

// Position ids of the reference latents, following ComfyUI's Flux._forward for each method.
std::vector<float> referenceIds(const std::vector<Tensor>& refs, const std::string& method, int64_t H, int64_t W,
                                int64_t P) {
  std::vector<float> ids;
  int64_t hAcc = 0, wAcc = 0;
  float index = 0;
  for (const Tensor& r : refs) {
    const int64_t rh = r.shape[2], rw = r.shape[3];
    int64_t ho = 0, wo = 0;
    if (method == "index") {
      index += 1.f;  // FluxParams.ref_index_scale
    } else if (method == "uxo") {
      index = 0;
      ho = (H + P / 2) / P * P + hAcc;
      wo = (W + P / 2) / P * P + wAcc;
      hAcc += rh;
      wAcc += rw;
    } else {  // offset: tile the references beside each other along their shorter side
      index = 1;
      if (rh + hAcc > rw + wAcc) wo = wAcc;
      else ho = hAcc;
      hAcc = std::max(hAcc, rh + ho);
      wAcc = std::max(wAcc, rw + wo);
    }
    auto v = imageIds(rh, rw, P, index, ho, wo);
    ids.insert(ids.end(), v.begin(), v.end());
  }
  return ids;
}

}  // namespace

Tensor FluxModel::forward(const FluxInputs& in, const ForwardHooks* hooks) const {
  const FluxConfig& c = config_;
  if (in.x.shape.size() != 4)
    throw Error("input 'x': expected shape [B, " + std::to_string(c.inChannels) + ", H, W], got " + shapeString(in.x.shape));
  const int64_t B = in.x.shape[0], C = in.x.shape[1], H = in.x.shape[2], W = in.x.shape[3];
  if (B < 1 || C != c.inChannels || H < 1 || W < 1)
    throw Error("input 'x': expected shape [B, " + std::to_string(c.inChannels) + ", H, W] with B, H, W >= 1, got " +
                shapeString(in.x.shape));
  checkShape("timestep", in.timestep, {B});
  if (in.context.shape.size() != 3 || in.context.shape[0] != B || in.context.shape[2] != c.contextDim || in.context.shape[1] < 1)
    throw Error("input 'context': expected shape [" + std::to_string(B) + ", T, " + std::to_string(c.contextDim) +
                "] with T >= 1, got " + shapeString(in.context.shape));
  checkShape("y", in.y, {B, c.vecDim});
  if (in.guidance) checkShape("guidance", *in.guidance, {B});

  const int64_t h = c.hidden, P = c.patch, hl = (H + P - 1) / P, wl = (W + P - 1) / P, Li = hl * wl;
  // The image stream holds the image tokens, then each reference latent's tokens.
  int64_t Ls = Li;
  for (size_t i = 0; i < in.refLatents.size(); i++) {
    const auto& s = in.refLatents[i].shape;
    if (s.size() != 4 || (s[0] != 1 && s[0] != B) || s[1] != c.inChannels || s[2] < 1 || s[3] < 1)
      throw Error("input 'ref_latents[" + std::to_string(i) + "]': expected shape [" + std::to_string(B) + " or 1, " +
                  std::to_string(c.inChannels) + ", h, w], got " + shapeString(s));
    Ls += patchTokens(s[2], s[3], P);
  }
  // ComfyUI's FLUX.1 model treats every method other than index and uxo as offset.
  static const char* kMethods[] = {"offset", "index", "uxo", "index_timestep_zero"};
  if (std::none_of(std::begin(kMethods), std::end(kMethods), [&](const char* m) { return in.refMethod == m; }))
    throw Error("input 'ref_latents_method': expected offset, index, uxo or index_timestep_zero, got '" + in.refMethod + "'");
  const int64_t Lt = in.context.shape[1], L = Lt + Ls, D = c.headDim, NH = c.numHeads;

  // The attention bias is indexed [maskBatch][maskHeads][L][L]; size-1 dims broadcast.
  int64_t maskBatch = 0, maskHeads = 0;
  if (in.attentionMask) {
    const auto& s = in.attentionMask->shape;
    const size_t n = s.size();
    const bool ok = n >= 2 && n <= 4 && s[n - 1] == L && s[n - 2] == L && (n < 3 || s[0] == 1 || s[0] == B) &&
                    (n < 4 || s[1] == 1 || s[1] == NH);
    if (!ok)
      throw Error("input 'attention_mask': expected shape [L, L], [B, L, L] or [B, heads, L, L] with L = " +
                  std::to_string(L) + " (" + std::to_string(Lt) + " text + " + std::to_string(Ls) +
                  " image/reference tokens), B " + std::to_string(B) + " or 1, heads " + std::to_string(NH) +
                  " or 1; got " + shapeString(s));
    for (float v : in.attentionMask->data)
      if (std::isnan(v)) throw Error("input 'attention_mask': contains NaN");
    maskBatch = n >= 3 ? s[0] : 1;
    maskHeads = n == 4 ? s[1] : 1;
  }
  auto maskOf = [&](int64_t b, int64_t hd) -> const float* {
    if (!in.attentionMask) return nullptr;
    return in.attentionMask->ptr() + ((maskBatch == 1 ? 0 : b) * maskHeads + (maskHeads == 1 ? 0 : hd)) * L * L;
  };

  if (memoryLimitBytes) {
    const size_t need = forwardBytes(B, Ls, Lt) + weightBytes() + (in.attentionMask ? in.attentionMask->data.size() * 4 : 0);
    if (need > memoryLimitBytes)
      throw Error("out of memory: a forward of batch " + std::to_string(B) + " with " + std::to_string(L) + " tokens needs " +
                  std::to_string(need) + " bytes, the limit is " + std::to_string(memoryLimitBytes));
  }
  Runner run{*this, hooks};

  const int64_t tokDim = C * P * P;
  std::vector<float> imgTok(static_cast<size_t>(B * Ls * tokDim));
  for (int64_t b = 0; b < B; b++) {
    float* dst = imgTok.data() + b * Ls * tokDim;
    patchify(in.x, b, P, dst);
    dst += Li * tokDim;
    for (const Tensor& r : in.refLatents) {
      patchify(r, b, P, dst);
      dst += patchTokens(r.shape[2], r.shape[3], P) * tokDim;
    }
  }

  // Conditioning vector.
  std::vector<float> temb(static_cast<size_t>(B * 256));
  cpu::timestepEmbedding(in.timestep.ptr(), B, 256, temb.data());
  auto mlpEmbed = [&](const std::string& p, const float* x) {
    auto a = run.run(p + ".in_layer", x, B);
    cpu::silu(a.data(), static_cast<int64_t>(a.size()));
    return run.run(p + ".out_layer", a.data(), B);
  };
  std::vector<float> vec = mlpEmbed("time_in", temb.data());
  if (c.guidanceEmbed && in.guidance) {
    std::vector<float> gemb(static_cast<size_t>(B * 256));
    cpu::timestepEmbedding(in.guidance->ptr(), B, 256, gemb.data());
    auto g = mlpEmbed("guidance_in", gemb.data());
    for (size_t i = 0; i < vec.size(); i++) vec[i] += g[i];
  }
  {
    auto v = mlpEmbed("vector_in", in.y.ptr());
    for (size_t i = 0; i < vec.size(); i++) vec[i] += v[i];
  }
  std::vector<float> siluVec = vec;
  cpu::silu(siluVec.data(), static_cast<int64_t>(siluVec.size()));

  std::vector<float> img = run.run("img_in", imgTok.data(), B * Ls);
  std::vector<float> txt = run.run("txt_in", in.context.ptr(), B * Lt);

  // RoPE over (txt, img, ref) ids: text tokens at 0, image token (r, q) at (0, r, q).
  std::vector<float> ids(static_cast<size_t>(Lt * 3), 0.f);
  for (const auto& part : {imageIds(H, W, P, 0, 0, 0), referenceIds(in.refLatents, in.refMethod, H, W, P)})
    ids.insert(ids.end(), part.begin(), part.end());
  std::vector<float> ropeCos, ropeSin;
  cpu::ropeTables(ids.data(), L, c.axesDim, c.theta, ropeCos, ropeSin);

  // Joint attention over qkv [B, L, stride] (q at 0, k at h, v at 2h); out [B, L, h].
  auto attend = [&](float* qkv, int64_t stride, float* out) {
    // Heads run one after another: attentionHead's two GEMMs are threaded by OpenBLAS, and running
    // heads on our own threads as well made OpenBLAS's threads contend (2-3x slower, measured).
    for (int64_t b = 0; b < B; b++)
      for (int64_t hd = 0; hd < NH; hd++) {
        float* base = qkv + b * L * stride + hd * D;
        cpu::applyRope(base, L, D, stride, ropeCos.data(), ropeSin.data());
        cpu::applyRope(base + h, L, D, stride, ropeCos.data(), ropeSin.data());
        cpu::attentionHead(base, base + h, base + 2 * h, L, D, stride, out + b * L * h + hd * D, h, maskOf(b, hd));
      }
  };
  auto qkNorm = [&](float* qkv, int64_t rows, int64_t stride, const std::string& prefix) {
    const Tensor& qs = norms_.at(prefix + "query_norm.scale");
    const Tensor& ks = norms_.at(prefix + "key_norm.scale");
    for (int64_t hd = 0; hd < NH; hd++) {
      cpu::rmsNorm(qkv + hd * D, rows, D, stride, qs.ptr());
      cpu::rmsNorm(qkv + h + hd * D, rows, D, stride, ks.ptr());
    }
  };
  auto mlp = [&](const std::string& p, const float* x, int64_t M) {
    auto a = run.run(p + ".0", x, M);
    cpu::geluTanh(a.data(), static_cast<int64_t>(a.size()));
    return run.run(p + ".2", a.data(), M);
  };

  for (int64_t i = 0; i < c.depthDouble; i++) {
    run.checkCancel();
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    auto imgMod = run.run(p + "img_mod.lin", siluVec.data(), B);
    auto txtMod = run.run(p + "txt_mod.lin", siluVec.data(), B);
    auto imgN = modulate(img.data(), B, Ls, h, imgMod, 6, 0, 1);
    auto txtN = modulate(txt.data(), B, Lt, h, txtMod, 6, 0, 1);
    auto qkvI = run.run(p + "img_attn.qkv", imgN.data(), B * Ls);
    auto qkvT = run.run(p + "txt_attn.qkv", txtN.data(), B * Lt);
    qkNorm(qkvI.data(), B * Ls, 3 * h, p + "img_attn.norm.");
    qkNorm(qkvT.data(), B * Lt, 3 * h, p + "txt_attn.norm.");
    std::vector<float> qkv(static_cast<size_t>(B * L * 3 * h));
    for (int64_t b = 0; b < B; b++) {
      std::copy_n(qkvT.data() + b * Lt * 3 * h, Lt * 3 * h, qkv.data() + b * L * 3 * h);
      std::copy_n(qkvI.data() + b * Ls * 3 * h, Ls * 3 * h, qkv.data() + (b * L + Lt) * 3 * h);
    }
    std::vector<float> attn(static_cast<size_t>(B * L * h));
    attend(qkv.data(), 3 * h, attn.data());
    std::vector<float> aT(static_cast<size_t>(B * Lt * h)), aI(static_cast<size_t>(B * Ls * h));
    for (int64_t b = 0; b < B; b++) {
      std::copy_n(attn.data() + b * L * h, Lt * h, aT.data() + b * Lt * h);
      std::copy_n(attn.data() + (b * L + Lt) * h, Ls * h, aI.data() + b * Ls * h);
    }
    auto projI = run.run(p + "img_attn.proj", aI.data(), B * Ls);
    gatedAdd(img.data(), projI.data(), B, Ls, h, imgMod, 6, 2);
    auto imgN2 = modulate(img.data(), B, Ls, h, imgMod, 6, 3, 4);
    auto mlpI = mlp(p + "img_mlp", imgN2.data(), B * Ls);
    gatedAdd(img.data(), mlpI.data(), B, Ls, h, imgMod, 6, 5);
    auto projT = run.run(p + "txt_attn.proj", aT.data(), B * Lt);
    gatedAdd(txt.data(), projT.data(), B, Lt, h, txtMod, 6, 2);
    auto txtN2 = modulate(txt.data(), B, Lt, h, txtMod, 6, 3, 4);
    auto mlpT = mlp(p + "txt_mlp", txtN2.data(), B * Lt);
    gatedAdd(txt.data(), mlpT.data(), B, Lt, h, txtMod, 6, 5);
  }

  std::vector<float> x(static_cast<size_t>(B * L * h));
  for (int64_t b = 0; b < B; b++) {
    std::copy_n(txt.data() + b * Lt * h, Lt * h, x.data() + b * L * h);
    std::copy_n(img.data() + b * Ls * h, Ls * h, x.data() + (b * L + Lt) * h);
  }
  const int64_t W1 = 3 * h + c.mlpHidden;
  for (int64_t i = 0; i < c.depthSingle; i++) {
    run.checkCancel();
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    auto mod = run.run(p + "modulation.lin", siluVec.data(), B);
    auto xN = modulate(x.data(), B, L, h, mod, 3, 0, 1);
    auto l1 = run.run(p + "linear1", xN.data(), B * L);
    qkNorm(l1.data(), B * L, W1, p + "norm.");
    std::vector<float> cat(static_cast<size_t>(B * L * (h + c.mlpHidden)));
    std::vector<float> attn(static_cast<size_t>(B * L * h));
    attend(l1.data(), W1, attn.data());
    for (int64_t t = 0; t < B * L; t++) {
      std::copy_n(attn.data() + t * h, h, cat.data() + t * (h + c.mlpHidden));
      float* m = cat.data() + t * (h + c.mlpHidden) + h;
      std::copy_n(l1.data() + t * W1 + 3 * h, c.mlpHidden, m);
      cpu::geluTanh(m, c.mlpHidden);
    }
    auto out = run.run(p + "linear2", cat.data(), B * L);
    gatedAdd(x.data(), out.data(), B, L, h, mod, 3, 2);
  }
  run.checkCancel();

  std::vector<float> imgOut(static_cast<size_t>(B * Li * h));
  for (int64_t b = 0; b < B; b++) std::copy_n(x.data() + (b * L + Lt) * h, Li * h, imgOut.data() + b * Li * h);
  auto fmod = run.run("final_layer.adaLN_modulation.1", siluVec.data(), B);
  auto fN = modulate(imgOut.data(), B, Li, h, fmod, 2, 0, 1);
  auto tok = run.run("final_layer.linear", fN.data(), B * Li);

  const int64_t Co = c.outChannels;
  Tensor result({B, Co, H, W});
  for (int64_t b = 0; b < B; b++)
    for (int64_t r = 0; r < hl; r++)
      for (int64_t q = 0; q < wl; q++)
        for (int64_t ch = 0; ch < Co; ch++)
          for (int64_t ph = 0; ph < P; ph++)
            for (int64_t pw = 0; pw < P; pw++) {
              const int64_t yy = r * P + ph, xx = q * P + pw;
              if (yy < H && xx < W)
                result.data[((b * Co + ch) * H + yy) * W + xx] = tok[((b * Li + r * wl + q) * Co + ch) * P * P + ph * P + pw];
            }
  return result;
}

}  // namespace svdq

// Whole-checkpoint quantization (see svdq/quant_pipeline.h):
//   1. load the 16-bit model and run it on calibration inputs, recording per layer the input's
//      per-channel absmax and a reservoir sample of input rows (ForwardHooks::onLinearInput);
//   2. quantize layer by layer (block linears W4A4, adaLN modulation W4A16, the rest copied), each
//      layer and its calibration rows released as soon as it is written;
//   3. stream everything into a SafetensorsWriter (temporary file renamed into place on success).
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <sstream>

#include "svdq/dense_linear.h"
#include "svdq/flux.h"
#include "svdq/quant_kernels.h"
#include "svdq/quant_pipeline.h"

namespace svdq {
namespace {

std::string jsonStr(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o += c;
  }
  return o + "\"";
}
std::string jsonNum(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

enum class LayerRole { Block, GeluFed, AdaLN, Keep16 };
bool endsWith(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}
LayerRole roleOf(const std::string& n) {
  const bool inBlock = n.rfind("double_blocks.", 0) == 0 || n.rfind("single_blocks.", 0) == 0;
  if (!inBlock) return LayerRole::Keep16;  // embedders, final layer
  if (endsWith(n, "_mod.lin") || endsWith(n, "modulation.lin")) return LayerRole::AdaLN;
  if (endsWith(n, "_mlp.2")) return LayerRole::GeluFed;
  return LayerRole::Block;
}

// Per-layer calibration statistics, filled from forward hooks.
struct Collector {
  int rows;
  std::mutex mu;
  std::map<std::string, LayerCalib> stats;
  std::map<std::string, int64_t> seen;
  std::mt19937_64 rng{20241107};
  void add(const std::string& layer, const float* x, int64_t M, int64_t K) {
    std::lock_guard<std::mutex> g(mu);
    LayerCalib& c = stats[layer];
    if (c.absmax.empty()) {
      c.absmax.assign(static_cast<size_t>(K), 0.f);
      c.sample = Tensor({0, K});
    }
    int64_t& n = seen[layer];
    for (int64_t m = 0; m < M; ++m, ++n) {
      const float* row = x + m * K;
      for (int64_t k = 0; k < K; ++k) c.absmax[k] = std::max(c.absmax[k], std::fabs(row[k]));
      // Reservoir sampling: every row seen so far is kept with equal probability.
      int64_t slot = -1;
      if (c.sample.shape[0] < rows) {
        slot = c.sample.shape[0]++;
        c.sample.data.resize(static_cast<size_t>(c.sample.shape[0] * K));
      } else {
        const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(n + 1));
        if (j < rows) slot = j;
      }
      if (slot >= 0) std::copy(row, row + K, c.sample.data.begin() + slot * K);
    }
  }
};

Tensor readInput(const SafetensorsFile& f, const std::string& key, const std::vector<int64_t>& want,
                 const std::string& what) {
  if (!f.has(key)) throw Error(f.path() + ": calibration file has no '" + key + "' (" + what + ")");
  Tensor t = f.toF32(key);
  bool ok = t.shape.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.shape[i] == want[i];
  if (!ok) {
    std::string w = "[";
    for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + (want[i] < 0 ? std::string("*") : std::to_string(want[i]));
    throw Error(f.path() + ": calibration tensor '" + key + "' has shape " + shapeString(t.shape) + ", the model needs " +
                w + "] (" + what + ")");
  }
  for (float v : t.data)
    if (!std::isfinite(v)) throw Error(f.path() + ": calibration tensor '" + key + "' holds a non-finite value");
  return t;
}

Tensor slice0(const Tensor& t, int64_t b) {
  std::vector<int64_t> s = t.shape;
  s[0] = 1;
  Tensor o(s);
  const int64_t n = o.numel();
  std::copy(t.data.begin() + b * n, t.data.begin() + (b + 1) * n, o.data.begin());
  return o;
}

// Calibration sets of one shape run as one batch: a forward reads every weight once (from disk, for a
// model larger than the page cache: 22 GiB for FLUX.1-dev), so a batch of B sets costs one pass, not B.
constexpr size_t kCalibBatchBytes = size_t{2} << 30;  // activation budget of one calibration forward

bool sameShapes(const FluxInputs& a, const FluxInputs& b) {
  return a.x.shape == b.x.shape && a.context.shape == b.context.shape && a.y.shape == b.y.shape &&
         a.guidance.has_value() == b.guidance.has_value();
}

// Sets [from, to) stacked along the batch dimension (each set has batch 1).
FluxInputs stackSets(const std::vector<FluxInputs>& sets, size_t from, size_t to) {
  auto stack = [&](auto field) {
    const Tensor& first = field(sets[from]);
    std::vector<int64_t> shape = first.shape;
    shape[0] = static_cast<int64_t>(to - from);
    Tensor t(shape);
    for (size_t i = from; i < to; ++i)
      std::copy(field(sets[i]).data.begin(), field(sets[i]).data.end(), t.data.begin() + (i - from) * first.numel());
    return t;
  };
  FluxInputs b;
  b.x = stack([](const FluxInputs& s) -> const Tensor& { return s.x; });
  b.timestep = stack([](const FluxInputs& s) -> const Tensor& { return s.timestep; });
  b.context = stack([](const FluxInputs& s) -> const Tensor& { return s.context; });
  b.y = stack([](const FluxInputs& s) -> const Tensor& { return s.y; });
  if (sets[from].guidance) b.guidance = stack([](const FluxInputs& s) -> const Tensor& { return *s.guidance; });
  return b;
}

}  // namespace

std::vector<FluxInputs> loadInputSets(const std::string& path, const FluxConfig& cfg, int randomSets, uint64_t seed,
                                      std::string* source) {
  PipelineOptions opt;
  opt.calib = path;
  opt.randomCalibSets = randomSets;
  std::vector<FluxInputs> sets;
  if (!opt.calib.empty()) {
    auto f = SafetensorsFile::open(opt.calib);
    Tensor x = readInput(*f, "x", {-1, cfg.inChannels, -1, -1}, "latents [B, C, H, W]");
    const int64_t B = x.size(0);
    if (x.size(2) % cfg.patch || x.size(3) % cfg.patch)
      throw Error(opt.calib + ": calibration latents " + shapeString(x.shape) + " are not a multiple of the patch size " +
                  std::to_string(cfg.patch));
    Tensor ts = readInput(*f, "timestep", {B}, "one timestep per latent");
    Tensor ctx = readInput(*f, "context", {B, -1, cfg.contextDim}, "text tokens [B, T, context dim]");
    Tensor y = readInput(*f, "y", {B, cfg.vecDim}, "pooled vector [B, vec dim]");
    std::optional<Tensor> g;
    if (f->has("guidance")) g = readInput(*f, "guidance", {B}, "one guidance value per latent");
    else if (cfg.guidanceEmbed) throw Error(opt.calib + ": the model embeds guidance but the calibration file has no 'guidance'");
    for (int64_t b = 0; b < B; ++b) {
      FluxInputs in{slice0(x, b), slice0(ts, b), slice0(ctx, b), slice0(y, b), std::nullopt};
      if (g) in.guidance = slice0(*g, b);
      sets.push_back(std::move(in));
    }
    *source = "file:" + std::filesystem::path(opt.calib).filename().string() + " (" + std::to_string(B) + " sets)";
    return sets;
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.05f, 0.95f);
  for (int s = 0; s < std::max(1, opt.randomCalibSets); ++s) {
    FluxInputs in;
    in.x = Tensor({1, cfg.inChannels, 16, 16});
    in.context = Tensor({1, 32, cfg.contextDim});
    in.y = Tensor({1, cfg.vecDim});
    in.timestep = Tensor({1});
    for (auto* t : {&in.x, &in.context, &in.y})
      for (auto& v : t->data) v = nd(rng);
    in.timestep.data[0] = ud(rng);
    if (cfg.guidanceEmbed) {
      in.guidance = Tensor({1});
      in.guidance->data[0] = 3.5f;
    }
    sets.push_back(std::move(in));
  }
  *source = "random (" + std::to_string(sets.size()) + " sets of N(0,1) latents 16x16 and 32 text tokens; no --calib given)";
  return sets;
}

std::string quantizeCheckpoint(const PipelineOptions& opt, const PipelineProgress& progress) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (opt.input.empty()) throw Error("quantize: no input checkpoint given");
  if (opt.output.empty()) throw Error("quantize: no output path given");
  if (!opt.force && std::filesystem::exists(opt.output))
    throw Error(opt.output + ": output exists (pass --force to overwrite)");
  if (std::filesystem::exists(opt.output) && std::filesystem::equivalent(opt.output, opt.input))
    throw Error(opt.output + ": output is the input file");
  const bool w4a16All = opt.method == "w4a16";
  if (w4a16All && opt.layer.gptq) throw Error(std::string("quantize: ") + kGptqNotW4A16);
  const bool nvfp4 = opt.layer.precision == QuantPrecision::Nvfp4;

  auto file = SafetensorsFile::open(opt.input);
  for (const auto& n : file->names())
    if (endsWith(n, ".qweight")) throw Error(opt.input + ": already quantized ('" + n + "')");
  // Calibration touches every weight once per batch: weights stay in the page cache, not in our
  // resident set, so a model larger than RAM quantizes.
  FluxLoadOptions load;
  load.releaseWeightPages = true;
  auto model = FluxModel::load(opt.input, load);
  const FluxConfig& cfg = model->config();
  const std::vector<std::string> names = model->linearNames();

  // Where each layer's tensors live in the input: BFL names, optionally ComfyUI's prefix.
  std::string prefix;
  if (!file->has(names.front() + ".weight")) {
    if (file->has("model.diffusion_model." + names.front() + ".weight")) prefix = "model.diffusion_model.";
    else
      throw Error(opt.input + ": quantizing needs BFL key names (no '" + names.front() +
                  ".weight'); convert diffusers checkpoints to BFL names first");
  }

  // Rank checks before the slow part: rank must fit every quantized layer.
  const bool useRank = !w4a16All && (opt.layer.method == QuantMethod::SVDQuant || opt.layer.method == QuantMethod::LowRank);
  if (useRank) {
    if (opt.layer.rank < 1) throw Error("quantize: rank must be >= 1 (got " + std::to_string(opt.layer.rank) + ")");
    for (const auto& n : names) {
      const LayerRole r = roleOf(n);
      if (r != LayerRole::Block && r != LayerRole::GeluFed) continue;
      const Linear& l = model->linear(n);
      if (opt.layer.rank > std::min(l.inFeatures(), l.outFeatures()))
        throw Error(opt.input + ": rank " + std::to_string(opt.layer.rank) + " exceeds min(in, out) = " +
                    std::to_string(std::min(l.inFeatures(), l.outFeatures())) + " of layer '" + n + "' [" +
                    std::to_string(l.outFeatures()) + ", " + std::to_string(l.inFeatures()) + "]");
    }
  }

  // --- 1. calibration ---
  std::string calibSource;
  std::vector<FluxInputs> sets = loadInputSets(opt.calib, cfg, opt.randomCalibSets, 7, &calibSource);
  const int64_t total = static_cast<int64_t>(sets.size() + names.size());
  Collector col;
  col.rows = std::max(8, opt.calibRows);
  ForwardHooks hooks;
  hooks.onLinearInput = [&](const std::string& l, const float* x, int64_t M, int64_t K) { col.add(l, x, M, K); };
  hooks.cancel = opt.cancel;
  auto checkCancel = [&] {
    if (opt.cancel && opt.cancel->load()) throw Error("cancelled");
  };
  for (size_t i = 0, j; i < sets.size(); i = j) {
    const int64_t imageTokens = sets[i].x.numel() / (cfg.inChannels * cfg.patch * cfg.patch),
                  textTokens = sets[i].context.size(1);
    for (j = i + 1; j < sets.size() && sameShapes(sets[i], sets[j]) &&
                    (opt.calibBatch <= 0 || j - i < static_cast<size_t>(opt.calibBatch)) &&
                    model->forwardBytes(static_cast<int64_t>(j + 1 - i), imageTokens, textTokens) <= kCalibBatchBytes;
         ++j) {
    }
    try {
      model->forward(j - i == 1 ? sets[i] : stackSets(sets, i, j), &hooks);
    } catch (const Error& e) {
      throw Error((opt.calib.empty() ? std::string("random calibration") : opt.calib) + ": calibration set" +
                  (j - i == 1 ? " " + std::to_string(i) : "s " + std::to_string(i) + ".." + std::to_string(j - 1)) +
                  " does not fit the model: " + e.what());
    }
    if (progress) progress(static_cast<int64_t>(j), total, "calibrate");
  }
  const double calibSeconds = std::chrono::duration<double>(clock::now() - t0).count();

  // --- 2. quantize layer by layer, 3. write ---
  SafetensorsWriter out(opt.output, opt.force);
  std::set<std::string> written;
  std::ostringstream layersJson, kept16Json;
  int64_t nQuant = 0, nW4A16 = 0, nKept = 0;
  std::vector<std::string> padded;
  bool firstL = true, firstK = true;
  for (size_t li = 0; li < names.size(); ++li) {
    checkCancel();
    const std::string& n = names[li];
    const LayerRole role = roleOf(n);
    const auto tl = clock::now();
    const std::string wkey = prefix + n + ".weight", bkey = prefix + n + ".bias";
    auto* dense = dynamic_cast<const DenseLinear*>(&model->linear(n));
    const bool quantize = role != LayerRole::Keep16 && !(role == LayerRole::AdaLN && opt.adaln16) && dense;
    std::string kind = "dense", smoothing;
    double err = NAN, naiveErr = NAN, rtnErr = NAN;
    int refine = 0;
    bool gptq = false;
    if (quantize) {
      Tensor W = dense->weightF32();
      for (int64_t i = 0; i < W.numel(); ++i)
        if (!std::isfinite(W.data[i]))
          throw Error(opt.input + ": tensor '" + wkey + "' holds a non-finite value at flat index " + std::to_string(i));
      std::vector<float> bias;
      if (const Tensor* b = dense->bias()) {
        bias = b->data;
        for (float v : bias)
          if (!std::isfinite(v)) throw Error(opt.input + ": tensor '" + bkey + "' holds a non-finite value");
      }
      const bool weightOnly = role == LayerRole::AdaLN || w4a16All;
      if (weightOnly && W.size(1) % quant::kInt4Group == 0) {
        W4A16Weights w = quantizeW4A16Layer(n, W, bias);
        writeW4A16(out, n, w);
        auto layer = std::make_unique<W4A16Linear>(std::move(w));
        kind = layer->kind();
        auto it = col.stats.find(n);
        if (it != col.stats.end() && it->second.sample.size(0) > 0) err = layerRelError(*layer, W, bias, it->second.sample);
        ++nW4A16;
      } else if (!weightOnly) {
        auto it = col.stats.find(n);
        if (it == col.stats.end() || it->second.sample.size(0) == 0)
          throw Error(n + ": calibration never reached this layer");
        LayerQuantOptions lo = opt.layer;
        lo.tryUnsignedShift = role == LayerRole::GeluFed && opt.unsignedGelu && !nvfp4;
        LayerQuantResult r = quantizeW4A4Layer(n, W, bias, it->second, lo);
        if (r.weights.inPadded != r.weights.in) padded.push_back(n);
        writeW4A4(out, n, r.weights);
        auto layer = std::make_unique<W4A4Linear>(std::move(r.weights));
        kind = layer->kind();
        err = r.relError, naiveErr = r.naiveRelError, smoothing = r.smoothing, refine = r.refineSteps;
        gptq = r.gptq;
        if (lo.gptq) rtnErr = r.rtnRelError;
        ++nQuant;
      } else {
        kind = "dense (in-features not a multiple of 64)";
      }
    }
    if (quantize) {
      // Written: neither the layer nor its calibration rows are needed again (holding them, a 12B
      // model's quantization peaked at 9.5 GiB resident, its quantized layers alone being 6 GiB).
      model->linears.erase(n);
      col.stats.erase(n);
    }
    if (kind.rfind("dense", 0) == 0) {
      ++nKept;
      kept16Json << (firstK ? "" : ",") << jsonStr(n);
      firstK = false;
    } else {
      written.insert(wkey);
      written.insert(bkey);
    }
    layersJson << (firstL ? "" : ",") << "{\"name\":" << jsonStr(n) << ",\"kind\":" << jsonStr(kind)
               << ",\"relError\":" << jsonNum(err) << ",\"naiveRelError\":" << jsonNum(naiveErr)
               << ",\"smoothing\":" << jsonStr(smoothing) << ",\"refineSteps\":" << refine
               << ",\"seconds\":" << jsonNum(std::chrono::duration<double>(clock::now() - tl).count())
               << ",\"gptq\":" << (gptq ? "true" : "false");
    if (opt.layer.gptq) layersJson << ",\"rtnRelError\":" << jsonNum(rtnErr);
    layersJson << "}";
    firstL = false;
    if (progress) progress(static_cast<int64_t>(sets.size() + li + 1), total, n);
  }
  // Everything not replaced (embedders, final layer, norms, 16-bit layers) is copied as stored, prefix dropped.
  for (const auto& name : file->names()) {
    if (written.count(name)) continue;
    const TensorInfo& ti = file->info(name);
    std::string outName = !prefix.empty() && name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
    out.add(outName, ti.dtype, ti.shape, file->bytes(name), ti.end - ti.begin);
  }

  const char* prec = nvfp4 ? "nvfp4" : "int4";
  const int rank = useRank ? opt.layer.rank : 0;
  const char* lowrank = opt.layer.lowrank == LowRankMode::Svd ? "svd" : opt.layer.lowrank == LowRankMode::Corda ? "corda" : "whiten";
  std::ostringstream qc;  // Nunchaku's quantization_config shape
  const std::string dt = nvfp4 ? "\"fp4_e2m1_all\",\"scale_dtype\":\"fp8_e4m3\",\"group_size\":16"
                               : "\"int4\",\"scale_dtype\":null,\"group_size\":64";
  qc << "{\"method\":" << jsonStr(w4a16All ? "w4a16" : opt.method) << ",\"weight\":{\"dtype\":" << dt
     << "},\"activation\":" << (w4a16All ? std::string("null") : "{\"dtype\":" + dt + "}") << ",\"rank\":" << rank << "}";
  std::ostringstream sv;
  std::string paddedJson;
  for (size_t i = 0; i < padded.size(); ++i) paddedJson += (i ? "," : "") + jsonStr(padded[i]);
  sv << "{\"tool\":\"svdquant-comfy\",\"version\":" << jsonStr(opt.toolVersion) << ",\"method\":" << jsonStr(opt.method)
     << ",\"precision\":" << jsonStr(prec) << ",\"rank\":" << rank << ",\"lowrank\":" << jsonStr(lowrank)
     << ",\"refine_iters\":" << opt.layer.refineIters << ",\"refine_tol\":" << jsonNum(opt.layer.refineTol) << ",\"grid_step\":" << jsonNum(opt.layer.gridStep)
     << ",\"grid\":\"" << (opt.layer.exhaustiveGrid ? "exhaustive" : "coarse-to-fine") << "\"" << ",\"gptq\":" << (opt.layer.gptq ? "true" : "false")
     << ",\"adaln\":" << jsonStr(opt.adaln16 ? "16bit" : "w4a16")
     << ",\"calibration\":" << jsonStr(calibSource) << ",\"calib_rows\":" << col.rows
     << ",\"act_unsigned_gelu\":" << (opt.unsignedGelu && !nvfp4 ? "true" : "false")
     << ",\"padded_layers\":[" << paddedJson << "],\"kept_16bit\":[" << kept16Json.str() << "],\"layers\":[" << layersJson.str()
     << "]}";
  for (const auto& kv : file->metadata())
    if (kv.first != "quantization_config" && kv.first != "svdq") out.setMetadata(kv.first, kv.second);
  out.setMetadata("quantization_config", qc.str());
  out.setMetadata("svdq", sv.str());
  checkCancel();
  out.finish();

  std::ostringstream rep;
  rep << "{\"output\":" << jsonStr(opt.output) << ",\"seconds\":"
      << jsonNum(std::chrono::duration<double>(clock::now() - t0).count()) << ",\"calibSeconds\":" << jsonNum(calibSeconds)
      << ",\"quantizedW4A4\":" << nQuant << ",\"w4a16\":" << nW4A16 << ",\"kept16\":" << nKept
      << ",\"quantization_config\":" << qc.str() << ",\"svdq\":" << sv.str() << "}";
  return rep.str();
}

}  // namespace svdq

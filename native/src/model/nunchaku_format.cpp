// Nunchaku's FLUX checkpoints converted layer by layer into ours (see nunchaku_format.h).
#include "nunchaku_format.h"

#include <optional>
#include <regex>
#include <vector>

#include "../quant/layer_reader.h"
#include "../quant/nunchaku_pack.h"
#include "checkpoint_keys.h"
#include "svdq/flux.h"
#include "svdq/quant.h"
#include "svdq/quant_kernels.h"
#include "svdq/split_linear.h"

namespace svdq::nunchaku {

namespace {

enum class Role {
  W4A4,     // SVDQuant W4A4 layer
  GeluFed,  // W4A4 after the fused GELU: INT4 runs it on unsigned (x + 0.171875) / smooth, NVFP4 signed
  AdaLN6,   // AWQ W4A16 adaLN of a double block: 6 chunks, rows interleaved
  AdaLN3,   // AWQ W4A16 adaLN of a single block: 3 chunks
};
struct Piece {
  std::string name;  // full Nunchaku layer name, e.g. "transformer_blocks.0.qkv_proj"
  Role role;
};
struct Mapping {
  SplitLinear::Stack stack = SplitLinear::Stack::Outputs;  // only used with several pieces
  std::vector<Piece> pieces;
};

// BFL layer -> Nunchaku layer(s) (nunchaku src/FluxModel.cpp JointTransformerBlock, FluxSingleTransformerBlock).
std::optional<Mapping> mapLayer(const std::string& bfl) {
  static const std::regex re(R"(^(double_blocks|single_blocks)\.(\d+)\.(.+)$)");
  std::smatch m;
  if (!std::regex_match(bfl, m, re)) return std::nullopt;
  const std::string rest = m[3];
  if (m[1] == "double_blocks") {
    const std::string p = "transformer_blocks." + m[2].str() + ".";
    static const std::vector<std::tuple<const char*, const char*, Role>> table = {
        {"img_mod.lin", "norm1.linear", Role::AdaLN6},  {"txt_mod.lin", "norm1_context.linear", Role::AdaLN6},
        {"img_attn.qkv", "qkv_proj", Role::W4A4},       {"txt_attn.qkv", "qkv_proj_context", Role::W4A4},
        {"img_attn.proj", "out_proj", Role::W4A4},      {"txt_attn.proj", "out_proj_context", Role::W4A4},
        {"img_mlp.0", "mlp_fc1", Role::W4A4},           {"img_mlp.2", "mlp_fc2", Role::GeluFed},
        {"txt_mlp.0", "mlp_context_fc1", Role::W4A4},   {"txt_mlp.2", "mlp_context_fc2", Role::GeluFed},
    };
    for (const auto& [ours, theirs, role] : table)
      if (rest == ours) return Mapping{SplitLinear::Stack::Outputs, {{p + theirs, role}}};
    return std::nullopt;
  }
  const std::string p = "single_transformer_blocks." + m[2].str() + ".";
  if (rest == "modulation.lin") return Mapping{SplitLinear::Stack::Outputs, {{p + "norm.linear", Role::AdaLN3}}};
  // linear1 = [qkv; mlp_in] on one input; linear2 = [attn, gelu(mlp)] -> out, each half its own layer.
  if (rest == "linear1")
    return Mapping{SplitLinear::Stack::Outputs, {{p + "qkv_proj", Role::W4A4}, {p + "mlp_fc1", Role::W4A4}}};
  if (rest == "linear2")
    return Mapping{SplitLinear::Stack::Inputs, {{p + "out_proj", Role::W4A4}, {p + "mlp_fc2", Role::GeluFed}}};
  return std::nullopt;
}

bool isAdaLN(Role r) { return r == Role::AdaLN6 || r == Role::AdaLN3; }

std::unique_ptr<Linear> loadW4A4(const SafetensorsFile& f, const Piece& piece) {
  LayerReader rd{f, piece.name};
  const TensorInfo& qi = rd.need("qweight");
  if (qi.dtype != DType::I8 && qi.dtype != DType::U8)
    rd.fail(rd.key("qweight"), std::string("dtype ") + dtypeName(qi.dtype) + ", expected I8 (packed 4-bit)");
  if (qi.shape.size() != 2 || qi.shape[0] < 1 || qi.shape[1] < 1)
    rd.fail(rd.key("qweight"), "shape " + shapeString(qi.shape) + ", expected [out, in/2]");
  const int64_t N = qi.shape[0], K = qi.shape[1] * 2;
  if (N % 128 || K % 128)
    rd.fail(rd.key("qweight"), "shape " + shapeString(qi.shape) + ": Nunchaku's tiles need out and in to be multiples of 128");
  W4A4Weights w;
  w.in = K, w.inPadded = K, w.out = N;
  w.precision = rd.need("wscales").dtype == DType::F8_E4M3 ? QuantPrecision::Nvfp4 : QuantPrecision::Int4;
  w.qweight = unpackW4A4Weight(f.bytes(rd.key("qweight")), N, K);  // INT4 values or E2M1 codes alike
  if (w.precision == QuantPrecision::Int4) {
    w.wscales = unpackChannelScales(rd.floats("wscales", {K / quant::kInt4Group, N}).data(), N, K / quant::kInt4Group);
  } else {
    rd.need("wscales", {K / quant::kFp4Group, N});
    w.wscales8 = unpackMicroScales(f.bytes(rd.key("wscales")), N, K);
    for (uint8_t b : w.wscales8)
      if ((b & 0x7f) == 0x7f) rd.fail(rd.key("wscales"), "holds an E4M3 NaN");
    // Weight = code * micro-scale * wtscale (per tensor, default 1) * wcscales (per channel, optional).
    if (rd.has("wtscale")) {
      const TensorInfo& ti = rd.need("wtscale");
      if (numel(ti.shape) != 1) rd.fail(rd.key("wtscale"), "shape " + shapeString(ti.shape) + ", expected one value");
      w.wtscale = rd.floats("wtscale", ti.shape)[0];
    }
    if (rd.has("wcscales")) w.wcscales = unpackChannelScales(rd.floats("wcscales", {N}).data(), N, 1);
    w.actTensorScale = 1.f;  // Nunchaku's activation group scales are e4m3(amax / 6), no tensor scale
  }
  w.smooth = unpackChannelScales(rd.floats("smooth", {K}).data(), K, 1);
  for (float s : w.smooth)
    if (!(s > 0.f)) rd.fail(rd.key("smooth"), "holds a non-positive smoothing factor");
  if (rd.has("bias")) w.bias = unpackChannelScales(rd.floats("bias", {N}).data(), N, 1);
  int64_t r = 0;  // no low-rank branch stored: rank 0
  if (rd.has("lora_down")) {
    const auto& ds = rd.need("lora_down").shape;
    if (ds.size() != 2 || ds[0] != K)
      rd.fail(rd.key("lora_down"), "shape " + shapeString(ds) + ", expected [" + std::to_string(K) + ", rank]");
    r = ds[1];
    if (r % 16) rd.fail(rd.key("lora_down"), "rank " + std::to_string(r) + " is not a multiple of 16 (Nunchaku's 16x16 blocks)");
  }
  if (r > 0) {
    w.loraDown = Tensor({r, K});
    w.loraDown.data = unpackLowRank(rd.floats("lora_down", {K, r}).data(), K, r, true);
    w.loraUp = Tensor({N, r});
    w.loraUp.data = unpackLowRank(rd.floats("lora_up", {N, r}).data(), N, r, false);
  } else if (rd.has("lora_up") && numel(rd.need("lora_up").shape) > 0) {
    rd.fail(rd.key("lora_up"), "present without lora_down");
  }
  // Nunchaku's INT4 MLP always quantizes GELU outputs shifted and unsigned (the exporter compensates in
  // the bias); its NVFP4 MLP quantizes them signed like any input.
  if (piece.role == Role::GeluFed && w.precision == QuantPrecision::Int4) w.actShift = quant::kGeluShift;
  return std::make_unique<W4A4Linear>(std::move(w));
}

// Nunchaku row i * S + c holds chunk c, channel i; BFL row c * (N / S) + i.
int64_t bflRow(int64_t row, int64_t S, int64_t N) { return (row % S) * (N / S) + row / S; }

std::unique_ptr<Linear> loadW4A16(const SafetensorsFile& f, const Piece& piece) {
  LayerReader rd{f, piece.name};
  const int64_t S = piece.role == Role::AdaLN6 ? 6 : 3;
  const TensorInfo& qi = rd.need("qweight");
  if (qi.dtype != DType::I32)
    rd.fail(rd.key("qweight"), std::string("dtype ") + dtypeName(qi.dtype) + ", expected I32 (AWQ packed 4-bit)");
  if (qi.shape.size() != 2 || qi.shape[0] < 1 || qi.shape[1] < 1)
    rd.fail(rd.key("qweight"), "shape " + shapeString(qi.shape) + ", expected [out/4, in/2]");
  const int64_t N = qi.shape[0] * 4, K = qi.shape[1] * 2, G = K / quant::kInt4Group;
  if (K % quant::kInt4Group || N % S)
    rd.fail(rd.key("qweight"), "shape " + shapeString(qi.shape) + ": in must be a multiple of 64 and out of " + std::to_string(S) +
                                   " (adaLN chunks)");
  if (rd.has("lora_down")) rd.fail(rd.key("lora_down"), "LoRA branches on AWQ adaLN layers are not supported");
  // Scale rows past K/64 are the exporter's padding to whole int32 packs (tinychat ceil_num_groups).
  auto groups = [&](const char* s) {
    const TensorInfo& ti = rd.need(s);
    if (ti.shape.size() != 2 || ti.shape[1] != N || ti.shape[0] < G)
      rd.fail(rd.key(s), "shape " + shapeString(ti.shape) + ", expected [" + std::to_string(G) + " (or more), " + std::to_string(N) + "]");
    auto v = rd.floats(s, ti.shape);
    std::vector<float> out(static_cast<size_t>(N * G));  // [N, G] in BFL row order
    for (int64_t g = 0; g < G; ++g)
      for (int64_t n = 0; n < N; ++n) out[bflRow(n, S, N) * G + g] = v[g * N + n];
    return out;
  };

  W4A16Weights w;
  w.in = K, w.out = N;
  const auto q = unpackAwqWeight(f.bytes(rd.key("qweight")), N, K);
  w.qweight.resize(q.size());
  for (int64_t n = 0; n < N; ++n) std::copy_n(q.begin() + n * K / 2, K / 2, w.qweight.begin() + bflRow(n, S, N) * K / 2);
  w.wscales = groups("wscales");
  w.wzeros = groups("wzeros");
  // Required: the exporter folds the "+1" of (1 + scale) into the bias of the scale chunks (1 and
  // S - 2), and our modulation adds it itself, so it comes out here.
  const auto b = rd.floats("bias", {N});
  w.bias.resize(N);
  for (int64_t n = 0; n < N; ++n) w.bias[bflRow(n, S, N)] = b[n];
  for (int64_t c = 0; c < S; ++c)
    if (c == 1 || c == S - 2)
      for (int64_t i = 0; i < N / S; ++i) w.bias[c * (N / S) + i] -= 1.f;
  return std::make_unique<W4A16Linear>(std::move(w));
}

std::unique_ptr<Linear> loadPiece(const SafetensorsFile& f, const Piece& p) {
  return isAdaLN(p.role) ? loadW4A16(f, p) : loadW4A4(f, p);
}

int64_t pieceOut(const SafetensorsFile& f, const Piece& p) {
  LayerReader rd{f, p.name};
  const auto& s = rd.need("qweight").shape;
  if (s.empty()) rd.fail(rd.key("qweight"), "shape [] is not a matrix");
  return isAdaLN(p.role) ? s[0] * 4 : s[0];
}

}  // namespace

int64_t layerOut(const SafetensorsFile& f, const std::string& bflLayer) {
  const auto m = mapLayer(bflLayer);
  if (!m) return -1;
  if (m->stack == SplitLinear::Stack::Inputs) return pieceOut(f, m->pieces[0]);
  int64_t out = 0;
  for (const auto& p : m->pieces) out += pieceOut(f, p);
  return out;
}

std::unique_ptr<Linear> loadLinear(const SafetensorsFile& f, const std::string& bflLayer, int64_t in, int64_t out) {
  const auto m = mapLayer(bflLayer);
  if (!m) return nullptr;
  const bool byOutputs = m->stack == SplitLinear::Stack::Outputs;
  std::vector<std::unique_ptr<Linear>> parts;
  int64_t stacked = 0;  // outputs (or inputs) of the pieces so far
  for (size_t i = 0; i < m->pieces.size(); ++i) {
    const Piece& p = m->pieces[i];
    auto l = loadPiece(f, p);
    stacked += byOutputs ? l->outFeatures() : l->inFeatures();
    const bool last = i + 1 == m->pieces.size();
    const bool fits = (byOutputs ? l->inFeatures() == in : l->outFeatures() == out) &&
                      (last ? stacked == (byOutputs ? out : in) : stacked < (byOutputs ? out : in));
    if (!fits)
      throw Error(f.path() + ": " + p.name + ".qweight: layer is [in " + std::to_string(l->inFeatures()) + ", out " +
                  std::to_string(l->outFeatures()) + "], which does not fit '" + bflLayer + "' [in " + std::to_string(in) +
                  ", out " + std::to_string(out) + "] of this FLUX configuration" +
                  (m->pieces.size() > 1 ? std::string(" (") + (byOutputs ? "outputs" : "inputs") + " of " + m->pieces[0].name +
                                              " and " + m->pieces[1].name + " stacked)"
                                        : ""));
    parts.push_back(std::move(l));
  }
  if (parts.size() == 1) return std::move(parts[0]);
  return std::make_unique<SplitLinear>(m->stack, std::move(parts));
}

}  // namespace svdq::nunchaku

namespace svdq {

void convertNunchakuCheckpoint(const std::string& input, const std::string& output, bool overwrite) {
  {
    auto file = SafetensorsFile::open(input);
    if (CheckpointKeys(*file).naming() != CheckpointKeys::Naming::Nunchaku)
      throw Error(input + ": not a Nunchaku checkpoint (neither 'transformer_blocks.0.qkv_proj.qweight' nor "
                  "'single_transformer_blocks.0.qkv_proj.qweight' is present)");
  }
  auto model = FluxModel::load(input);
  auto meta = model->metadata();  // Nunchaku's config, comfy_config, quantization_config carry over
  meta.erase("model_class");      // names Nunchaku's loader, which cannot read our layout
  meta["svdq"] = R"({"tool":"svdq convert","converted_from":"nunchaku"})";
  saveFluxCheckpoint(*model, output, overwrite, meta);
}

}  // namespace svdq

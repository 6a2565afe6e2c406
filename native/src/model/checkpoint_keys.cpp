// Checkpoint key naming: BFL, ComfyUI-prefixed BFL, diffusers (see checkpoint_keys.h).
#include "checkpoint_keys.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <regex>

namespace svdq {

namespace {
constexpr const char* kComfyPrefix = "model.diffusion_model.";

struct Pair {
  const char* bfl;
  const char* diffusers;
};
// Whole-model layers (".weight"/".bias" appended).
constexpr Pair kTop[] = {
    {"img_in", "x_embedder"},
    {"txt_in", "context_embedder"},
    {"final_layer.linear", "proj_out"},
    {"time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"},
    {"time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"},
    {"vector_in.in_layer", "time_text_embed.text_embedder.linear_1"},
    {"vector_in.out_layer", "time_text_embed.text_embedder.linear_2"},
    {"guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"},
    {"guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"},
};
// Per double block (suffix after "double_blocks.N." / "transformer_blocks.N.").
constexpr Pair kDouble[] = {
    {"img_attn.proj", "attn.to_out.0"},         {"txt_attn.proj", "attn.to_add_out"},
    {"img_mod.lin", "norm1.linear"},            {"txt_mod.lin", "norm1_context.linear"},
    {"img_mlp.0", "ff.net.0.proj"},             {"img_mlp.2", "ff.net.2"},
    {"txt_mlp.0", "ff_context.net.0.proj"},     {"txt_mlp.2", "ff_context.net.2"},
    {"img_attn.norm.query_norm.scale", "attn.norm_q.weight"},
    {"img_attn.norm.key_norm.scale", "attn.norm_k.weight"},
    {"txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"},
    {"txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"},
};
constexpr Pair kSingle[] = {
    {"modulation.lin", "norm.linear"},
    {"linear2", "proj_out"},
    {"norm.query_norm.scale", "attn.norm_q.weight"},
    {"norm.key_norm.scale", "attn.norm_k.weight"},
};

bool startsWith(const std::string& s, const char* p) { return s.compare(0, std::strlen(p), p) == 0; }
}  // namespace

CheckpointKeys::CheckpointKeys(const SafetensorsFile& file) : file_(file) {
  // Nunchaku's quantized layers carry its own names (the fused qkv_proj exists nowhere else).
  if (file.has("transformer_blocks.0.qkv_proj.qweight") || file.has("single_transformer_blocks.0.qkv_proj.qweight")) {
    naming_ = Naming::Nunchaku;
    return;
  }
  for (const auto& n : file.names()) {
    if (startsWith(n, kComfyPrefix)) {
      naming_ = Naming::Comfy;
      return;
    }
    if (startsWith(n, "transformer_blocks.") || startsWith(n, "single_transformer_blocks.") || startsWith(n, "x_embedder.")) {
      naming_ = Naming::Diffusers;
      return;
    }
  }
}

std::vector<CheckpointKeys::Part> CheckpointKeys::parts(const std::string& bflKey) const {
  switch (naming_) {
    case Naming::Bfl: return {{bflKey}};
    case Naming::Comfy: return {{kComfyPrefix + bflKey}};
    case Naming::Diffusers: return diffusersParts(bflKey);
    case Naming::Nunchaku: {
      // Diffusers names, except that the QK-norm scales sit on the block: "transformer_blocks.0.norm_q.weight".
      auto ps = diffusersParts(bflKey);
      for (auto& p : ps)
        if (auto at = p.key.find(".attn.norm_"); at != std::string::npos) p.key.erase(at + 1, 5);
      return ps;
    }
  }
  return {};
}

std::vector<CheckpointKeys::Part> CheckpointKeys::diffusersParts(const std::string& key) const {
  static const std::regex blockRe(R"(^(double_blocks|single_blocks)\.(\d+)\.(.+)$)");
  std::smatch m;
  auto withSuffix = [](const Pair* table, size_t n, const std::string& name, bool toDiffusers) -> std::string {
    // name may end in ".weight"/".bias" (layers) or be a whole key (norm scales).
    for (size_t i = 0; i < n; i++) {
      const std::string from = toDiffusers ? table[i].bfl : table[i].diffusers;
      const std::string to = toDiffusers ? table[i].diffusers : table[i].bfl;
      if (name == from) return to;
      for (const char* e : {".weight", ".bias"})
        if (name == from + e) return to + e;
    }
    return "";
  };
  if (std::regex_match(key, m, blockRe)) {
    const bool dbl = m[1] == "double_blocks";
    const std::string p = (dbl ? "transformer_blocks." : "single_transformer_blocks.") + m[2].str() + ".";
    const std::string rest = m[3];
    std::string e = rest.size() > 5 && rest.compare(rest.size() - 5, 5, ".bias") == 0 ? ".bias" : ".weight";
    if (dbl && (rest == "img_attn.qkv" + e))
      return {{p + "attn.to_q" + e}, {p + "attn.to_k" + e}, {p + "attn.to_v" + e}};
    if (dbl && (rest == "txt_attn.qkv" + e))
      return {{p + "attn.add_q_proj" + e}, {p + "attn.add_k_proj" + e}, {p + "attn.add_v_proj" + e}};
    if (!dbl && rest == "linear1" + e)
      return {{p + "attn.to_q" + e}, {p + "attn.to_k" + e}, {p + "attn.to_v" + e}, {p + "proj_mlp" + e}};
    std::string d = dbl ? withSuffix(kDouble, std::size(kDouble), rest, true) : withSuffix(kSingle, std::size(kSingle), rest, true);
    return {{d.empty() ? key : p + d}};
  }
  if (key == "final_layer.adaLN_modulation.1.weight") return {{"norm_out.linear.weight", true}};
  if (key == "final_layer.adaLN_modulation.1.bias") return {{"norm_out.linear.bias", true}};
  std::string d = withSuffix(kTop, std::size(kTop), key, true);
  return {{d.empty() ? key : d}};
}

bool CheckpointKeys::has(const std::string& bflKey) const {
  for (const auto& p : parts(bflKey))
    if (!file_.has(p.key)) return false;
  return true;
}

void CheckpointKeys::missing(const std::string& bflKey) const {
  for (const auto& p : parts(bflKey))
    if (!file_.has(p.key))
      throw Error(file_.path() + ": missing tensor '" + p.key + "'" + (p.key == bflKey ? "" : " (BFL '" + bflKey + "')") +
                  ": not a complete FLUX checkpoint");
  throw Error(file_.path() + ": missing tensor '" + bflKey + "'");
}

std::vector<int64_t> CheckpointKeys::shape(const std::string& bflKey) const {
  if (!has(bflKey)) missing(bflKey);
  std::vector<int64_t> s;
  for (const auto& p : parts(bflKey)) {
    const auto& info = file_.info(p.key);
    if (s.empty()) {
      s = info.shape;
      continue;
    }
    if (info.shape.size() != s.size() || info.shape.empty() ||
        !std::equal(info.shape.begin() + 1, info.shape.end(), s.begin() + 1))
      throw Error(file_.path() + ": tensor '" + p.key + "' has shape " + shapeString(info.shape) +
                  ", which does not stack with the other parts of '" + bflKey + "' " + shapeString(s));
    s[0] += info.shape[0];
  }
  return s;
}

DType CheckpointKeys::dtype(const std::string& bflKey) const {
  auto ps = parts(bflKey);
  DType t = file_.info(ps.at(0).key).dtype;
  for (const auto& p : ps)
    if (file_.info(p.key).dtype != t) return DType::F32;
  return t;
}

namespace {
// Swaps the two halves along dim 0 of a row-major [rows, cols] buffer.
template <typename T>
void swapHalves(std::vector<T>& v, size_t begin, size_t count) {
  std::rotate(v.begin() + begin, v.begin() + begin + count / 2, v.begin() + begin + count);
}
}  // namespace

Tensor CheckpointKeys::loadF32(const std::string& bflKey) const {
  Tensor out(shape(bflKey));
  size_t offset = 0;
  for (const auto& p : parts(bflKey)) {
    const auto& info = file_.info(p.key);
    const size_t n = static_cast<size_t>(numel(info.shape));
    toF32(info.dtype, file_.bytes(p.key), out.ptr() + offset, n);
    if (p.swapHalves) swapHalves(out.data, offset, n);
    offset += n;
  }
  return out;
}

std::vector<uint16_t> CheckpointKeys::loadBf16(const std::string& bflKey) const {
  std::vector<uint16_t> out(static_cast<size_t>(numel(shape(bflKey))));
  size_t offset = 0;
  for (const auto& p : parts(bflKey)) {
    const auto& info = file_.info(p.key);
    if (info.dtype != DType::BF16) throw Error(file_.path() + ": tensor '" + p.key + "' is not BF16");
    const size_t n = static_cast<size_t>(numel(info.shape));
    std::memcpy(out.data() + offset, file_.bytes(p.key), n * 2);
    if (p.swapHalves) swapHalves(out, offset, n);
    offset += n;
  }
  return out;
}

const uint16_t* CheckpointKeys::mappedBf16(const std::string& bflKey) const {
  const auto ps = parts(bflKey);
  if (ps.size() != 1 || ps[0].swapHalves || file_.info(ps[0].key).dtype != DType::BF16) return nullptr;
  const uint8_t* p = file_.bytes(ps[0].key);
  return reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) ? nullptr : reinterpret_cast<const uint16_t*>(p);
}

int64_t CheckpointKeys::countBlocks(const std::string& prefix, const std::string& suffix) const {
  int64_t n = 0;
  while (has(prefix + std::to_string(n) + "." + suffix)) n++;
  return n;
}

}  // namespace svdq

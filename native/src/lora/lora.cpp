// Attach / rescale / detach LoRA branches on named layers (see svdq/lora.h).
#include "svdq/lora.h"

#include <cmath>
#include <set>

namespace svdq {

namespace {
std::string dims(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void checkFinite(const Tensor& t, const std::string& what) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(t.data[static_cast<size_t>(i)])) {
      throw Error(what + ": non-finite value " + std::to_string(t.data[static_cast<size_t>(i)]) + " at element " +
                  std::to_string(i));
    }
  }
}
}  // namespace

int attachLora(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength) {
  if (!std::isfinite(strength)) throw Error("LoRA " + std::to_string(id) + ": strength is not finite");
  if (patches.empty()) throw Error("LoRA " + std::to_string(id) + ": no layers to patch");
  for (const auto& kv : linears) {
    for (const auto& f : kv.second->loras) {
      if (f.id == id) throw Error("LoRA id " + std::to_string(id) + " is already attached (layer '" + kv.first + "')");
    }
  }
  // Validate everything first so a bad patch leaves the model exactly as it was.
  std::set<std::string> seen;
  for (const auto& p : patches) {
    auto it = linears.find(p.layer);
    if (it == linears.end()) throw Error("LoRA layer '" + p.layer + "': the model has no such linear layer");
    if (!seen.insert(p.layer).second) throw Error("LoRA layer '" + p.layer + "' is patched twice in one LoRA");
    const Linear& l = *it->second;
    const int64_t in = l.inFeatures(), out = l.outFeatures();
    if (p.down.shape.size() != 2 || p.up.shape.size() != 2) {
      throw Error("LoRA layer '" + p.layer + "': down " + dims(p.down.shape) + " and up " +
                  dims(p.up.shape) + " must both be 2-D");
    }
    const int64_t r = p.down.shape[0];
    if (r <= 0) throw Error("LoRA layer '" + p.layer + "': rank 0 (down " + dims(p.down.shape) + ")");
    if (p.down.shape[1] != in || p.up.shape[0] != out || p.up.shape[1] != r) {
      throw Error("LoRA layer '" + p.layer + "': down " + dims(p.down.shape) + ", up " +
                  dims(p.up.shape) + " do not fit the layer: expected down [" + std::to_string(r) + ", " +
                  std::to_string(in) + "], up [" + std::to_string(out) + ", " + std::to_string(r) + "]");
    }
    if (static_cast<int64_t>(p.down.data.size()) != r * in || static_cast<int64_t>(p.up.data.size()) != out * r) {
      throw Error("LoRA layer '" + p.layer + "': data length does not match the shapes");
    }
    checkFinite(p.down, "LoRA layer '" + p.layer + "' down");
    checkFinite(p.up, "LoRA layer '" + p.layer + "' up");
  }
  // Reserve first: the only failure left (allocation) then happens before any layer changes.
  for (const auto& p : patches) {
    auto& v = linears.at(p.layer)->loras;
    v.reserve(v.size() + 1);
  }
  for (auto& p : patches) {
    LoraFactors f;
    f.id = id;
    f.down = std::move(p.down);
    f.up = std::move(p.up);
    f.scale = strength;
    linears.at(p.layer)->loras.push_back(std::move(f));
  }
  return static_cast<int>(patches.size());
}

int setLoraStrength(LinearMap& linears, int id, float strength) {
  if (!std::isfinite(strength)) throw Error("LoRA " + std::to_string(id) + ": strength is not finite");
  int n = 0;
  for (auto& kv : linears) {
    for (auto& f : kv.second->loras) {
      if (f.id == id) {
        f.scale = strength;
        ++n;
      }
    }
  }
  if (n == 0) throw Error("no LoRA with id " + std::to_string(id) + " is attached");
  return n;
}

int removeLora(LinearMap& linears, int id) {
  int n = 0;
  for (auto& kv : linears) {
    auto& v = kv.second->loras;
    for (auto it = v.begin(); it != v.end();) {
      if (it->id == id) {
        it = v.erase(it);
        ++n;
      } else {
        ++it;
      }
    }
    if (v.empty()) v.shrink_to_fit();  // give the branch memory back
  }
  if (n == 0) throw Error("no LoRA with id " + std::to_string(id) + " is attached");
  return n;
}

std::vector<int> loraIds(const LinearMap& linears) {
  std::set<int> ids;
  for (const auto& kv : linears)
    for (const auto& f : kv.second->loras) ids.insert(f.id);
  return {ids.begin(), ids.end()};
}

}  // namespace svdq

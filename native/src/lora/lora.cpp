// Attach / rescale / detach LoRA branches on named layers (see svdq/lora.h).
#include "svdq/lora.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <set>
#include <thread>

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
float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    v = m ? NAN : INFINITY;
  } else {
    uint32_t bits = ((e + 112) << 23) | (m << 13);
    std::memcpy(&v, &bits, 4);
  }
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits |= sign;
  std::memcpy(&v, &bits, 4);
  return v;
}

// Element i of a little-endian F32/F16/BF16 buffer (memcpy: the buffer may be unaligned).
inline float load(DType t, const uint8_t* p, int64_t i) {
  if (t == DType::F32) {
    float v;
    std::memcpy(&v, p + 4 * i, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  if (t == DType::BF16) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  return halfToFloat(h);
}

size_t width(DType t, const std::string& what) {
  if (t == DType::F32) return 4;
  if (t == DType::F16 || t == DType::BF16) return 2;
  throw Error(what + ": not a floating dtype (F32, F16, BF16)");
}

[[noreturn]] void nonFinite(const std::string& what, float v, int64_t i) {
  throw Error(what + ": non-finite value " + (std::isnan(v) ? std::string("NaN") : v > 0 ? "Infinity" : "-Infinity") +
              " at element " + std::to_string(i));
}
int attachPatches(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength, bool checkValues);
}  // namespace

LoraPatch assembleLoraPatch(const LoraLayerSource& src, int64_t in, int64_t out, const std::string& file) {
  const int64_t R = src.rank;
  const std::string where = file + ": layer '" + src.layer + "'";
  if (R <= 0) throw Error(where + ": rank 0");
  // The parts must tile A's rows [0, R) in order and stay inside B.
  int64_t next = 0;
  for (const auto& p : src.parts) {
    const std::string dk = file + ": " + p.downKey, uk = file + ": " + p.upKey;
    if (p.rank <= 0) throw Error(dk + ": rank 0");
    if (p.col != next) throw Error(where + ": LoRA parts do not tile the fused rank");
    next += p.rank;
    if (p.rowStart < 0 || p.rows <= 0 || p.rowStart + p.rows > out || (p.swapHalves && p.rows % 2))
      throw Error(uk + ": rows " + std::to_string(p.rowStart) + ".." + std::to_string(p.rowStart + p.rows) +
                  " do not fit layer '" + src.layer + "' with " + std::to_string(out) + " outputs");
    if (p.downBytes != static_cast<size_t>(p.rank * in) * width(p.downType, dk))
      throw Error(dk + ": " + std::to_string(p.downBytes) + " bytes do not hold [" + std::to_string(p.rank) + ", " +
                  std::to_string(in) + "]");
    if (p.upBytes != static_cast<size_t>(p.rows * p.rank) * width(p.upType, uk))
      throw Error(uk + ": " + std::to_string(p.upBytes) + " bytes do not hold [" + std::to_string(p.rows) + ", " +
                  std::to_string(p.rank) + "]");
    if (!std::isfinite(p.scale)) throw Error(dk + ": scale is not finite");
  }
  if (next != R) throw Error(where + ": LoRA parts do not tile the fused rank");

  LoraPatch patch;
  patch.layer = src.layer;
  patch.down.shape = {R, in};
  patch.up.shape = {out, R};
  patch.down.data.resize(static_cast<size_t>(R * in));
  patch.up.data.resize(static_cast<size_t>(out * R));  // zeros off the blocks of a split module
  for (const auto& p : src.parts) {
    float* a = patch.down.ptr() + p.col * in;
    const int64_t na = p.rank * in;
    for (int64_t i = 0; i < na; ++i) {
      const float v = load(p.downType, p.down, i);
      if (!std::isfinite(v)) nonFinite(file + ": " + p.downKey, v, i);
      a[i] = v;
    }
    const int64_t half = p.rows / 2;
    for (int64_t i = 0; i < p.rows; ++i) {
      const int64_t s = p.swapHalves ? (i + half) % p.rows : i;
      float* b = patch.up.ptr() + (p.rowStart + i) * R + p.col;
      for (int64_t j = 0; j < p.rank; ++j) {
        const float v = load(p.upType, p.up, s * p.rank + j);
        if (!std::isfinite(v)) nonFinite(file + ": " + p.upKey, v, s * p.rank + j);
        b[j] = v * p.scale;
      }
    }
  }
  return patch;
}

std::vector<LoraPatch> assembleLoraSources(const LinearMap& linears, const std::vector<LoraLayerSource>& layers,
                                           const std::string& file, int threads) {
  std::vector<LoraPatch> patches(layers.size());
  for (const auto& l : layers) {
    if (!linears.count(l.layer)) throw Error(file + ": layer '" + l.layer + "': the model has no such linear layer");
  }
  // Decoding is memory-bound; a couple of threads hide page-fault latency on fresh buffers.
  std::atomic<size_t> next{0};
  std::exception_ptr firstError;
  std::mutex errMu;
  auto worker = [&]() {
    for (size_t i; (i = next.fetch_add(1)) < layers.size();) {
      try {
        const Linear& l = *linears.at(layers[i].layer);
        patches[i] = assembleLoraPatch(layers[i], l.inFeatures(), l.outFeatures(), file);
      } catch (...) {
        std::lock_guard<std::mutex> g(errMu);
        if (!firstError) firstError = std::current_exception();
        next = layers.size();
      }
    }
  };
  const int n = std::max(1, std::min<int>(threads, static_cast<int>(layers.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (firstError) std::rethrow_exception(firstError);
  return patches;
}

int attachLora(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength, bool checkValues) {
  return attachPatches(linears, id, std::move(patches), strength, checkValues);
}

namespace {
int attachPatches(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength, bool checkValues) {
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
    if (checkValues) {
      checkFinite(p.down, "LoRA layer '" + p.layer + "' down");
      checkFinite(p.up, "LoRA layer '" + p.layer + "' up");
    }
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
}  // namespace

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

void orderLoras(LinearMap& linears, const std::vector<int>& ids) {
  auto rank = [&](int id) {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == id) return i;
    return ids.size();
  };
  for (auto& kv : linears) {
    auto& v = kv.second->loras;
    std::stable_sort(v.begin(), v.end(), [&](const LoraFactors& a, const LoraFactors& b) { return rank(a.id) < rank(b.id); });
  }
}

std::vector<int> loraIds(const LinearMap& linears) {
  std::set<int> ids;
  for (const auto& kv : linears)
    for (const auto& f : kv.second->loras) ids.insert(f.id);
  return {ids.begin(), ids.end()};
}

}  // namespace svdq

// Reads the tensors of one stored layer ("<layer>.<name>") with checks whose errors name the file and
// the tensor: presence, exact shape, finite values. Shared by our checkpoint reader and Nunchaku's.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "svdq/safetensors.h"

namespace svdq {

struct LayerReader {
  const SafetensorsFile& f;
  const std::string& layer;
  std::string key(const char* s) const { return layer + "." + s; }
  bool has(const char* s) const { return f.has(key(s)); }
  [[noreturn]] void fail(const std::string& k, const std::string& why) const {
    throw Error(f.path() + ": " + k + ": " + why);
  }
  const TensorInfo& need(const char* s) const {
    const std::string k = key(s);
    if (!f.has(k)) fail(k, "missing (quantized layer '" + layer + "' is incomplete)");
    return f.info(k);
  }
  const TensorInfo& need(const char* s, const std::vector<int64_t>& shape) const {
    const TensorInfo& ti = need(s);
    if (ti.shape != shape) fail(key(s), "shape " + shapeString(ti.shape) + ", expected " + shapeString(shape));
    return ti;
  }
  std::vector<float> floats(const char* s, const std::vector<int64_t>& shape) const {
    need(s, shape);
    Tensor t = f.toF32(key(s));
    for (float v : t.data)
      if (!std::isfinite(v)) fail(key(s), "holds a non-finite value");
    return std::move(t.data);
  }
};

}  // namespace svdq

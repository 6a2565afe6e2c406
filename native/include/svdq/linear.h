// The one interface every linear layer of the model implements (Y = X W^T + b), so the model graph
// does not care whether a layer is dense 16/32-bit, SVDQuant W4A4, or W4A16, and LoRAs can be attached.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "svdq/tensor.h"

namespace svdq {

// A low-rank addition y += scale * (x A^T) B^T, acting on the raw layer input x.
struct LoraFactors {
  int id = 0;
  Tensor down;   // A: [r, in]
  Tensor up;     // B: [out, r]
  float scale = 1.f;  // strength * alpha / r, already combined
};

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t inFeatures() const = 0;
  virtual int64_t outFeatures() const = 0;
  // x: [M, in] row-major, y: [M, out] row-major (overwritten). Must be thread-safe for concurrent calls.
  virtual void forward(const float* x, int64_t M, float* y) const = 0;
  // What this layer is, for metadata and reports: "dense-bf16", "svdq-int4-r32", "w4a16", ...
  virtual std::string kind() const = 0;
  // Bytes of weights held in memory.
  virtual size_t weightBytes() const = 0;

  // LoRA branches, applied after forward() on the raw input (quantized layers may override to
  // fold them into their own low-rank branch).
  std::vector<LoraFactors> loras;
};

}  // namespace svdq

namespace svdq {
// Adds every LoRA attached to `layer` to y: y += scale * (x A^T) B^T on the raw input x [M, in].
void applyLoras(const Linear& layer, const float* x, int64_t M, float* y);
}  // namespace svdq

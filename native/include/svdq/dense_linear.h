// A 16/32-bit linear layer: weights kept in the checkpoint's precision (F32 or BF16) and
// expanded to F32 a block of rows at a time inside forward().
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "svdq/linear.h"

namespace svdq {

class DenseLinear : public Linear {
 public:
  // weight [out, in] as F32 or BF16 raw values (bf16 holds the upper halves of F32 bit patterns).
  DenseLinear(int64_t in, int64_t out, std::vector<float> weightF32, std::optional<Tensor> bias);
  DenseLinear(int64_t in, int64_t out, std::vector<uint16_t> weightBf16, std::optional<Tensor> bias);

  int64_t inFeatures() const override { return in_; }
  int64_t outFeatures() const override { return out_; }
  void forward(const float* x, int64_t M, float* y) const override;
  std::string kind() const override { return bf16_.empty() ? "dense-f32" : "dense-bf16"; }
  size_t weightBytes() const override;

  Tensor weightF32() const;  // [out, in]
  const Tensor* bias() const { return bias_ ? &*bias_ : nullptr; }

 private:
  int64_t in_, out_;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
  std::optional<Tensor> bias_;
};

}  // namespace svdq

// A 16/32-bit linear layer: weights kept in the checkpoint's precision (F32 or BF16) and
// expanded to F32 a block of rows at a time inside forward(). BF16 weights stored as they are in the
// checkpoint are read in place from its memory map: they live in the page cache, not in the process's
// own memory, so a model larger than RAM still loads and the kernel pages weights in as needed.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "svdq/linear.h"
#include "svdq/safetensors.h"

namespace svdq {

class DenseLinear : public Linear {
 public:
  // weight [out, in] as F32 or BF16 raw values (bf16 holds the upper halves of F32 bit patterns).
  DenseLinear(int64_t in, int64_t out, std::vector<float> weightF32, std::optional<Tensor> bias);
  DenseLinear(int64_t in, int64_t out, std::vector<uint16_t> weightBf16, std::optional<Tensor> bias);
  // BF16 weight [out, in] borrowed from `file`'s mapping, which the layer keeps open.
  DenseLinear(int64_t in, int64_t out, std::shared_ptr<const SafetensorsFile> file, const uint16_t* weightBf16,
              std::optional<Tensor> bias);

  int64_t inFeatures() const override { return in_; }
  int64_t outFeatures() const override { return out_; }
  void forward(const float* x, int64_t M, float* y) const override;
  std::string kind() const override { return bf16() ? "dense-bf16" : "dense-f32"; }
  size_t weightBytes() const override;

  Tensor weightF32() const;  // [out, in]
  const Tensor* bias() const { return bias_ ? &*bias_ : nullptr; }
  // Mapped weights only: drop their pages from this process after each forward (FluxLoadOptions).
  void releasePagesAfterUse(bool on) { releasePages_ = on; }

 private:
  const uint16_t* bf16() const { return mapped_ ? mapped_ : (bf16_.empty() ? nullptr : bf16_.data()); }

  int64_t in_, out_;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
  std::shared_ptr<const SafetensorsFile> file_;  // keeps mapped_ valid
  const uint16_t* mapped_ = nullptr;
  bool releasePages_ = false;
  std::optional<Tensor> bias_;
};

}  // namespace svdq

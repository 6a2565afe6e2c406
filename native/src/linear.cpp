// Dense linear layers and the LoRA branch every layer applies.
#include <algorithm>

#include "svdq/dense_linear.h"
#include "svdq/ops.h"

namespace svdq {

void applyLoras(const Linear& layer, const float* x, int64_t M, float* y) {
  const int64_t in = layer.inFeatures(), out = layer.outFeatures();
  for (const LoraFactors& f : layer.loras) {
    if (f.scale == 0.f) continue;  // strength 0 leaves the output bit for bit as without the LoRA
    const int64_t r = f.down.size(0);
    std::vector<float> t(static_cast<size_t>(M * r));
    cpu::linear(x, M, in, f.down.ptr(), r, nullptr, t.data());
    cpu::gemmNtAccumulate(t.data(), M, r, f.up.ptr(), out, f.scale, y);
  }
}

DenseLinear::DenseLinear(int64_t in, int64_t out, std::vector<float> w, std::optional<Tensor> bias)
    : in_(in), out_(out), f32_(std::move(w)), bias_(std::move(bias)) {}

DenseLinear::DenseLinear(int64_t in, int64_t out, std::vector<uint16_t> w, std::optional<Tensor> bias)
    : in_(in), out_(out), bf16_(std::move(w)), bias_(std::move(bias)) {}

DenseLinear::DenseLinear(int64_t in, int64_t out, std::shared_ptr<const SafetensorsFile> file, const uint16_t* w,
                         std::optional<Tensor> bias)
    : in_(in), out_(out), file_(std::move(file)), mapped_(w), bias_(std::move(bias)) {}

size_t DenseLinear::weightBytes() const {
  return f32_.size() * 4 + (bf16() ? static_cast<size_t>(in_ * out_) * 2 : 0) + (bias_ ? bias_->data.size() * 4 : 0);
}

Tensor DenseLinear::weightF32() const {
  Tensor w({out_, in_});
  if (!f32_.empty()) std::copy(f32_.begin(), f32_.end(), w.data.begin());
  else toF32(DType::BF16, bf16(), w.ptr(), w.data.size());
  if (mapped_ && releasePages_) releasePages(mapped_, w.data.size() * 2);
  return w;
}

void DenseLinear::forward(const float* x, int64_t M, float* y) const {
  const float* b = bias_ ? bias_->ptr() : nullptr;
  if (!f32_.empty()) {
    cpu::linear(x, M, in_, f32_.data(), out_, b, y);
  } else {
    // Expand BF16 weights a block of output rows at a time: memory stays 2 bytes per weight.
    const int64_t rows = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(in_, 1));
    std::vector<float> block(static_cast<size_t>(std::min(rows, out_) * in_));
    for (int64_t n0 = 0; n0 < out_; n0 += rows) {
      const int64_t n = std::min(rows, out_ - n0);
      toF32(DType::BF16, bf16() + n0 * in_, block.data(), static_cast<size_t>(n * in_));
      cpu::linear(x, M, in_, block.data(), n, b ? b + n0 : nullptr, y + n0, out_);
    }
    if (mapped_ && releasePages_) releasePages(mapped_, static_cast<size_t>(in_ * out_) * 2);
  }
  applyLoras(*this, x, M, y);
}

}  // namespace svdq

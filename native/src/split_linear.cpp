// A linear layer made of sub-layers stacked along outputs or inputs (see svdq/split_linear.h).
#include "svdq/split_linear.h"

#include <algorithm>

#include "svdq/tensor.h"

namespace svdq {

SplitLinear::SplitLinear(Stack stack, std::vector<std::unique_ptr<Linear>> parts)
    : stack_(stack), parts_(std::move(parts)) {
  if (parts_.empty()) throw Error("SplitLinear: no parts");
  const bool outputs = stack_ == Stack::Outputs;
  in_ = parts_[0]->inFeatures(), out_ = parts_[0]->outFeatures();
  for (size_t i = 1; i < parts_.size(); ++i) {
    const Linear& p = *parts_[i];
    const bool agree = outputs ? p.inFeatures() == in_ : p.outFeatures() == out_;
    if (!agree)
      throw Error(std::string("SplitLinear: part ") + std::to_string(i) + " is [in " + std::to_string(p.inFeatures()) +
                  ", out " + std::to_string(p.outFeatures()) + "], part 0 is [in " + std::to_string(in_) + ", out " +
                  std::to_string(parts_[0]->outFeatures()) + "]: parts stacked along " + (outputs ? "outputs" : "inputs") +
                  " must share their " + (outputs ? "input" : "output") + " features");
    if (outputs) out_ += p.outFeatures();
    else in_ += p.inFeatures();
  }
}

std::string SplitLinear::kind() const {
  std::string k;
  for (const auto& p : parts_) k += (k.empty() ? "" : "+") + p->kind();
  return k;
}

size_t SplitLinear::weightBytes() const {
  size_t n = 0;
  for (const auto& p : parts_) n += p->weightBytes();
  return n;
}

void SplitLinear::forward(const float* x, int64_t M, float* y) const {
  if (stack_ == Stack::Outputs) {
    int64_t col = 0;
    for (const auto& p : parts_) {
      const int64_t n = p->outFeatures();
      std::vector<float> yp(static_cast<size_t>(M * n));
      p->forward(x, M, yp.data());
      for (int64_t m = 0; m < M; ++m) std::copy_n(yp.data() + m * n, n, y + m * out_ + col);
      col += n;
    }
  } else {
    std::fill(y, y + M * out_, 0.f);
    std::vector<float> yp(static_cast<size_t>(M * out_));
    int64_t col = 0;
    for (const auto& p : parts_) {
      const int64_t k = p->inFeatures();
      std::vector<float> xp(static_cast<size_t>(M * k));
      for (int64_t m = 0; m < M; ++m) std::copy_n(x + m * in_ + col, k, xp.data() + m * k);
      p->forward(xp.data(), M, yp.data());
      for (size_t i = 0; i < yp.size(); ++i) y[i] += yp[i];
      col += k;
    }
  }
  applyLoras(*this, x, M, y);
}

}  // namespace svdq

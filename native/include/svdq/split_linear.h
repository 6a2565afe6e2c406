// A linear layer computed by several sub-layers, each with its own quantization. Either every part
// sees the whole input and writes its own block of outputs (Stack::Outputs: y = [y0, y1, ...]), or
// every part sees its own block of input columns and the parts' outputs are summed
// (Stack::Inputs: x = [x0, x1, ...], y = y0 + y1 + ...).
//
// Why: Nunchaku stores a FLUX single block's linear1 as qkv_proj + mlp_fc1 and its linear2 as
// out_proj + mlp_fc2, each with its own smoothing and activation quantization (mlp_fc2 quantizes
// shifted unsigned GELU outputs, out_proj signed attention outputs), which one W4A4 layer cannot
// express. The model graph keeps seeing one BFL layer; LoRAs attach to the whole layer.
#pragma once
#include <memory>
#include <vector>

#include "svdq/linear.h"

namespace svdq {

class SplitLinear : public Linear {
 public:
  enum class Stack { Outputs, Inputs };
  // Throws svdq::Error when the parts do not agree (Outputs: same in; Inputs: same out) or are empty.
  SplitLinear(Stack stack, std::vector<std::unique_ptr<Linear>> parts);

  int64_t inFeatures() const override { return in_; }
  int64_t outFeatures() const override { return out_; }
  void forward(const float* x, int64_t M, float* y) const override;
  std::string kind() const override;  // the parts' kinds joined by '+'
  size_t weightBytes() const override;

  Stack stack() const { return stack_; }
  const std::vector<std::unique_ptr<Linear>>& parts() const { return parts_; }

 private:
  Stack stack_;
  std::vector<std::unique_ptr<Linear>> parts_;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace svdq

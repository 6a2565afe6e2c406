// SVDQuant: quantized linear layers (W4A4 INT4/NVFP4 with a 16-bit low-rank branch, W4A16) and
// the quantizer that produces them. The CPU arithmetic here is the reference for the CUDA kernels.
//
// Checkpoint layout of one quantized layer (BFL layer names, e.g. "double_blocks.0.img_attn.qkv";
// semantics follow Nunchaku's published INT4 files, orders are plain row-major, not MMA tiles):
//   W4A4 (K = in, Kp = K rounded up to the group, N = out, r = rank):
//     <layer>.qweight    U8  [N, Kp/2]   residual, two's complement nibbles, low nibble = even k
//     <layer>.wscales    BF16 [Kp/64, N] (int4)  |  F8_E4M3 [Kp/16, N] (nvfp4)
//     <layer>.wtscale    F32 [1]         nvfp4 only: the weight's tensor scale
//     <layer>.wcscales   BF16/F32 [N]    nvfp4, optional: per-output-channel weight scale (Nunchaku's)
//     <layer>.act_tensor_scale F32 [1]   nvfp4, optional: a fixed activation tensor scale instead of the
//                                        per-token amax / (6 * 448) (Nunchaku's files: 1, plain E4M3 group scales)
//     <layer>.smooth     BF16 [K]        the kernel quantizes x / smooth (x + act_shift first if present)
//     <layer>.act_shift  F32 [1]         optional: activations quantized unsigned after adding the shift
//                                        (GELU outputs); the shift is already compensated in bias
//     <layer>.lora_down  BF16 [r, K]     acts on the RAW input (= L2 / smooth), so LoRA A's append as is
//     <layer>.lora_up    BF16 [N, r]
//     <layer>.bias       BF16 [N]        optional (present whenever act_shift is)
//   W4A16 (adaLN modulation; Nunchaku's AWQ semantics w = q * wscales + wzeros, q unsigned 0..15):
//     <layer>.qweight U8 [N, K/2], <layer>.wscales BF16 [K/64, N], <layer>.wzeros BF16 [K/64, N], <layer>.bias
//   Split (svdq/split_linear.h; Nunchaku's single-block layers): <layer>.out_part.<i>.* (parts stacked
//     along outputs) or <layer>.in_part.<i>.* (along inputs, outputs summed), i = 0, 1, ..., each part a
//     W4A4 or W4A16 layer as above.
// Differences from Nunchaku: no tile permutations, lora_down is [r, K] (Nunchaku [K, r]), no
// smooth_orig, NVFP4 activations use a per-token F32 scale (amax / (6 * 448)) under the E4M3 group scales.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "svdq/linear.h"
#include "svdq/safetensors.h"

namespace svdq {

enum class QuantPrecision { Int4, Nvfp4 };

// Everything a W4A4 layer holds, unpacked for the CPU (scales as F32 values; they are BF16/E4M3-exact).
struct W4A4Weights {
  int64_t in = 0, out = 0, inPadded = 0;
  QuantPrecision precision = QuantPrecision::Int4;
  std::vector<uint8_t> qweight;    // packed [out, inPadded/2]
  std::vector<float> wscales;      // int4: [out, inPadded/64]
  std::vector<uint8_t> wscales8;   // nvfp4: E4M3 [out, inPadded/16]
  float wtscale = 1.f;             // nvfp4 tensor scale
  std::vector<float> wcscales;     // nvfp4, optional: per-output-channel scale [out] (Nunchaku's)
  float actTensorScale = 0.f;      // nvfp4: > 0 a fixed activation tensor scale (Nunchaku: 1); 0 per token
  std::vector<float> smooth;       // [in]
  Tensor loraDown;                 // [r, in], raw input (may be empty: r = 0)
  Tensor loraUp;                   // [out, r]
  std::vector<float> bias;         // [out] or empty
  float actShift = 0.f;            // > 0: unsigned activations after the shift
  int64_t rank() const { return loraDown.shape.empty() ? 0 : loraDown.shape[0]; }
};

// The W4A4 layer: y = Q(x̂)·Q(R)^T (group-wise) + bias + (x·lora_down^T)·lora_up^T + LoRAs, x̂ = (x + shift) / smooth.
class W4A4Linear : public Linear {
 public:
  explicit W4A4Linear(W4A4Weights w);
  int64_t inFeatures() const override { return w_.in; }
  int64_t outFeatures() const override { return w_.out; }
  void forward(const float* x, int64_t M, float* y) const override;
  std::string kind() const override;
  size_t weightBytes() const override;
  const W4A4Weights& weights() const { return w_; }

 private:
  W4A4Weights w_;
};

struct W4A16Weights {
  int64_t in = 0, out = 0;
  std::vector<uint8_t> qweight;  // packed unsigned [out, in/2]
  std::vector<float> wscales;    // [out, in/64]
  std::vector<float> wzeros;     // [out, in/64]
  std::vector<float> bias;       // [out] or empty
};

// 4-bit weights (asymmetric, per group of 64), 16-bit activations: y = x·deq(W)^T + bias + LoRAs.
class W4A16Linear : public Linear {
 public:
  explicit W4A16Linear(W4A16Weights w);
  int64_t inFeatures() const override { return w_.in; }
  int64_t outFeatures() const override { return w_.out; }
  void forward(const float* x, int64_t M, float* y) const override;
  std::string kind() const override { return "w4a16-int4-g64"; }
  size_t weightBytes() const override;
  const W4A16Weights& weights() const { return w_; }
  Tensor dequantized() const;  // [out, in]

 private:
  W4A16Weights w_;
};

// True when `layer` (a BFL layer name such as "double_blocks.0.img_attn.qkv") is stored quantized.
bool hasQuantizedLinear(const SafetensorsFile& file, const std::string& layer);
// Output features of a quantized layer as stored (its configuration before it is built).
int64_t quantizedLinearOut(const SafetensorsFile& file, const std::string& layer);
// Builds the quantized layer from its tensors; throws svdq::Error naming the file and key.
std::unique_ptr<Linear> loadQuantizedLinear(const SafetensorsFile& file, const std::string& layer);
// Writes a layer in the layout above.
void writeW4A4(SafetensorsWriter& out, const std::string& layer, const W4A4Weights& w);
void writeW4A16(SafetensorsWriter& out, const std::string& layer, const W4A16Weights& w);
// Writes a W4A4, W4A16 or split layer of them; throws svdq::Error for any other kind.
void writeQuantizedLinear(SafetensorsWriter& out, const std::string& layer, const Linear& l);

}  // namespace svdq

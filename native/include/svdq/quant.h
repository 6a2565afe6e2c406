// SVDQuant: quantized linear layers (W4A4 INT4/NVFP4 with a 16-bit low-rank branch, W4A16) and
// the quantizer that produces them. The CPU arithmetic here is the reference for the CUDA kernels.
#pragma once
#include <memory>
#include <string>

#include "svdq/linear.h"
#include "svdq/safetensors.h"

namespace svdq {

// True when `layer` (a BFL layer name such as "double_blocks.0.img_attn.qkv") is stored quantized.
bool hasQuantizedLinear(const SafetensorsFile& file, const std::string& layer);
// Builds the quantized layer from its tensors; throws svdq::Error naming the file and key.
std::unique_ptr<Linear> loadQuantizedLinear(const SafetensorsFile& file, const std::string& layer);

}  // namespace svdq

// Nunchaku's published SVDQuant FLUX checkpoints ("svdq-int4_r32-flux.1-dev.safetensors": diffusers
// block names, fused qkv_proj, MMA-packed tensors, AWQ adaLN layers). Each BFL layer the model asks
// for is converted from Nunchaku's tensors into our in-memory quantized layers, so the CPU arithmetic
// is what Nunchaku's kernels compute. CheckpointKeys (Naming::Nunchaku) maps the 16-bit tensors;
// layouts and semantics: ../shared/NUNCHAKU-FORMAT.md and docs/QUANT.md.
#pragma once
#include <memory>
#include <string>

#include "svdq/linear.h"
#include "svdq/safetensors.h"

namespace svdq::nunchaku {

// Output features of a BFL layer as stored (for reading the configuration); -1 for the layers
// Nunchaku keeps 16-bit (embedders, final layer).
int64_t layerOut(const SafetensorsFile& f, const std::string& bflLayer);

// The BFL layer [in, out] built from Nunchaku's tensors; nullptr for the layers Nunchaku keeps 16-bit
// (they load by their diffusers names).
// Throws svdq::Error naming the file and the tensor on a missing, misshapen or mistyped tensor.
std::unique_ptr<Linear> loadLinear(const SafetensorsFile& f, const std::string& bflLayer, int64_t in, int64_t out);

}  // namespace svdq::nunchaku

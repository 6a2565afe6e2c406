// LoRAs on a loaded model: attach, rescale and detach low-rank branches on named linears without
// reloading or re-quantizing anything. Each layer keeps its LoRAs in Linear::loras, which its
// forward applies on the raw input (quantized layers: appended to the SVDQuant low-rank branch,
// whose down-projection also acts on the raw input, so A is used unchanged).
//
// Not thread-safe against forwards: the caller holds the engine's exclusive lock while calling these.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "svdq/linear.h"

namespace svdq {

using LinearMap = std::map<std::string, std::unique_ptr<Linear>>;

// One layer's LoRA. up (B) already carries the file's alpha/rank, so LoraFactors::scale = strength.
struct LoraPatch {
  std::string layer;
  Tensor down;  // A: [r, in]
  Tensor up;    // B: [out, r]
};

// Validates every patch (layer exists, A is [r, in] and B is [out, r] for that layer, r > 0, finite
// values, no layer twice, id unused) before touching any layer: on error nothing is attached and the
// message names the layer and the shapes. Returns the number of layers patched.
int attachLora(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength);
// Sets the strength of every branch of LoRA `id`; returns how many layers carry it (throws if none).
int setLoraStrength(LinearMap& linears, int id, float strength);
// Removes LoRA `id` from every layer, leaving the others in their order; returns layers touched (throws if none).
int removeLora(LinearMap& linears, int id);
// Ids attached anywhere in the model, ascending.
std::vector<int> loraIds(const LinearMap& linears);

}  // namespace svdq

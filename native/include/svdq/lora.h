// LoRAs on a loaded model: attach, rescale and detach low-rank branches on named linears without
// reloading or re-quantizing anything. Each layer keeps its LoRAs in Linear::loras, which its
// forward applies on the raw input (quantized layers: appended to the SVDQuant low-rank branch,
// whose down-projection also acts on the raw input, so A is used unchanged).
//
// attach/set/remove are not thread-safe against forwards: the caller holds the engine's exclusive lock.
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

// One source module of a LoRA file as stored (factors not yet decoded), and where it lands in the
// fused layer: A_i fills rows [col, col+rank) of A; scale·B_i fills rows [rowStart, rowStart+rows)
// and columns [col, col+rank) of B (halves of its rows swapped when swapHalves). The byte pointers
// are borrowed for the duration of the call.
struct LoraSourcePart {
  std::string downKey, upKey;  // for error messages
  DType downType = DType::F32, upType = DType::F32;
  const uint8_t* down = nullptr;
  const uint8_t* up = nullptr;
  size_t downBytes = 0, upBytes = 0;
  int64_t rank = 0, rowStart = 0, rows = 0, col = 0;
  bool swapHalves = false;
  float scale = 1.f;
};
struct LoraLayerSource {
  std::string layer;
  int64_t rank = 0;  // fused rank R = sum of the parts' ranks
  std::vector<LoraSourcePart> parts;
};

// Decodes (F32/F16/BF16) and fuses one layer's parts into a patch in a single pass over the data.
// Throws svdq::Error "<file>: <key>: ..." on a non-finite value or a layout that does not tile.
LoraPatch assembleLoraPatch(const LoraLayerSource& src, int64_t in, int64_t out, const std::string& file);
// Assembles every layer on up to `threads` threads. Reads only the layers' shapes, so it may run
// while forwards are in flight; attach the result with attachLora(..., checkValues = false).
std::vector<LoraPatch> assembleLoraSources(const LinearMap& linears, const std::vector<LoraLayerSource>& layers,
                                           const std::string& file, int threads);

// Validates every patch (layer exists, A is [r, in] and B is [out, r] for that layer, r > 0, finite
// values, no layer twice, id unused) before touching any layer: on error nothing is attached and the
// message names the layer and the shapes. Returns the number of layers patched.
// checkValues = false skips the NaN/Inf scan for patches assembleLoraPatch already checked.
int attachLora(LinearMap& linears, int id, std::vector<LoraPatch> patches, float strength, bool checkValues = true);
// Sets the strength of every branch of LoRA `id`; returns how many layers carry it (throws if none).
int setLoraStrength(LinearMap& linears, int id, float strength);
// Removes LoRA `id` from every layer, leaving the others in their order; returns layers touched (throws if none).
int removeLora(LinearMap& linears, int id);
// Puts each layer's LoRAs in the order of `ids` (ids not listed keep their place after the listed
// ones), so the same stack gives bit-identical outputs whatever order it was built in.
void orderLoras(LinearMap& linears, const std::vector<int>& ids);
// Ids attached anywhere in the model, ascending.
std::vector<int> loraIds(const LinearMap& linears);

}  // namespace svdq

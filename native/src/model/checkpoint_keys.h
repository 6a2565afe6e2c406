// Maps the BFL tensor names the model uses onto whatever naming a checkpoint has: BFL, BFL with
// ComfyUI's "model.diffusion_model." prefix, diffusers (where some BFL tensors are several
// diffusers tensors concatenated along the output dim, and norm_out's halves are swapped), or
// Nunchaku's (diffusers names outside the blocks; its quantized block layers are nunchaku_format's job).
#pragma once
#include <string>
#include <vector>

#include "svdq/safetensors.h"

namespace svdq {

class CheckpointKeys {
 public:
  explicit CheckpointKeys(const SafetensorsFile& file);

  enum class Naming { Bfl, Comfy, Diffusers, Nunchaku };
  Naming naming() const { return naming_; }
  const SafetensorsFile& file() const { return file_; }

  // One BFL tensor as the checkpoint stores it: parts concatenated along dim 0.
  struct Part {
    std::string key;
    bool swapHalves = false;  // diffusers norm_out: (scale, shift) vs BFL (shift, scale)
  };
  std::vector<Part> parts(const std::string& bflKey) const;
  bool has(const std::string& bflKey) const;
  std::vector<int64_t> shape(const std::string& bflKey) const;     // concatenated shape
  DType dtype(const std::string& bflKey) const;                    // F32 if the parts disagree
  Tensor loadF32(const std::string& bflKey) const;
  std::vector<uint16_t> loadBf16(const std::string& bflKey) const;  // requires dtype() == BF16
  // The tensor's BF16 values in place in the file's mapping, when it is stored as one BF16 tensor
  // (no concatenation, no half swap) at a 2-byte aligned address; otherwise nullptr.
  const uint16_t* mappedBf16(const std::string& bflKey) const;
  // Throws "<file>: missing tensor '<key>' (BFL '<bflKey>')".
  [[noreturn]] void missing(const std::string& bflKey) const;
  // Number of blocks N such that `<prefix>N.<suffix>` exists, in BFL names.
  int64_t countBlocks(const std::string& prefix, const std::string& suffix) const;

 private:
  std::vector<Part> diffusersParts(const std::string& bflKey) const;
  const SafetensorsFile& file_;
  Naming naming_ = Naming::Bfl;
};

}  // namespace svdq

// The FLUX transformer (double- and single-stream blocks, RoPE, adaLN) on the CPU reference backend,
// with ComfyUI's forward convention. Configuration is read from the checkpoint's shapes; BFL,
// ComfyUI-prefixed and diffusers key names load. Every linear is an svdq::Linear under its BFL name.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "svdq/linear.h"
#include "svdq/safetensors.h"

namespace svdq {

struct FluxConfig {
  int64_t inChannels = 0;   // latent channels C (img_in sees 4C after 2x2 patchify)
  int64_t outChannels = 0;
  int64_t hidden = 0;
  int64_t numHeads = 0;
  int64_t headDim = 0;      // from the QK-norm scale's length
  int64_t depthDouble = 0;
  int64_t depthSingle = 0;
  int64_t contextDim = 0;
  int64_t vecDim = 0;
  int64_t mlpHidden = 0;
  bool qkvBias = true;
  bool guidanceEmbed = false;
  std::vector<int> axesDim;  // RoPE split of headDim over (index, row, column)
  float theta = 10000.f;
  int64_t patch = 2;
};

// FLUX's [16, 56, 56] for head dim 128; otherwise the spatial axes get round(56 h / 128) rounded
// to even and the first axis the rest. Throws when no such split exists.
std::vector<int> defaultRopeAxes(int64_t headDim);

// Reads the configuration from a file's shapes (any supported key format) and checks that every
// tensor the model needs is present with the shape the configuration implies.
FluxConfig readFluxConfig(const SafetensorsFile& file, const std::optional<std::vector<int>>& axes = std::nullopt);

struct FluxLoadOptions {
  std::optional<std::vector<int>> axesDim;
  size_t memoryLimitBytes = 0;  // 0 = no limit; a forward that would exceed it fails with "out of memory"
  int threads = 0;              // > 0: worker threads for the CPU kernels (process-wide), else all cores
  // Give each mapped weight's pages back after the layer ran (they stay in the page cache): resident
  // memory stays about one layer however large the model. Costs page faults on every forward, so
  // only for one-off passes over models larger than RAM (the quantizer's calibration).
  bool releaseWeightPages = false;
};

struct FluxInputs {
  Tensor x;                  // [B, C, H, W]
  Tensor timestep;           // [B], 0..1 (ComfyUI's sigma)
  Tensor context;            // [B, T, contextDim]
  Tensor y;                  // [B, vecDim]
  std::optional<Tensor> guidance;  // [B]
  // Reference latents (FLUX Kontext), each [B or 1, C, h, w]: patchified and appended to the image
  // tokens with ComfyUI's position ids; the output covers the image tokens only.
  std::vector<Tensor> refLatents;
  std::string refMethod = "offset";  // ComfyUI's ref_latents_method: offset | index | uxo
  // Additive attention bias over the joint sequence (text, image, reference tokens) of length L:
  // [L, L], [B or 1, L, L] or [B or 1, 1 or heads, L, L] (ComfyUI's attention_mask convention).
  std::optional<Tensor> attentionMask;
};

// Position ids (index, row, column) of a [h, w]-latent's tokens the way ComfyUI's Flux.process_img
// makes them; offsets are in latent pixels.
std::vector<float> imageIds(int64_t h, int64_t w, int64_t patch, float index, int64_t hOffset, int64_t wOffset);

struct ForwardHooks {
  // Sees the input of every linear (the quantizer calibrates with it): layer name, x [M, K].
  std::function<void(const std::string& layer, const float* x, int64_t M, int64_t K)> onLinearInput;
  const std::atomic<int>* cancel = nullptr;  // non-zero: stop at the next block with Error("cancelled")
};

class FluxModel {
 public:
  static std::unique_ptr<FluxModel> load(const std::string& path, const FluxLoadOptions& options = {});

  const FluxConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Checks the inputs (names, dtypes already F32, shapes) and runs the model: returns [B, C, H, W].
  Tensor forward(const FluxInputs& in, const ForwardHooks* hooks = nullptr) const;
  // Activation bytes a forward of this size needs (what the memory limit is compared with).
  size_t forwardBytes(int64_t batch, int64_t imageTokens, int64_t textTokens) const;

  std::map<std::string, std::unique_ptr<Linear>> linears;  // BFL layer names without ".weight"
  std::vector<std::string> linearNames() const;            // in execution order
  Linear& linear(const std::string& name) const;
  size_t weightBytes() const;
  size_t memoryLimitBytes = 0;
  const std::map<std::string, Tensor>& norms() const { return norms_; }  // QK-norm scales, BFL names

 private:
  FluxConfig config_;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Tensor> norms_;  // QK-norm scales under their BFL names
};

// Writes a loaded model (no LoRAs attached) as our checkpoint: BFL names, quantized layers in
// svdq/quant.h's layout, 16-bit tensors BF16 where that is exact, else F32.
void saveFluxCheckpoint(const FluxModel& model, const std::string& path, bool overwrite,
                        const std::map<std::string, std::string>& metadata);

// `svdq convert --from nunchaku`: Nunchaku's published checkpoint (svdq-int4_r32-*.safetensors) as ours.
// Throws svdq::Error when `input` is not a Nunchaku checkpoint or does not convert.
void convertNunchakuCheckpoint(const std::string& input, const std::string& output, bool overwrite);

}  // namespace svdq

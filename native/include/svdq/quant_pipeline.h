// Quantizing a whole FLUX checkpoint: calibrate on the 16-bit model, then quantize layer by layer
// from the memory-mapped input and stream the result into an atomically written safetensors file.
#pragma once
#include <atomic>
#include <functional>
#include <string>

#include "svdq/flux.h"
#include "svdq/quant_layer.h"

namespace svdq {

struct PipelineOptions {
  std::string input, output;
  std::string calib;          // safetensors of {x, timestep, context, y, guidance}; empty: random inputs
  bool force = false;         // overwrite an existing output
  std::string method = "svdquant";  // svdquant | smoothquant | lowrank | naive | w4a16
  LayerQuantOptions layer;
  bool adaln16 = false;       // keep adaLN modulation layers 16-bit instead of W4A16
  bool unsignedGelu = true;   // try shifted unsigned activations on GELU-fed layers (MLP out)
  int calibRows = 256;        // rows of input kept per layer
  int randomCalibSets = 2;    // random input sets when no calibration file is given
  int calibBatch = 0;         // most sets per calibration forward; 0: as many of one shape as 2 GiB of activations allow
  std::string toolVersion = "0.1.0";
  const std::atomic<int>* cancel = nullptr;  // non-zero: stop between layers, no output left behind
};

using PipelineProgress = std::function<void(int64_t done, int64_t total, const std::string& stage)>;

// Returns a JSON report (per layer kind, error, smoothing; totals). Throws svdq::Error on bad input.
std::string quantizeCheckpoint(const PipelineOptions& opt, const PipelineProgress& progress);

// Input sets {x, timestep, context, y[, guidance]} from a safetensors file (one set per batch element;
// shapes checked against the model, errors name the file and tensor), or `randomSets` random ones
// (latents 16x16, 32 text tokens) drawn with `seed` when path is empty. *source describes which.
std::vector<FluxInputs> loadInputSets(const std::string& path, const FluxConfig& cfg, int randomSets, uint64_t seed,
                                      std::string* source);

// Whole-model output error of each candidate checkpoint against the reference on the same inputs:
// ||out_c - out_ref|| / ||out_ref|| over all sets. Candidates are loaded one at a time.
std::vector<double> compareModels(const std::string& reference, const std::vector<std::string>& candidates,
                                  const std::string& inputs, int randomSets, uint64_t seed);

}  // namespace svdq

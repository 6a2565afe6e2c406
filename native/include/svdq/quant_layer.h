// Quantizing one linear layer: smoothing search, low-rank branch with refinement (plain SVD, CorDA
// or whitened), 4-bit residual (round to nearest, or GPTQ); and the W4A16 weight-only quantizer for
// adaLN modulation layers.
#pragma once
#include <string>
#include <vector>

#include "svdq/quant.h"

namespace svdq {

// What calibration recorded for one layer's input.
struct LayerCalib {
  std::vector<float> absmax;  // [K] per-input-channel max |x|
  Tensor sample;              // [S, K] a sample of input rows (S >= 1)
};

enum class QuantMethod { SVDQuant, SmoothQuant, LowRank, Naive };
enum class LowRankMode { Svd, Corda, Whiten };

// Why method w4a16 refuses gptq (its asymmetric weight-only grid has no GPTQ path), for every front end.
inline constexpr const char* kGptqNotW4A16 =
    "gptq quantizes the W4A4 residual; method w4a16 (weight-only, asymmetric INT4) has no GPTQ path";

struct LayerQuantOptions {
  QuantPrecision precision = QuantPrecision::Int4;
  QuantMethod method = QuantMethod::SVDQuant;
  LowRankMode lowrank = LowRankMode::Svd;
  int rank = 32;
  int refineIters = 8;        // 0: the plain top-r SVD of the smoothed weight
  double refineTol = 1e-3;    // stop refining once a step lowers the layer error by less than this fraction
  double gridStep = 0.05;     // smoothing exponents a = step .. 1 - step
  bool exhaustiveGrid = false;  // every grid point, not coarse (4 steps) then fine around the best
  bool tryUnsignedShift = false;  // input is a GELU output: also try shifted unsigned activations
  float damp = 0.01f;         // covariance damping (times its mean diagonal) for corda / whiten and GPTQ
  bool gptq = false;          // quantize the chosen candidate's residual with GPTQ instead of rounding to nearest
};

struct LayerQuantResult {
  W4A4Weights weights;
  double relError = 0;        // ||Y_q - Y|| / ||Y|| on the calibration sample
  double naiveRelError = 0;   // same for the first candidate (no smoothing, plain SVD), for reports
  std::string smoothing;      // "none" or "a=0.45,b=0.55"
  int refineSteps = 0;        // refinement iterates kept
  bool gptq = false;          // the residual is GPTQ-quantized (asked for, and it lowered relError)
  double rtnRelError = 0;     // with gptq asked for: relError of the round-to-nearest residual, for reports
};

// W: [N, K], bias: [N] or empty. Throws svdq::Error naming `name` on bad shapes/values.
LayerQuantResult quantizeW4A4Layer(const std::string& name, const Tensor& W, const std::vector<float>& bias,
                                   const LayerCalib& calib, const LayerQuantOptions& opt);

// Asymmetric INT4 weights per group of 64 (K must be a multiple of 64).
W4A16Weights quantizeW4A16Layer(const std::string& name, const Tensor& W, const std::vector<float>& bias);

// Relative output error of a layer on rows X against the 16-bit reference X W^T + b.
double layerRelError(const Linear& layer, const Tensor& W, const std::vector<float>& bias, const Tensor& X);

}  // namespace svdq

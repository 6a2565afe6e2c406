// Whole-model output error of quantized checkpoints against their 16-bit original (svdq eval).
#include <cmath>

#include "svdq/quant_pipeline.h"

namespace svdq {

std::vector<double> compareModels(const std::string& reference, const std::vector<std::string>& candidates,
                                  const std::string& inputs, int randomSets, uint64_t seed) {
  auto ref = FluxModel::load(reference);
  std::string source;
  std::vector<FluxInputs> sets = loadInputSets(inputs, ref->config(), randomSets, seed, &source);
  std::vector<Tensor> refOut;
  double norm = 0;
  for (const auto& s : sets) {
    refOut.push_back(ref->forward(s));
    for (float v : refOut.back().data) norm += static_cast<double>(v) * v;
  }
  ref.reset();
  std::vector<double> errs;
  for (const auto& c : candidates) {
    auto m = FluxModel::load(c);
    double e = 0;
    for (size_t i = 0; i < sets.size(); ++i) {
      Tensor y = m->forward(sets[i]);
      if (y.shape != refOut[i].shape)
        throw Error(c + ": output shape " + shapeString(y.shape) + " differs from the reference " + shapeString(refOut[i].shape));
      for (int64_t j = 0; j < y.numel(); ++j) {
        const double d = static_cast<double>(y.data[j]) - refOut[i].data[j];
        e += std::isfinite(d) ? d * d : INFINITY;
      }
    }
    errs.push_back(std::sqrt(e / std::max(norm, 1e-30)));
  }
  return errs;
}

}  // namespace svdq

// Whole-checkpoint quantization (see svdq/quant_pipeline.h).
#include "svdq/quant_pipeline.h"
namespace svdq {
std::string quantizeCheckpoint(const PipelineOptions& opt, const PipelineProgress&) {
  throw Error(opt.input + ": checkpoint quantization needs the FLUX model graph, which is not built yet");
}
}  // namespace svdq

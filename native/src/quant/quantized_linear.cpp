// Placeholder until the quantizer lands: no checkpoint is quantized yet.
#include "svdq/quant.h"
namespace svdq {
bool hasQuantizedLinear(const SafetensorsFile&, const std::string&) { return false; }
std::unique_ptr<Linear> loadQuantizedLinear(const SafetensorsFile& f, const std::string& layer) {
  throw Error(f.path() + ": quantized layer '" + layer + "' is not supported yet");
}
}  // namespace svdq

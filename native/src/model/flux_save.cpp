// A loaded FLUX model written back as our checkpoint (see saveFluxCheckpoint in svdq/flux.h).
#include "svdq/dense_linear.h"
#include "svdq/flux.h"
#include "svdq/quant.h"

namespace svdq {

namespace {
// BF16 when every value survives the round trip (16-bit sources stay 16-bit), else F32.
void addFloats(SafetensorsWriter& out, const std::string& name, const Tensor& t) {
  std::vector<uint16_t> b(t.data.size());
  for (size_t i = 0; i < b.size(); ++i) {
    b[i] = f32ToBf16(t.data[i]);
    if (bf16ToF32(b[i]) != t.data[i]) return out.addF32(name, t);
  }
  out.add(name, DType::BF16, t.shape, b.data(), b.size() * 2);
}
}  // namespace

void saveFluxCheckpoint(const FluxModel& m, const std::string& path, bool overwrite,
                        const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter out(path, overwrite);
  for (const auto& [k, v] : metadata) out.setMetadata(k, v);
  for (const auto& name : m.linearNames()) {
    const Linear& l = m.linear(name);
    if (auto* d = dynamic_cast<const DenseLinear*>(&l)) {
      if (!l.loras.empty()) throw Error("layer '" + name + "': cannot write a layer with LoRAs attached");
      addFloats(out, name + ".weight", d->weightF32());
      if (d->bias()) addFloats(out, name + ".bias", *d->bias());
    } else {
      writeQuantizedLinear(out, name, l);
    }
  }
  for (const auto& [k, t] : m.norms()) addFloats(out, k, t);
  out.finish();
}

}  // namespace svdq

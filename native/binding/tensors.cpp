// Placeholder: filled in by its owner.
#include "binding.h"
namespace svdq::binding {
void registerTensors(Napi::Env, Napi::Object) {}
}  // namespace svdq::binding

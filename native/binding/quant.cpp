// Placeholder: filled in by its owner.
#include "binding.h"
namespace svdq::binding {
void registerQuant(Napi::Env, Napi::Object) {}
}  // namespace svdq::binding

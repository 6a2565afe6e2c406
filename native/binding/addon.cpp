// Node-API entry point: each concept registers its own bindings (one file per concept).
#include <napi.h>
#include "binding.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  svdq::binding::registerTensors(env, exports);
  svdq::binding::registerEngine(env, exports);
  svdq::binding::registerQuant(env, exports);
  svdq::binding::registerLora(env, exports);
  svdq::binding::registerGpu(env, exports);
  svdq::binding::registerConvert(env, exports);
  return exports;
}

NODE_API_MODULE(svdq, Init)

// Placeholder: filled in by its owner.
#include "svdq/safetensors.h"

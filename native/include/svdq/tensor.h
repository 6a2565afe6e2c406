// Host tensors and dtypes. The CPU backend computes in F32; weights may stay 16-bit in memory.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace svdq {

// Every error the engine reports: a message that names the file, tensor, shape or key at fault.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { F32, F16, BF16, F8_E4M3, I8, U8, I32, I64, BOOL };

const char* dtypeName(DType t);                  // safetensors spelling: "F32", "BF16", ...
bool dtypeFromName(const std::string& s, DType* out);
size_t dtypeSize(DType t);                       // bytes per element

// Scalar conversions (round-to-nearest-even where narrowing).
float bf16ToF32(uint16_t v);
uint16_t f32ToBf16(float v);
float f16ToF32(uint16_t v);
uint16_t f32ToF16(float v);
float e4m3ToF32(uint8_t v);
uint8_t f32ToE4m3(float v);                      // saturating to +-448

// Converts n elements of any floating or integer dtype to F32.
void toF32(DType t, const void* src, float* dst, size_t n);

std::string shapeString(const std::vector<int64_t>& shape);  // "[2, 3, 4]"
int64_t numel(const std::vector<int64_t>& shape);

// A dense row-major F32 tensor that owns its data.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(static_cast<size_t>(svdq::numel(shape)), 0.f) {}
  int64_t size(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

}  // namespace svdq

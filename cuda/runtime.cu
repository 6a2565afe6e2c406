// Device discovery, device buffers, deterministic fills and event timing for the CUDA backend.
#include "common.cuh"
#include "svdq/cuda_ops.h"

namespace svdq::cuda {

bool available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device"/"no driver" status so later calls start clean
    return false;
  }
  return n > 0;
}

std::string deviceName() {
  if (!available()) return "";
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  return p.name;
}

int computeCapability() {
  if (!available()) return 0;
  int maj = 0, min = 0;
  check(cudaDeviceGetAttribute(&maj, cudaDevAttrComputeCapabilityMajor, 0), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&min, cudaDevAttrComputeCapabilityMinor, 0), "cudaDeviceGetAttribute");
  return maj * 10 + min;
}

bool hasCublasLt() {
#ifdef SVDQ_WITH_CUBLASLT
  return true;
#else
  return false;
#endif
}

void synchronize(const char* what) { check(cudaDeviceSynchronize(), what); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) check(cudaMalloc(&ptr_, bytes), ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);  // no throw from a destructor; a failure here means the context is gone anyway
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) throw Error("cuda: upload of " + std::to_string(bytes) + " bytes past a " + std::to_string(bytes_) + "-byte buffer");
  if (bytes) check(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) throw Error("cuda: download of " + std::to_string(bytes) + " bytes past a " + std::to_string(bytes_) + "-byte buffer");
  if (bytes) check(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
void DeviceBuffer::fill(uint8_t byte) {
  if (bytes_) check(cudaMemset(ptr_, byte, bytes_), "cudaMemset");
}

namespace {
__device__ __forceinline__ uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float unit(uint64_t h) { return static_cast<float>(h >> 40) * (1.f / 16777216.f); }

__global__ void fillBf16Kernel(uint16_t* p, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = f32ToBf16Bits(lo + (hi - lo) * unit(mix(seed ^ i)));
}
__global__ void fillF32Kernel(float* p, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = lo + (hi - lo) * unit(mix(seed ^ i));
}
__global__ void fillBytesKernel(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = static_cast<uint8_t>(mix(seed ^ i) >> 56);
}
unsigned fillBlocks(size_t n) { return static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 4096)); }
}  // namespace

void fillUniformBf16(uint16_t* p, size_t n, float lo, float hi, uint64_t seed) {
  if (!n) return;
  fillBf16Kernel<<<fillBlocks(n), 256>>>(p, n, lo, hi, seed);
  checkLaunch("fillUniformBf16");
}
void fillUniformF32(float* p, size_t n, float lo, float hi, uint64_t seed) {
  if (!n) return;
  fillF32Kernel<<<fillBlocks(n), 256>>>(p, n, lo, hi, seed);
  checkLaunch("fillUniformF32");
}
void fillRandomBytes(uint8_t* p, size_t n, uint64_t seed) {
  if (!n) return;
  fillBytesKernel<<<fillBlocks(n), 256>>>(p, n, seed);
  checkLaunch("fillRandomBytes");
}

double timeMs(const std::function<void()>& launch, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) launch();
  check(cudaDeviceSynchronize(), "timeMs warmup");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  check(cudaEventRecord(a), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) launch();
  check(cudaEventRecord(b), "cudaEventRecord");
  cudaError_t e = cudaEventSynchronize(b);
  float ms = 0.f;
  if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  check(e, "timeMs");
  return ms / std::max(iters, 1);
}

}  // namespace svdq::cuda

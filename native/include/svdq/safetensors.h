// Safetensors files: a validated, memory-mapped reader and an atomic, streaming writer.
// Parsing is a security boundary: every header field is checked before any tensor byte is read.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "svdq/tensor.h"

namespace svdq {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte span inside the data section
};

class SafetensorsFile {
 public:
  // Maps the file and validates the header (length, JSON, dtypes, shape x dtype size == span,
  // spans inside the file, no overlap). Throws svdq::Error naming the file (and tensor).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;   // throws "<file>: no tensor '<name>'"
  std::vector<std::string> names() const;                   // sorted
  const uint8_t* bytes(const std::string& name) const;      // raw little-endian bytes of the tensor
  Tensor toF32(const std::string& name) const;              // any numeric dtype converted to F32

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
  const uint8_t* map_ = nullptr;
  size_t mapSize_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
};

// Writes tensors one at a time (memory stays bounded), then finish() writes the file under a
// temporary name and renames it into place, so a crash never leaves a half-written output.
// Drops the whole pages inside [p, p + bytes) of a read-only file mapping from the process's
// resident set (MADV_DONTNEED); the data stays in the page cache and faults back in on next use.
void releasePages(const void* p, size_t bytes);

class SafetensorsWriter {
 public:
  // Refuses an existing path unless overwrite is true.
  SafetensorsWriter(const std::string& path, bool overwrite);
  ~SafetensorsWriter();  // removes temporaries if finish() was not reached
  void setMetadata(const std::string& key, const std::string& value);
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
           size_t nbytes);
  void addF32(const std::string& name, const Tensor& t) {
    add(name, DType::F32, t.shape, t.ptr(), t.data.size() * sizeof(float));
  }
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq

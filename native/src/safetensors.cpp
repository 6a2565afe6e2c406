// Safetensors reader (memory-mapped, header validated before any tensor byte is touched) and an
// atomic, streaming writer. Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#include "svdq/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <limits>

namespace svdq {

namespace {

constexpr uint64_t kMaxHeader = 100u * 1024 * 1024;  // the reference implementation's limit

// A strict parser for the subset of JSON a safetensors header uses: one object whose values are
// objects of strings, integer arrays and strings. Anything else is an error with a byte position.
class HeaderParser {
 public:
  HeaderParser(const std::string& file, const char* s, size_t n) : file_(file), s_(s), n_(n) {}

  struct Entry {
    std::string dtype;
    bool hasDtype = false, hasShape = false, hasOffsets = false;
    std::vector<int64_t> shape;
    std::vector<uint64_t> offsets;
  };

  void parse(std::map<std::string, std::string>& metadata, std::vector<std::pair<std::string, Entry>>& entries) {
    ws();
    expect('{');
    ws();
    if (peek() == '}') {
      pos_++;
    } else {
      for (;;) {
        ws();
        std::string key = str();
        ws();
        expect(':');
        ws();
        if (key == "__metadata__") {
          parseMetadata(metadata);
        } else {
          for (const auto& e : entries)
            if (e.first == key) fail("tensor '" + key + "' appears twice");
          entries.emplace_back(key, parseEntry(key));
        }
        ws();
        if (peek() == ',') {
          pos_++;
          continue;
        }
        expect('}');
        break;
      }
    }
    ws();
    if (pos_ != n_) fail("trailing bytes after the JSON header");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(file_ + ": invalid safetensors header: " + why + " (at byte " + std::to_string(pos_) + ")");
  }
  char peek() const { return pos_ < n_ ? s_[pos_] : '\0'; }
  void ws() {
    while (pos_ < n_ && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) pos_++;
  }
  void expect(char c) {
    if (peek() != c || pos_ >= n_) fail(std::string("expected '") + c + "'");
    pos_++;
  }
  std::string str() {
    expect('"');
    std::string out;
    while (pos_ < n_ && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= n_) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > n_) fail("short \\u escape");
          unsigned cp = 0;
          for (int i = 0; i < 4; i++) {
            char h = s_[pos_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= h - '0';
            else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
            else fail("bad \\u escape");
          }
          // Encode as UTF-8 (surrogate pairs are kept as two code points; names never need them).
          if (cp < 0x80) out += static_cast<char>(cp);
          else if (cp < 0x800) { out += static_cast<char>(0xc0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3f)); }
          else { out += static_cast<char>(0xe0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f)); out += static_cast<char>(0x80 | (cp & 0x3f)); }
          break;
        }
        default: fail("bad escape");
      }
    }
    expect('"');
    return out;
  }
  uint64_t uint() {
    if (peek() < '0' || peek() > '9') fail("expected a non-negative integer");
    uint64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      uint64_t d = static_cast<uint64_t>(s_[pos_++] - '0');
      if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) fail("integer overflow");
      v = v * 10 + d;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("expected an integer");
    return v;
  }
  std::vector<uint64_t> uintArray() {
    std::vector<uint64_t> out;
    expect('[');
    ws();
    if (peek() == ']') {
      pos_++;
      return out;
    }
    for (;;) {
      ws();
      out.push_back(uint());
      ws();
      if (peek() == ',') {
        pos_++;
        continue;
      }
      expect(']');
      return out;
    }
  }
  void parseMetadata(std::map<std::string, std::string>& metadata) {
    expect('{');
    ws();
    if (peek() == '}') {
      pos_++;
      return;
    }
    for (;;) {
      ws();
      std::string k = str();
      ws();
      expect(':');
      ws();
      metadata[k] = str();
      ws();
      if (peek() == ',') {
        pos_++;
        continue;
      }
      expect('}');
      return;
    }
  }
  Entry parseEntry(const std::string& name) {
    Entry e;
    expect('{');
    for (;;) {
      ws();
      std::string k = str();
      ws();
      expect(':');
      ws();
      if (k == "dtype") {
        e.dtype = str();
        e.hasDtype = true;
      } else if (k == "shape") {
        for (uint64_t d : uintArray()) {
          if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail("tensor '" + name + "': shape too large");
          e.shape.push_back(static_cast<int64_t>(d));
        }
        e.hasShape = true;
      } else if (k == "data_offsets") {
        e.offsets = uintArray();
        e.hasOffsets = true;
      } else {
        fail("tensor '" + name + "': unknown field '" + k + "'");
      }
      ws();
      if (peek() == ',') {
        pos_++;
        continue;
      }
      expect('}');
      return e;
    }
  }

  const std::string& file_;
  const char* s_;
  size_t n_;
  size_t pos_ = 0;
};

std::string jsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::string sysError(const std::string& what, const std::string& path) {
  return path + ": " + what + ": " + std::strerror(errno);
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(sysError("cannot open", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(sysError("cannot stat", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path + ": not a safetensors file: " + std::to_string(size) + " bytes is shorter than the 8-byte header length");
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw Error(sysError("cannot map", path));
  f->map_ = static_cast<const uint8_t*>(m);
  f->mapSize_ = size;

  uint64_t headerLen = 0;
  for (int i = 7; i >= 0; i--) headerLen = (headerLen << 8) | f->map_[i];
  if (headerLen > kMaxHeader || headerLen > size - 8)
    throw Error(path + ": header length " + std::to_string(headerLen) + " runs past the end of the file (" +
                std::to_string(size) + " bytes)");
  f->data_ = f->map_ + 8 + headerLen;
  const size_t dataSize = size - 8 - headerLen;

  std::vector<std::pair<std::string, HeaderParser::Entry>> entries;
  HeaderParser(path, reinterpret_cast<const char*>(f->map_ + 8), headerLen).parse(f->metadata_, entries);

  std::vector<std::pair<size_t, size_t>> spans;
  for (auto& [name, e] : entries) {
    const std::string where = path + ": tensor '" + name + "'";
    if (!e.hasDtype || !e.hasShape || !e.hasOffsets) throw Error(where + ": needs dtype, shape and data_offsets");
    TensorInfo info;
    info.name = name;
    if (!dtypeFromName(e.dtype, &info.dtype)) throw Error(where + ": unknown dtype '" + e.dtype + "'");
    if (e.offsets.size() != 2) throw Error(where + ": data_offsets must be [begin, end]");
    info.shape = e.shape;
    uint64_t count = 1;
    for (int64_t d : e.shape) {
      if (d != 0 && count > std::numeric_limits<uint64_t>::max() / 8 / static_cast<uint64_t>(d))
        throw Error(where + ": shape " + shapeString(e.shape) + " is too large");
      count *= static_cast<uint64_t>(d);
    }
    uint64_t bytes = count * dtypeSize(info.dtype);
    uint64_t begin = e.offsets[0], end = e.offsets[1];
    if (end < begin) throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] run backwards");
    if (end - begin != bytes)
      throw Error(where + ": shape " + shapeString(e.shape) + " of " + e.dtype + " needs " + std::to_string(bytes) +
                  " bytes but data_offsets span " + std::to_string(end - begin));
    if (end > dataSize)
      throw Error(where + ": data span " + std::to_string(begin) + ".." + std::to_string(end) +
                  " ends past the data section (" + std::to_string(dataSize) + " bytes)");
    info.begin = begin;
    info.end = end;
    if (bytes) spans.emplace_back(begin, end);
    f->tensors_[name] = std::move(info);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); i++) {
    if (spans[i].first < spans[i - 1].second) {
      std::string a, b;
      for (const auto& [n, t] : f->tensors_) {
        if (t.begin == spans[i - 1].first && t.end == spans[i - 1].second && a.empty()) a = n;
        else if (t.begin == spans[i].first && t.end == spans[i].second && b.empty()) b = n;
      }
      throw Error(path + ": tensors '" + a + "' and '" + b + "' overlap in the data section");
    }
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(const_cast<uint8_t*>(map_), mapSize_);
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(path_ + ": no tensor '" + name + "'");
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

const uint8_t* SafetensorsFile::bytes(const std::string& name) const { return data_ + info(name).begin; }

Tensor SafetensorsFile::toF32(const std::string& name) const {
  const TensorInfo& ti = info(name);
  Tensor t(ti.shape);
  svdq::toF32(ti.dtype, data_ + ti.begin, t.ptr(), t.data.size());
  return t;
}

// ---------------------------------------------------------------------------------------------

struct SafetensorsWriter::Impl {
  std::string path, dataTmp, finalTmp;
  FILE* data = nullptr;
  uint64_t offset = 0;
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;
  bool finished = false;
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, bool overwrite) : impl_(new Impl) {
  struct stat st;
  if (!overwrite && ::stat(path.c_str(), &st) == 0)
    throw Error(path + ": output exists (pass --force / overwrite to replace it)");
  impl_->path = path;
  impl_->dataTmp = path + ".data.tmp-" + std::to_string(::getpid());
  impl_->finalTmp = path + ".tmp-" + std::to_string(::getpid());
  impl_->data = std::fopen(impl_->dataTmp.c_str(), "wb+");
  if (!impl_->data) throw Error(sysError("cannot create", impl_->dataTmp));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (impl_->data) std::fclose(impl_->data);
  if (!impl_->finished) {
    std::remove(impl_->dataTmp.c_str());
    std::remove(impl_->finalTmp.c_str());
  }
}

void SafetensorsWriter::setMetadata(const std::string& key, const std::string& value) { impl_->metadata[key] = value; }

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                            size_t nbytes) {
  if (impl_->finished) throw Error(impl_->path + ": writer already finished");
  if (name.empty() || name == "__metadata__") throw Error(impl_->path + ": invalid tensor name '" + name + "'");
  for (const auto& t : impl_->tensors)
    if (t.name == name) throw Error(impl_->path + ": tensor '" + name + "' written twice");
  size_t expected = static_cast<size_t>(numel(shape)) * dtypeSize(dtype);
  if (expected != nbytes)
    throw Error(impl_->path + ": tensor '" + name + "': shape " + shapeString(shape) + " of " + dtypeName(dtype) +
                " needs " + std::to_string(expected) + " bytes, got " + std::to_string(nbytes));
  if (nbytes && std::fwrite(data, 1, nbytes, impl_->data) != nbytes) throw Error(sysError("write failed", impl_->dataTmp));
  TensorInfo ti{name, dtype, shape, impl_->offset, impl_->offset + nbytes};
  impl_->offset += nbytes;
  impl_->tensors.push_back(std::move(ti));
}

void SafetensorsWriter::finish() {
  Impl& im = *impl_;
  if (im.finished) return;
  std::string h = "{";
  bool first = true;
  if (!im.metadata.empty()) {
    h += "\"__metadata__\":{";
    for (const auto& [k, v] : im.metadata) {
      h += (first ? "" : ",") + ("\"" + jsonEscape(k) + "\":\"" + jsonEscape(v) + "\"");
      first = false;
    }
    h += "}";
    first = false;
  }
  for (const auto& t : im.tensors) {
    h += first ? "" : ",";
    first = false;
    h += "\"" + jsonEscape(t.name) + "\":{\"dtype\":\"" + dtypeName(t.dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); i++) h += (i ? "," : "") + std::to_string(t.shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
  }
  h += "}";
  while (h.size() % 8) h += ' ';  // keep the data section 8-byte aligned, as the reference writer does

  FILE* out = std::fopen(im.finalTmp.c_str(), "wb");
  if (!out) throw Error(sysError("cannot create", im.finalTmp));
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, out) == 8 && std::fwrite(h.data(), 1, h.size(), out) == h.size();
  std::fflush(im.data);
  std::rewind(im.data);
  std::vector<char> buf(1 << 20);
  size_t n;
  while (ok && (n = std::fread(buf.data(), 1, buf.size(), im.data)) > 0) ok = std::fwrite(buf.data(), 1, n, out) == n;
  ok = (std::fflush(out) == 0) && ok;
  ok = (fsync(fileno(out)) == 0) && ok;
  std::fclose(out);
  std::fclose(im.data);
  im.data = nullptr;
  std::remove(im.dataTmp.c_str());
  if (!ok) throw Error(sysError("write failed", im.finalTmp));
  if (std::rename(im.finalTmp.c_str(), im.path.c_str()) != 0) throw Error(sysError("cannot rename into place", im.path));
  im.finished = true;
}

void releasePages(const void* p, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_DONTNEED);  // advice only: failure is harmless
}

}  // namespace svdq

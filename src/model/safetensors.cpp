#include "model/safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "ember/error.h"

namespace ember {
namespace {

using nlohmann::json;

// Element sizes of every dtype the safetensors format defines, so byte ranges can be checked
// even for tensors ember will refuse to read. 0: not a safetensors dtype we know.
size_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F8_E4M3" || dtype == "F8_E5M2" || dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

bool readable_dtype(const std::string& dtype, DType* out) {
  if (dtype == "F32") *out = DType::F32;
  else if (dtype == "F16") *out = DType::F16;
  else if (dtype == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

// Reads the u64 header length as the format defines it: little-endian, independent of the host.
uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_le64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

SafetensorsFile::Entry parse_entry(const std::string& file, const std::string& name, const json& v) {
  const std::string where = file + ": tensor '" + name + "'";
  if (!v.is_object()) throw Error(where + ": header entry must be an object");
  SafetensorsFile::Entry e;
  if (!v.contains("dtype") || !v.at("dtype").is_string()) throw Error(where + ": missing or non-string 'dtype'");
  e.dtype = v.at("dtype").get<std::string>();
  if (!v.contains("shape") || !v.at("shape").is_array()) throw Error(where + ": missing or non-list 'shape'");
  for (const json& d : v.at("shape")) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      throw Error(where + ": shape entries must be non-negative integers, got " + v.at("shape").dump());
    e.shape.push_back(d.get<int64_t>());
  }
  const json* offsets = v.contains("data_offsets") ? &v.at("data_offsets") : nullptr;
  if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2 || !offsets->at(0).is_number_unsigned() ||
      !offsets->at(1).is_number_unsigned())
    throw Error(where + ": 'data_offsets' must be [begin, end] with non-negative integers");
  e.begin = offsets->at(0).get<uint64_t>();
  e.end = offsets->at(1).get<uint64_t>();
  if (e.end < e.begin)
    throw Error(where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                "] end before they begin");

  if (const size_t elem = safetensors_dtype_size(e.dtype); elem != 0) {
    uint64_t bytes = elem;
    for (int64_t d : e.shape) {
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes))
        throw Error(where + ": shape " + shape_string(e.shape) + " is too large");
    }
    if (bytes != e.end - e.begin)
      throw Error(where + ": shape " + shape_string(e.shape) + " of " + e.dtype + " needs " + std::to_string(bytes) +
                  " bytes but data_offsets span " + std::to_string(e.end - e.begin));
  }
  return e;
}

class OutputFile {
 public:
  explicit OutputFile(const std::filesystem::path& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (f_ == nullptr) throw Error("cannot create " + path_.string() + ": " + std::strerror(errno));
  }
  ~OutputFile() {
    if (f_ != nullptr) std::fclose(f_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t n) {
    if (n != 0 && std::fwrite(data, 1, n, f_) != n)
      throw Error("cannot write " + path_.string() + ": " + std::strerror(errno));
  }
  void close() {
    std::FILE* f = f_;
    f_ = nullptr;
    if (std::fflush(f) != 0 || std::ferror(f) != 0) {
      const int err = errno;
      std::fclose(f);
      throw Error("cannot write " + path_.string() + ": " + std::strerror(err));
    }
    if (std::fclose(f) != 0) throw Error("cannot close " + path_.string() + ": " + std::strerror(errno));
  }

 private:
  std::filesystem::path path_;
  std::FILE* f_;
};

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile st;
  st.file_ = MappedFile::open(path);
  const std::string file = path.string();
  const size_t size = st.file_->size();
  if (size < 8)
    throw Error(file + ": not a safetensors file (" + std::to_string(size) + " bytes, shorter than the 8-byte header length)");
  const uint64_t header_len = read_le64(st.file_->data());
  if (header_len > size - 8)
    throw Error(file + ": header length " + std::to_string(header_len) + " exceeds the file size " +
                std::to_string(size) + " (truncated or not a safetensors file)");
  st.data_start_ = 8 + static_cast<size_t>(header_len);

  json header;
  try {
    const char* text = reinterpret_cast<const char*>(st.file_->data() + 8);
    header = json::parse(text, text + header_len);
  } catch (const json::parse_error& e) {
    throw Error(file + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw Error(file + ": safetensors header must be a JSON object");

  const uint64_t data_size = size - st.data_start_;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") continue;
    Entry e = parse_entry(file, name, value);
    if (e.end > data_size)
      throw Error(file + ": tensor '" + name + "' needs data bytes [" + std::to_string(e.begin) + ", " +
                  std::to_string(e.end) + ") but the data section has only " + std::to_string(data_size) +
                  " bytes; the file is truncated");
    st.entries_.emplace(name, std::move(e));
  }
  return st;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) throw Error("tensor '" + name + "' not found in " + path().string());
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const Entry& e = entry(name);
  Tensor t;
  if (!readable_dtype(e.dtype, &t.dtype))
    throw Error("tensor '" + name + "' in " + path().string() + " has dtype " + e.dtype +
                "; ember reads only F32, F16 and BF16 weights");
  t.shape = e.shape;
  // The view aliases the mapping, so the file stays mapped while any tensor of it lives.
  auto* ptr = const_cast<unsigned char*>(file_->data() + data_start_ + e.begin);
  t.data = ptr;
  t.storage = std::shared_ptr<void>(file_, ptr);
  return t;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};  // transformers refuses files whose format is not "pt"
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (!seen.insert(t.name).second) throw Error("write_safetensors: tensor '" + t.name + "' given twice");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw Error("write_safetensors: tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
                  "; only F32, F16 and BF16 are written");
    uint64_t bytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) throw Error("write_safetensors: tensor '" + t.name + "' has negative shape " + shape_string(t.shape));
      bytes *= static_cast<uint64_t>(d);
    }
    if (bytes != 0 && t.data == nullptr) throw Error("write_safetensors: tensor '" + t.name + "' has no data");
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  OutputFile out(path);
  unsigned char len[8];
  write_le64(len, text.size());
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const TensorToWrite& t : tensors) {
    size_t bytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) bytes *= static_cast<size_t>(d);
    out.write(t.data, bytes);
  }
  out.close();
}

}  // namespace ember

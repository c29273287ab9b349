#include "ckpt_writer.h"

#include <zip.h>

#include <list>
#include <stdexcept>

namespace sumi::test {

namespace {

struct Pickler {
  std::string b = std::string("\x80\x02", 2);
  void op(char c) { b += c; }
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b += static_cast<char>((v >> (8 * i)) & 0xFF);
  }
  void str(const std::string& s) {
    op('X');
    u32(static_cast<std::uint32_t>(s.size()));
    b += s;
  }
  void global(const std::string& module, const std::string& name) { b += 'c' + module + '\n' + name + '\n'; }
  void integer(std::int64_t v) {
    op('J');
    u32(static_cast<std::uint32_t>(v));
  }
  void ints(const std::vector<int64_t>& v) {
    op('(');
    for (auto x : v) integer(x);
    op('t');
  }
};

const char* storage_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "FloatStorage";
    case at::kHalf: return "HalfStorage";
    case at::kBFloat16: return "BFloat16Storage";
    case at::kLong: return "LongStorage";
    case at::kInt: return "IntStorage";
    default: throw std::invalid_argument("write_ckpt: unsupported dtype");
  }
}

}  // namespace

void write_ckpt(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                const std::string& extra_global) {
  Pickler p;
  std::vector<std::pair<std::string, std::string>> members;
  p.op('}');
  p.op('(');
  p.str("state_dict");
  p.op('}');
  p.op('(');
  int key = 0;
  for (const auto& [name, t0] : tensors) {
    const at::Tensor t = t0.contiguous();
    p.str(name);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op('(');
    p.op('(');
    p.str("storage");
    p.global("torch", storage_of(t.scalar_type()));
    p.str(std::to_string(key));
    p.str("cpu");
    p.integer(t.numel());
    p.op('t');
    p.op('Q');  // BINPERSID
    p.integer(0);
    p.ints(t.sizes().vec());
    p.ints(t.strides().vec());
    p.op('\x89');  // NEWFALSE
    p.global("collections", "OrderedDict");
    p.op(')');
    p.op('R');
    p.op('t');
    p.op('R');
    members.emplace_back("archive/data/" + std::to_string(key),
                         std::string(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size()));
    ++key;
  }
  if (!extra_global.empty()) {
    const auto dot = extra_global.rfind('.');
    p.str("payload");
    p.global(extra_global.substr(0, dot), extra_global.substr(dot + 1));
    p.op('(');
    p.str("echo hi");
    p.op('t');
    p.op('R');
  }
  p.op('u');
  p.op('u');
  p.op('.');
  members.insert(members.begin(), {"archive/data.pkl", p.b});
  members.emplace_back("archive/byteorder", "little");
  members.emplace_back("archive/version", "3\n");

  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (!z) throw std::runtime_error("cannot create " + path);
  std::list<std::string> keep;  // libzip reads the buffers at zip_close
  for (const auto& [name, data] : members) {
    keep.push_back(data);
    zip_source_t* src = zip_source_buffer(z, keep.back().data(), keep.back().size(), 0);
    const zip_int64_t idx = zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE);
    if (idx < 0) throw std::runtime_error("zip_file_add failed");
    zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0);
  }
  if (zip_close(z) != 0) throw std::runtime_error("zip_close failed for " + path);
}

}  // namespace sumi::test

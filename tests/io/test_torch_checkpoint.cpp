// torch.save checkpoints: pickles written opcode by opcode, zipped the way torch.save does,
// loaded through the restricted unpickler. Checks values, view/storage sharing, the
// allowlist and the handling of truncated or inconsistent files.
#include <doctest/doctest.h>

#include <ATen/ATen.h>
#include <zip.h>

#include <cstring>
#include <fstream>
#include <list>
#include <random>

#include "sumi/io/pickle.h"
#include "sumi/io/torch_checkpoint.h"
#include "io_test_util.h"

using namespace sumi::io;
using sumi::test::ScratchDir;

namespace {

// Emits pickle opcodes; names follow Python's pickletools.
struct Pickle {
  std::string b;
  int proto;
  explicit Pickle(int protocol = 2) : proto(protocol) {
    b += '\x80';
    b += static_cast<char>(protocol);
  }
  Pickle& op(char c) { b += c; return *this; }
  Pickle& u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b += static_cast<char>((v >> (8 * i)) & 0xFF);
    return *this;
  }
  Pickle& str(const std::string& s) {
    if (proto >= 4 && s.size() < 256) {
      op('\x8c');  // SHORT_BINUNICODE
      b += static_cast<char>(s.size());
    } else {
      op('X').u32(static_cast<std::uint32_t>(s.size()));
    }
    b += s;
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    if (proto >= 4) {
      str(module).str(name);
      return op('\x93');  // STACK_GLOBAL
    }
    b += 'c' + module + '\n' + name + '\n';
    return *this;
  }
  Pickle& integer(std::int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      b += static_cast<char>(v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J').u32(static_cast<std::uint32_t>(v));
    } else {
      op('\x8a');  // LONG1
      b += '\x08';
      for (int i = 0; i < 8; ++i) b += static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xFF);
    }
    return *this;
  }
  Pickle& mark() { return op('('); }
  Pickle& tuple() { return op('t'); }
  Pickle& ints(const std::vector<std::int64_t>& v) {
    mark();
    for (auto x : v) integer(x);
    return tuple();
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  Pickle& put(int i) {
    if (proto >= 4) return op('\x94');  // MEMOIZE
    op('q');
    b += static_cast<char>(i);
    return *this;
  }
  // torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride, False, OrderedDict())
  Pickle& tensor(const std::string& storage_type, const std::string& key, std::int64_t numel,
                 std::int64_t offset, const std::vector<std::int64_t>& size,
                 const std::vector<std::int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2");
    mark();
    mark().str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel).tuple();
    op('Q');  // BINPERSID
    integer(offset).ints(size).ints(stride).op('\x89');
    ordered_dict();
    tuple();
    return op('R');
  }
  std::string done() { return b + '.'; }
};

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

void write_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& members) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  REQUIRE(z);
  std::list<std::string> keep;  // libzip reads the buffers at zip_close
  for (const auto& [name, data] : members) {
    keep.push_back(data);
    zip_source_t* src = zip_source_buffer(z, keep.back().data(), keep.back().size(), 0);
    REQUIRE(src);
    zip_int64_t idx = zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE);
    REQUIRE(idx >= 0);
    zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0);
  }
  REQUIRE(zip_close(z) == 0);
}

// The typical SD checkpoint shape: {"epoch": 3, "global_step": numpy int64, "state_dict":
// OrderedDict(weight, col (a view of weight), bias (a Parameter, float16))}.
std::string sd_checkpoint_pickle() {
  Pickle p(2);
  p.op('}').put(0).mark();
  p.str("epoch").integer(3);
  // numpy.core.multiarray.scalar(numpy.dtype('i8', False, True) + BUILD, _codecs.encode(...))
  p.str("global_step").global("numpy.core.multiarray", "scalar");
  p.global("numpy", "dtype").str("i8").op('\x89').op('\x88').op('\x87').op('R');
  p.mark().integer(3).str("<").op('N').op('N').op('N').integer(-1).integer(-1).integer(0).tuple().op('b');
  p.global("_codecs", "encode").str(std::string("\x07\0\0\0\0\0\0\0", 8)).str("latin1").op('\x86').op('R');
  p.op('\x86').op('R');
  p.str("state_dict").ordered_dict().put(1).mark();
  p.str("weight").tensor("FloatStorage", "0", 12, 0, {3, 4}, {4, 1});
  p.str("col").tensor("FloatStorage", "0", 12, 1, {3}, {4});
  p.str("bias").global("torch._utils", "_rebuild_parameter");
  p.tensor("HalfStorage", "1", 3, 0, {3}, {1}).op('\x88').ordered_dict().op('\x87').op('R');
  p.op('u');  // SETITEMS into the state dict
  // state_dict._metadata, set through BUILD as torch does
  p.op('}').str("_metadata").op('}').op('s').op('b');
  p.op('u');  // SETITEMS into the top-level dict
  return p.done();
}

std::vector<std::pair<std::string, std::string>> sd_members(const std::string& pkl) {
  std::vector<float> w(12);
  for (int i = 0; i < 12; ++i) w[static_cast<std::size_t>(i)] = static_cast<float>(i) * 0.5f;
  at::Tensor bias = at::tensor({1.0f, -2.0f, 0.25f}).to(at::kHalf);
  std::string bias_bytes(reinterpret_cast<const char*>(bias.data_ptr()), 6);
  return {{"archive/data.pkl", pkl},
          {"archive/byteorder", "little"},
          {"archive/data/0", floats(w)},
          {"archive/data/1", bias_bytes},
          {"archive/version", "3\n"}};
}

std::string load_error(const std::string& path) {
  try {
    load_torch_checkpoint(path);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "<no FormatError>";
}

}  // namespace

TEST_CASE("a torch.save state dict loads with values, dtypes, views and shared storage") {
  ScratchDir dir;
  const std::string path = dir.file("model.ckpt");
  write_zip(path, sd_members(sd_checkpoint_pickle()));

  NamedTensors sd = load_torch_checkpoint(path);
  REQUIRE(sd.size() == 3);
  CHECK(sd[0].first == "weight");
  CHECK(sd[1].first == "col");
  CHECK(sd[2].first == "bias");
  const at::Tensor& w = sd[0].second;
  const at::Tensor& col = sd[1].second;
  const at::Tensor& bias = sd[2].second;

  CHECK((w.scalar_type() == at::kFloat));
  CHECK((w.sizes() == at::IntArrayRef{3, 4}));
  CHECK(at::equal(w, at::arange(12, at::kFloat).reshape({3, 4}) * 0.5));
  CHECK((col.sizes() == at::IntArrayRef{3}));
  CHECK((col.strides() == at::IntArrayRef{4}));
  CHECK(col.storage_offset() == 1);
  CHECK(at::equal(col, w.select(1, 1)));
  // The view shares its storage with weight, as it did in Python.
  CHECK(col.storage().data() == w.storage().data());
  w.fill_(9);
  CHECK(col[2].item<float>() == 9.0f);

  CHECK((bias.scalar_type() == at::kHalf));
  CHECK(at::equal(bias.to(at::kFloat), at::tensor({1.0f, -2.0f, 0.25f})));
}

TEST_CASE("protocol 4 pickles: STACK_GLOBAL, MEMOIZE, FRAME, _rebuild_tensor_v3, nesting") {
  ScratchDir dir;
  const std::string path = dir.file("p4.pt");
  Pickle p(4);
  p.op('\x95');
  for (int i = 0; i < 8; ++i) p.b += '\0';  // FRAME (length unchecked, as in the spec)
  p.op('}').put(0).mark();
  p.str("model").op('}').put(1).mark();
  // _rebuild_tensor_v3(UntypedStorage(8 bytes), 0, (2, 2), (2, 1), False, OrderedDict(), torch.bfloat16)
  p.str("w").global("torch._utils", "_rebuild_tensor_v3");
  p.mark().mark().str("storage").global("torch", "UntypedStorage").str("k").str("cuda:0").integer(8).tuple();
  p.op('Q').integer(0).ints({2, 2}).ints({2, 1}).op('\x89').ordered_dict();
  p.global("torch", "bfloat16").tuple().op('R');
  p.op('u');
  p.str("step").integer(1234567890123);
  p.str("name").str("lora");
  p.op('u');
  at::Tensor want = at::tensor({1.5f, -3.0f, 0.125f, 64.0f}).to(at::kBFloat16).reshape({2, 2});
  write_zip(path, {{"p4/data.pkl", p.done()},
                   {"p4/data/k", std::string(reinterpret_cast<const char*>(want.data_ptr()), 8)}});
  NamedTensors sd = load_torch_checkpoint(path);
  REQUIRE(sd.size() == 1);
  CHECK(sd[0].first == "model.w");
  CHECK((sd[0].second.scalar_type() == at::kBFloat16));
  CHECK(at::equal(sd[0].second, want));
}

TEST_CASE("the unpickler refuses globals outside the allowlist, naming them") {
  ScratchDir dir;
  const std::string path = dir.file("evil.ckpt");
  SUBCASE("GLOBAL os.system") {
    Pickle p(2);
    p.global("os", "system").mark().str("echo pwned").tuple().op('R');
    write_zip(path, {{"evil/data.pkl", p.done()}});
    auto msg = load_error(path);
    CHECK(msg.find("refusing to load " + path) != std::string::npos);
    CHECK(msg.find("forbidden global 'os.system'") != std::string::npos);
    CHECK(msg.find("only tensors and plain containers are allowed") != std::string::npos);
  }
  SUBCASE("STACK_GLOBAL builtins.eval inside a state dict") {
    Pickle p(4);
    p.op('}').mark().str("x").global("builtins", "eval").mark().str("1").tuple().op('R').op('u');
    write_zip(path, {{"evil/data.pkl", p.done()}});
    CHECK(load_error(path).find("forbidden global 'builtins.eval'") != std::string::npos);
  }
  SUBCASE("calling an allowed class that is not a function") {
    Pickle p(2);
    p.global("torch", "FloatStorage").op(')').op('R');
    write_zip(path, {{"evil/data.pkl", p.done()}});
    CHECK(load_error(path).find("'torch.FloatStorage' cannot be called") != std::string::npos);
  }
  SUBCASE("opcodes torch never emits") {
    Pickle p(2);
    p.b += "i__main__\nX\n";  // INST
    write_zip(path, {{"evil/data.pkl", p.done()}});
    CHECK(load_error(path).find("not one torch.save emits") != std::string::npos);
  }
}

TEST_CASE("truncated and inconsistent checkpoints are refused clearly") {
  ScratchDir dir;
  const std::string path = dir.file("bad.ckpt");
  const std::string pkl = sd_checkpoint_pickle();

  SUBCASE("truncated pickle") {
    auto members = sd_members(pkl.substr(0, pkl.size() / 2));
    write_zip(path, members);
    auto msg = load_error(path);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("truncated") != std::string::npos);
  }
  SUBCASE("pickle without STOP") {
    write_zip(path, sd_members(pkl.substr(0, pkl.size() - 1)));
    CHECK(load_error(path).find("without a STOP opcode") != std::string::npos);
  }
  SUBCASE("truncated archive") {
    write_zip(path, sd_members(pkl));
    std::ifstream in(path, std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), {});
    in.close();
    SUBCASE("central directory cut off") {
      std::ofstream(path, std::ios::binary | std::ios::trunc) << all.substr(0, all.size() / 2);
      CHECK(load_error(path).find("truncated or corrupt") != std::string::npos);
    }
    SUBCASE("end record cut") {
      std::ofstream(path, std::ios::binary | std::ios::trunc) << all.substr(0, all.size() - 10);
      CHECK(load_error(path).find("truncated or corrupt") != std::string::npos);
    }
  }
  SUBCASE("storage shorter than declared") {
    auto members = sd_members(pkl);
    members[2].second.resize(40);
    write_zip(path, members);
    auto msg = load_error(path);
    CHECK(msg.find("tensor 'weight'") != std::string::npos);
    CHECK(msg.find("holds 40 bytes but the pickle declares 12 x F32 = 48 bytes") != std::string::npos);
  }
  SUBCASE("missing storage") {
    auto members = sd_members(pkl);
    members.erase(members.begin() + 3);
    write_zip(path, members);
    CHECK(load_error(path).find("tensor 'bias': its storage 'archive/data/1' is missing") !=
          std::string::npos);
  }
  SUBCASE("view reaching past its storage") {
    Pickle p(2);
    p.op('}').mark().str("w").tensor("FloatStorage", "0", 4, 2, {2, 2}, {2, 1}).op('u');
    write_zip(path, {{"a/data.pkl", p.done()}, {"a/data/0", floats({1, 2, 3, 4})}});
    CHECK(load_error(path).find("reaches past the end of its 16-byte storage") != std::string::npos);
  }
  SUBCASE("big-endian archive") {
    auto members = sd_members(pkl);
    members[1].second = "big";
    write_zip(path, members);
    CHECK(load_error(path).find("'big'-endian") != std::string::npos);
  }
  SUBCASE("zip without data.pkl") {
    write_zip(path, {{"x/constants.pkl", "."}});
    CHECK(load_error(path).find("no <archive>/data.pkl") != std::string::npos);
  }
  SUBCASE("a pickle that is not a torch.save file") {
    Pickle p(2);
    p.op('}');
    std::ofstream(path, std::ios::binary) << p.done();
    CHECK(load_error(path).find("no torch magic number") != std::string::npos);
  }
  SUBCASE("top level is not a dict") {
    Pickle p(2);
    p.op(']');
    write_zip(path, {{"a/data.pkl", p.done()}});
    CHECK(load_error(path).find("expected the checkpoint to hold a dict of tensors, found list") !=
          std::string::npos);
  }
}

TEST_CASE("pickle layer: memo, strings, bytes and ints decode as Python would") {
  Pickle p(2);
  p.mark().integer(-5).integer(70000).integer(-(std::int64_t(1) << 40)).str("héllo").put(3);
  p.op('h').b += '\x03';  // BINGET 3
  p.global("_codecs", "encode").str("\xc3\xbf\x01").str("latin1").op('\x86').op('R');
  p.op('N').op('\x88').op('G');
  const double x = 2.5;
  std::uint64_t bits;
  std::memcpy(&bits, &x, 8);
  for (int i = 7; i >= 0; --i) p.b += static_cast<char>((bits >> (8 * i)) & 0xFF);
  p.op('l');
  const std::string data = p.done();
  auto doc = pickle::unpickle(reinterpret_cast<const std::uint8_t*>(data.data()), data.size(), "mem");
  const auto& v = doc.root;
  using K = pickle::Value::Kind;
  REQUIRE(v->kind == K::List);
  REQUIRE(v->items.size() == 9);
  CHECK(v->items[0]->i == -5);
  CHECK(v->items[1]->i == 70000);
  CHECK(v->items[2]->i == -(std::int64_t(1) << 40));
  CHECK(v->items[3]->s == "héllo");
  CHECK(v->items[4] == v->items[3]);  // memo returns the same object
  CHECK(v->items[5]->kind == K::Bytes);
  CHECK(v->items[5]->s == std::string("\xff\x01"));
  CHECK(v->items[6]->kind == K::None);
  CHECK(v->items[7]->b == true);
  CHECK(v->items[8]->f == 2.5);
}

TEST_CASE("hostile nesting does not overflow the stack") {
  Pickle p(2);
  const int depth = 1000000;
  p.b += std::string(depth, '(');
  p.b += std::string(depth, 't');
  const std::string data = p.done();
  {
    auto doc = pickle::unpickle(reinterpret_cast<const std::uint8_t*>(data.data()), data.size(), "deep");
    CHECK(doc.root->kind == pickle::Value::Kind::Tuple);
    CHECK_THROWS_WITH_AS(pickle::state_dict_tensors(doc.root, "deep"), doctest::Contains("found tuple"),
                         FormatError);
  }  // destroying a million nested tuples must not recurse
  // A list appended to itself (through the memo) is a cycle; releasing it must not leak or loop.
  Pickle c(2);
  c.op(']').put(0).op('h').b += '\0';
  c.op('a');
  const std::string cyc = c.done();
  auto doc = pickle::unpickle(reinterpret_cast<const std::uint8_t*>(cyc.data()), cyc.size(), "cycle");
  REQUIRE(doc.root->items.size() == 1);
  CHECK(doc.root->items[0] == doc.root);
}

TEST_CASE("mutated checkpoints fail only with FormatError") {
  ScratchDir dir;
  const std::string path = dir.file("fuzz.ckpt");
  const std::string good = sd_checkpoint_pickle();
  auto members = sd_members(good);
  std::mt19937 rng(42);
  const char interesting[] = {'(', ')', ']', '}', 't', 'R', 'b', 'Q', 'u', 's', 'a', 'e', 'h', 'q',
                              'K', 'J', 'X', '.', '\x85', '\x86', '\x87', '\x93', '\x94', '\x8a'};
  int loaded = 0, refused = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string m = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % m.size();
      switch (rng() % 4) {
        case 0: m[at] = static_cast<char>(rng()); break;
        case 1: m[at] = interesting[rng() % sizeof interesting]; break;
        case 2: m.erase(at, 1 + rng() % 4); break;
        default: m.insert(at, 1, interesting[rng() % sizeof interesting]); break;
      }
      if (m.empty()) m = ".";
    }
    try {
      auto doc = pickle::unpickle(reinterpret_cast<const std::uint8_t*>(m.data()), m.size(), "fuzz");
      auto refs = pickle::state_dict_tensors(doc.root, "fuzz");
      if (iter % 5 == 0) {  // the ATen side too: bounds and sizes against real storages
        members[0].second = m;
        write_zip(path, members);
        load_torch_checkpoint(path);
      }
      ++loaded;
    } catch (const FormatError&) {
      ++refused;
    } catch (const std::exception& e) {
      FAIL("iteration " << iter << " threw a non-FormatError: " << e.what());
    }
  }
  CHECK(refused > 0);
  MESSAGE("mutations loaded: " << loaded << ", refused: " << refused);
}

namespace {

// A legacy (torch < 1.6) file: magic, protocol version, sys info, object, keys, raw storages.
// `w` is a 2x3 float tensor on storage "7"; `v` views elements 2..4 of it through a legacy
// storage slice (view key "7v", offset 2, size 3) with its own offset 1.
std::string legacy_file(bool truncate) {
  std::string f("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
  f += Pickle(2).integer(1001).done();
  Pickle info(2);
  info.op('}').mark().str("protocol_version").integer(1001).str("little_endian").op('\x88');
  info.str("type_sizes").op('}').mark().str("short").integer(2).str("int").integer(4).op('u').op('u');
  f += info.done();
  Pickle obj(2);
  obj.op('}').mark().str("state_dict").ordered_dict().mark();
  auto tensor6 = [&](const std::string& name, bool view, std::int64_t off, std::vector<std::int64_t> size,
                     std::vector<std::int64_t> stride) {
    obj.str(name).global("torch._utils", "_rebuild_tensor_v2").mark();
    obj.mark().str("storage").global("torch", "FloatStorage").str("7").str("cpu").integer(6);
    if (view)
      obj.mark().str("7v").integer(2).integer(3).tuple();
    else
      obj.op('N');
    obj.tuple().op('Q').integer(off).ints(size).ints(stride).op('\x89').ordered_dict().tuple().op('R');
  };
  tensor6("w", false, 0, {2, 3}, {3, 1});
  tensor6("v", true, 1, {2}, {1});
  obj.op('u').op('u');
  f += obj.done();
  Pickle keys(2);
  keys.mark().str("7").op('l');
  f += keys.done();
  const std::int64_t count = 6;
  f += std::string(reinterpret_cast<const char*>(&count), 8);
  f += floats({0, 1, 2, 3, 4, 5});
  if (truncate) f.resize(f.size() - 4);
  return f;
}

}  // namespace

TEST_CASE("legacy (pre-zip) torch.save files load, storage slices included") {
  ScratchDir dir;
  const std::string path = dir.file("old.pth");
  std::ofstream(path, std::ios::binary) << legacy_file(false);
  NamedTensors sd = load_torch_checkpoint(path);
  REQUIRE(sd.size() == 2);
  CHECK(sd[0].first == "w");
  CHECK(at::equal(sd[0].second, at::arange(6, at::kFloat).reshape({2, 3})));
  CHECK(sd[1].first == "v");
  CHECK(sd[1].second.storage_offset() == 3);  // slice offset 2 + tensor offset 1
  CHECK(at::equal(sd[1].second, at::tensor({3.0f, 4.0f})));
  CHECK(sd[1].second.storage().data() == sd[0].second.storage().data());

  std::ofstream(path, std::ios::binary | std::ios::trunc) << legacy_file(true);
  auto msg = load_error(path);
  CHECK(msg.find("storage '7'") != std::string::npos);
  CHECK(msg.find("truncated") != std::string::npos);
}

TEST_CASE("fuzz regression: a zip with a broken central directory is a FormatError, not 'No such file'") {
  // Found by tests/fuzz (fuzz_torch_checkpoint): libzip reports ZIP_ER_NOENT for this archive
  // (bytes inserted before its central directory), which was turned into "cannot open
  // checkpoint ...: No such file" (std::runtime_error) for a file that exists.
  const std::string file =
      std::string(SUMI_SOURCE_DIR) + "/tests/fuzz/regressions/torch_checkpoint/zip-bad-central-directory.ckpt";
  CHECK_THROWS_WITH_AS(load_torch_checkpoint(file), doctest::Contains("truncated or corrupt"), FormatError);
}

#include "sumi/io/pickle.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "sumi/io/safetensors.h"  // FormatError

namespace sumi::io::pickle {
namespace {

using Kind = Value::Kind;

void break_cycles(std::vector<ValuePtr>& arena) {
  for (auto& v : arena) {
    v->items.clear();
    v->entries.clear();
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Tensor: return "tensor";
    case Kind::Storage: return "storage";
    case Kind::Global: return "global";
    case Kind::Opaque: return "inert object";
  }
  return "?";
}

enum class Role {
  RebuildV2, RebuildV3, RebuildParameter, RebuildFromType, OrderedDict, CodecsEncode,
  StorageType, Dtype, Inert
};

struct GlobalInfo {
  Role role;
  std::string dtype;  // StorageType / Dtype
};

// The allowlist. Everything here is interpreted as data by this file; nothing is imported.
const std::map<std::string, GlobalInfo>& allowed_globals() {
  static const std::map<std::string, GlobalInfo> table = [] {
    std::map<std::string, GlobalInfo> t = {
        {"torch._utils._rebuild_tensor_v2", {Role::RebuildV2, ""}},
        {"torch._utils._rebuild_tensor_v3", {Role::RebuildV3, ""}},
        {"torch._utils._rebuild_parameter", {Role::RebuildParameter, ""}},
        {"torch._utils._rebuild_parameter_with_state", {Role::RebuildParameter, ""}},
        {"torch._tensor._rebuild_from_type_v2", {Role::RebuildFromType, ""}},
        {"collections.OrderedDict", {Role::OrderedDict, ""}},
        {"_codecs.encode", {Role::CodecsEncode, ""}},
        {"torch.UntypedStorage", {Role::StorageType, "U8"}},
    };
    const std::pair<const char*, const char*> storages[] = {
        {"FloatStorage", "F32"}, {"HalfStorage", "F16"},  {"BFloat16Storage", "BF16"},
        {"DoubleStorage", "F64"}, {"LongStorage", "I64"}, {"IntStorage", "I32"},
        {"ShortStorage", "I16"}, {"CharStorage", "I8"},   {"ByteStorage", "U8"},
        {"BoolStorage", "BOOL"}};
    for (auto [name, dt] : storages) t[std::string("torch.") + name] = {Role::StorageType, dt};
    const std::pair<const char*, const char*> dtypes[] = {
        {"float64", "F64"}, {"float32", "F32"}, {"float16", "F16"},
        {"bfloat16", "BF16"}, {"int64", "I64"}, {"int32", "I32"},
        {"int16", "I16"},   {"int8", "I8"},     {"uint8", "U8"},
        {"bool", "BOOL"},   {"float8_e4m3fn", "F8_E4M3"}, {"float8_e5m2", "F8_E5M2"}};
    for (auto [name, dt] : dtypes) t[std::string("torch.") + name] = {Role::Dtype, dt};
    // Harmless companions of SD state dicts; see pickle.h.
    for (const char* name :
         {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
          "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "builtins.set",
          "builtins.frozenset", "__builtin__.set", "__builtin__.frozenset", "torch.Size", "torch.device", "torch.Tensor",
          "torch.nn.parameter.Parameter"})
      t[name] = {Role::Inert, ""};
    return t;
  }();
  return table;
}

// torch types that are legitimate but have no safetensors/sumi equivalent.
bool is_unsupported_torch_type(const std::string& qualified) {
  static const std::set<std::string> names = {
      "torch.complex32", "torch.complex64", "torch.complex128", "torch.uint16",
      "torch.uint32", "torch.uint64", "torch.ComplexFloatStorage", "torch.ComplexDoubleStorage",
      "torch.QInt8Storage", "torch.QUInt8Storage", "torch.QInt32Storage",
      "torch._utils._rebuild_qtensor", "torch._utils._rebuild_sparse_tensor",
      "torch._utils._rebuild_nested_tensor", "torch._utils._rebuild_meta_tensor_no_storage",
      "torch._utils._rebuild_wrapper_subclass", "torch._utils._rebuild_tensor"};
  return names.count(qualified) != 0;
}

// Decodes UTF-8 into code points; false on malformed input.
bool utf8_to_latin1(const std::string& in, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size();) {
    const auto c = static_cast<unsigned char>(in[i]);
    std::uint32_t cp;
    std::size_t len;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      len = 3;
    } else {
      return false;  // 4-byte sequences are all above U+00FF
    }
    if (i + len > in.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(in[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp > 0xFF) return false;
    out.push_back(static_cast<char>(cp));
    i += len;
  }
  return true;
}

class Unpickler {
 public:
  Unpickler(const std::uint8_t* data, std::size_t size, const std::string& source)
      : p_(data), n_(size), src_(source) {}
  ~Unpickler() { break_cycles(arena_); }
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  Unpickled run(std::size_t* consumed) {
    while (pos_ < n_) {
      op_pos_ = pos_;
      op_ = p_[pos_++];
      if (op_ == '.') {  // STOP
        Unpickled result;
        result.root = pop();
        stack_.clear();
        memo_.clear();
        result.arena = std::move(arena_);
        arena_.clear();
        result.storages = std::move(storages_);
        if (consumed) *consumed = pos_;
        return result;
      }
      step();
    }
    throw FormatError("'" + src_ + "': the pickle ends at byte " + std::to_string(n_) +
                      " without a STOP opcode; the file is truncated or corrupt");
  }

 private:
  // "'h' (0x68)": the pickletools-style character plus its code.
  std::string op_text() const {
    char buf[16];
    if (op_ >= 0x20 && op_ < 0x7f)
      std::snprintf(buf, sizeof buf, "'%c' (0x%02x)", op_, op_);
    else
      std::snprintf(buf, sizeof buf, "0x%02x", op_);
    return buf;
  }

  [[noreturn]] void fail(const std::string& what) const {
    const std::string op = op_text();
    throw FormatError("'" + src_ + "': malformed pickle at byte " + std::to_string(op_pos_) +
                      " (opcode " + op + "): " + what);
  }

  void need(std::uint64_t k) const {
    if (k > n_ - pos_) {
      const std::string op = op_text();
      throw FormatError("'" + src_ + "': the pickle ends unexpectedly: opcode " + op +
                        " at byte " + std::to_string(op_pos_) + " needs " + std::to_string(k) +
                        " more bytes, only " + std::to_string(n_ - pos_) +
                        " remain; the file is truncated or corrupt");
    }
  }
  std::uint64_t uint_le(int bytes) {
    need(static_cast<std::uint64_t>(bytes));
    std::uint64_t v = 0;
    for (int k = 0; k < bytes; ++k) v |= static_cast<std::uint64_t>(p_[pos_ + k]) << (8 * k);
    pos_ += static_cast<std::size_t>(bytes);
    return v;
  }
  std::string take(std::uint64_t k) {
    need(k);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<std::size_t>(k));
    pos_ += static_cast<std::size_t>(k);
    return s;
  }
  std::string line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) need(n_ - pos_ + 1);  // reports truncation
    const auto end = static_cast<std::size_t>(static_cast<const std::uint8_t*>(nl) - p_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), end - pos_);
    pos_ = end + 1;
    return s;
  }
  std::int64_t decimal(const std::string& text) {
    std::string t = text;
    if (!t.empty() && t.back() == 'L') t.pop_back();
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno == ERANGE) fail("bad integer literal '" + text + "'");
    return v;
  }

  // Every value is also held by the arena, which lets break_cycles undo any reference cycle a
  // pickle built through the memo.
  ValuePtr make(Kind k) {
    auto v = std::make_shared<Value>();
    v->kind = k;
    arena_.push_back(v);
    return v;
  }

  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop() {
    if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size()))
      fail("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size()))
      fail("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<long>(m)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  ValuePtr sequence(Kind k, std::vector<ValuePtr> items) {
    ValuePtr v = make(k);
    v->items = std::move(items);
    return v;
  }
  ValuePtr memo_get(std::uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo entry " + std::to_string(idx) + " was never stored");
    return it->second;
  }
  void memo_put(std::uint64_t idx) { memo_[idx] = top(); }

  ValuePtr global(const std::string& module, const std::string& name) {
    const std::string q = module + "." + name;
    if (!allowed_globals().count(q)) {
      if (is_unsupported_torch_type(q)) {
        throw FormatError("'" + src_ + "': the checkpoint uses '" + q +
                          "', a tensor kind sumi does not load (dense real-valued tensors only)");
      }
      throw FormatError("refusing to load " + src_ + ": pickle references forbidden global '" +
                        q + "'; only tensors and plain containers are allowed");
    }
    ValuePtr v = make(Kind::Global);
    v->s = q;
    return v;
  }
  const GlobalInfo& info(const Value& g) const { return allowed_globals().at(g.s); }

  void add_items(ValuePtr& target, std::vector<ValuePtr> items) {
    if (target->kind == Kind::Opaque) return;  // state of an inert object: ignored
    if (target->kind != Kind::List) fail(std::string("cannot append to a ") + kind_name(target->kind));
    for (auto& v : items) target->items.push_back(std::move(v));
  }
  void set_items(ValuePtr& target, std::vector<ValuePtr> kv) {
    if (kv.size() % 2) fail("odd number of items for a dict");
    if (target->kind == Kind::Opaque) return;
    if (target->kind != Kind::Dict) fail(std::string("cannot set items on a ") + kind_name(target->kind));
    for (std::size_t k = 0; k < kv.size(); k += 2)
      target->entries.emplace_back(std::move(kv[k]), std::move(kv[k + 1]));
  }

  std::vector<std::int64_t> int_tuple(const ValuePtr& v, const char* what) {
    if (v->kind != Kind::Tuple && v->kind != Kind::List) fail(std::string(what) + " is not a tuple");
    std::vector<std::int64_t> out;
    for (const auto& e : v->items) {
      if (e->kind != Kind::Int || e->i < 0) fail(std::string(what) + " holds a non-integer or negative entry");
      out.push_back(e->i);
    }
    return out;
  }

  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& a, bool v3) {
    const char* fn = v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2";
    if (a.size() < (v3 ? 7u : 6u)) fail(std::string(fn) + " called with too few arguments");
    if (a[0]->kind != Kind::Storage) fail(std::string(fn) + ": first argument is not a storage");
    if (a[1]->kind != Kind::Int || a[1]->i < 0) fail(std::string(fn) + ": bad storage offset");
    auto t = std::make_shared<TensorRef>();
    t->storage = a[0]->storage;
    t->dtype = t->storage->dtype;
    t->offset = a[1]->i;
    t->size = int_tuple(a[2], "tensor size");
    t->stride = int_tuple(a[3], "tensor stride");
    if (t->size.size() != t->stride.size()) fail(std::string(fn) + ": size and stride differ in length");
    if (t->size.size() > 64) fail(std::string(fn) + ": more than 64 dimensions");
    if (v3) {
      if (a[6]->kind != Kind::Global || info(*a[6]).role != Role::Dtype)
        fail("_rebuild_tensor_v3: seventh argument is not a torch dtype");
      t->dtype = info(*a[6]).dtype;
    }
    ValuePtr v = make(Kind::Tensor);
    v->tensor = std::move(t);
    return v;
  }

  ValuePtr call(const ValuePtr& fn, const ValuePtr& args, int depth = 0) {
    if (depth > 4) fail("rebuild calls nested too deeply");
    if (fn->kind != Kind::Global) fail(std::string("REDUCE on a ") + kind_name(fn->kind));
    if (args->kind != Kind::Tuple) fail("REDUCE arguments are not a tuple");
    const auto& a = args->items;
    const GlobalInfo& g = info(*fn);
    switch (g.role) {
      case Role::RebuildV2: return rebuild_tensor(a, false);
      case Role::RebuildV3: return rebuild_tensor(a, true);
      case Role::RebuildParameter:
        if (a.empty() || a[0]->kind != Kind::Tensor) fail(fn->s + " expects a tensor");
        return a[0];
      case Role::RebuildFromType:
        // (rebuild function, type, its arguments, attribute dict): the type and attributes
        // only matter to Python; the tensor is what the inner rebuild call describes.
        if (a.size() < 3) fail(fn->s + " called with too few arguments");
        return call(a[0], a[2], depth + 1);
      case Role::OrderedDict: {
        ValuePtr d = make(Kind::Dict);
        if (!a.empty()) {
          if (a[0]->kind != Kind::List && a[0]->kind != Kind::Tuple) fail("OrderedDict(x): x is not a sequence");
          for (const auto& kv : a[0]->items) {
            if (kv->kind != Kind::Tuple || kv->items.size() != 2) fail("OrderedDict item is not a pair");
            d->entries.emplace_back(kv->items[0], kv->items[1]);
          }
        }
        return d;
      }
      case Role::CodecsEncode: {
        // Protocol 2 stores bytes as _codecs.encode(<latin-1 text>, 'latin1').
        if (a.size() != 2 || a[0]->kind != Kind::String || a[1]->kind != Kind::String)
          fail("_codecs.encode expects (str, encoding)");
        if (a[1]->s != "latin1" && a[1]->s != "latin-1") fail("_codecs.encode with encoding '" + a[1]->s + "'");
        ValuePtr b = make(Kind::Bytes);
        if (!utf8_to_latin1(a[0]->s, b->s)) fail("_codecs.encode: text is not latin-1");
        return b;
      }
      case Role::Inert: {
        ValuePtr o = make(Kind::Opaque);
        o->s = fn->s + "(...)";
        return o;
      }
      case Role::StorageType:
      case Role::Dtype: break;
    }
    fail("'" + fn->s + "' cannot be called");
  }

  ValuePtr persistent_load(const ValuePtr& pid) {
    // torch.save's zip format uses 5-tuples; the legacy format adds view metadata.
    if (pid->kind != Kind::Tuple || (pid->items.size() != 5 && pid->items.size() != 6))
      fail("persistent id is not a tuple ('storage', type, key, location, numel[, view])");
    const auto& t = pid->items;
    if (t[0]->kind != Kind::String || t[0]->s != "storage")
      fail("persistent id of an unknown kind (expected 'storage')");
    if (t[1]->kind != Kind::Global || info(*t[1]).role != Role::StorageType)
      fail("persistent id names no storage type");
    auto s = std::make_shared<StorageRef>();
    s->dtype = info(*t[1]).dtype;
    if (t[2]->kind == Kind::String)
      s->key = t[2]->s;
    else if (t[2]->kind == Kind::Int)
      s->key = std::to_string(t[2]->i);
    else
      fail("storage key is neither str nor int");
    if (s->key.empty() || s->key.find('/') != std::string::npos || s->key.find("..") != std::string::npos)
      fail("storage key '" + s->key + "' is not a plain name");
    if (t[3]->kind == Kind::String) s->location = t[3]->s;
    if (t[4]->kind != Kind::Int || t[4]->i < 0) fail("storage size is not a non-negative int");
    s->numel = t[4]->i;
    if (t.size() == 6 && t[5]->kind != Kind::None) {
      // (view_key, offset, size): a slice of the root storage, in its elements
      const auto& m = t[5]->items;
      if (t[5]->kind != Kind::Tuple || m.size() != 3 || m[1]->kind != Kind::Int ||
          m[2]->kind != Kind::Int || m[1]->i < 0 || m[2]->i < 0)
        fail("storage view metadata is not (key, offset, size)");
      if (m[1]->i > s->numel || m[2]->i > s->numel - m[1]->i)
        fail("storage view [" + std::to_string(m[1]->i) + ", +" + std::to_string(m[2]->i) +
             ") lies outside its storage of " + std::to_string(s->numel) + " elements");
      s->view_offset = m[1]->i;
      s->view_numel = m[2]->i;
    }
    storages_.push_back(s);
    ValuePtr v = make(Kind::Storage);
    v->storage = std::move(s);
    return v;
  }

  // One opcode, by family: each handler returns false for an opcode not of its family.
  void step() {
    if (stack_op() || global_or_memo_op() || container_op() || int_op() || literal_op() || object_op()) return;
    fail("opcode " + op_text() + " is not one torch.save emits; refusing to interpret it");
  }

  // Protocol, framing and the stack itself: PROTO, FRAME, MARK, POP, POP_MARK, DUP.
  bool stack_op() {
    switch (op_) {
      case 0x80: {  // PROTO
        const auto proto = uint_le(1);
        if (proto > 5) fail("pickle protocol " + std::to_string(proto) + " is newer than 5");
        return true;
      }
      case 0x95: uint_le(8); return true;  // FRAME: framing only, no meaning
      case '(': marks_.push_back(stack_.size()); return true;
      case '0':  // POP
        if (!marks_.empty() && marks_.back() == stack_.size())
          marks_.pop_back();
        else
          pop();
        return true;
      case '1': pop_mark(); return true;  // POP_MARK
      case '2': push(top()); return true;  // DUP
      default: return false;
    }
  }

  // Globals (checked against the allowlist) and the memo.
  bool global_or_memo_op() {
    switch (op_) {
      case 'c': {  // GLOBAL
        std::string module = line();
        std::string name = line();
        push(global(module, name));
        return true;
      }
      case 0x93: {  // STACK_GLOBAL
        ValuePtr name = pop(), module = pop();
        if (name->kind != Kind::String || module->kind != Kind::String)
          fail("STACK_GLOBAL needs two strings");
        push(global(module->s, name->s));
        return true;
      }

      case 'p': memo_put(static_cast<std::uint64_t>(decimal(line()))); return true;  // PUT
      case 'q': memo_put(uint_le(1)); return true;                                     // BINPUT
      case 'r': memo_put(uint_le(4)); return true;                                     // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); return true;                                  // MEMOIZE
      case 'g': push(memo_get(static_cast<std::uint64_t>(decimal(line())))); return true;
      case 'h': push(memo_get(uint_le(1))); return true;
      case 'j': push(memo_get(uint_le(4))); return true;
      default: return false;
    }
  }

  // Tuples, lists, dicts and sets (kept as lists), and filling them.
  bool container_op() {
    switch (op_) {
      case '}': push(make(Kind::Dict)); return true;
      case ']': push(make(Kind::List)); return true;
      case ')': push(make(Kind::Tuple)); return true;
      case 0x8f: push(make(Kind::List)); return true;  // EMPTY_SET, kept as a list
      case 't': push(sequence(Kind::Tuple, pop_mark())); return true;
      case 0x85: {
        ValuePtr a = pop();
        push(sequence(Kind::Tuple, {a}));
        return true;
      }
      case 0x86: {
        ValuePtr b = pop(), a = pop();
        push(sequence(Kind::Tuple, {a, b}));
        return true;
      }
      case 0x87: {
        ValuePtr c = pop(), b = pop(), a = pop();
        push(sequence(Kind::Tuple, {a, b, c}));
        return true;
      }
      case 'l': push(sequence(Kind::List, pop_mark())); return true;
      case 0x91: push(sequence(Kind::List, pop_mark())); return true;  // FROZENSET
      case 'd': {
        ValuePtr d = make(Kind::Dict);
        set_items(d, pop_mark());
        push(d);
        return true;
      }
      case 's': {  // SETITEM
        ValuePtr v = pop(), k = pop();
        set_items(top(), {k, v});
        return true;
      }
      case 'u': {  // SETITEMS
        auto kv = pop_mark();
        set_items(top(), std::move(kv));
        return true;
      }
      case 'a': {  // APPEND
        ValuePtr v = pop();
        add_items(top(), {v});
        return true;
      }
      case 'e':     // APPENDS
      case 0x90: {  // ADDITEMS
        auto items = pop_mark();
        add_items(top(), std::move(items));
        return true;
      }
      default: return false;
    }
  }

  // Integers, binary and text (INT's "01" / "00" are protocol 0's bools).
  bool int_op() {
    switch (op_) {
      case 'J': {
        ValuePtr v = make(Kind::Int);
        v->i = static_cast<std::int32_t>(static_cast<std::uint32_t>(uint_le(4)));
        push(v);
        return true;
      }
      case 'K':
      case 'M': {
        ValuePtr v = make(Kind::Int);
        v->i = static_cast<std::int64_t>(uint_le(op_ == 'K' ? 1 : 2));
        push(v);
        return true;
      }
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        const std::uint64_t len = uint_le(op_ == 0x8a ? 1 : 4);
        if (len > 8) fail("integer wider than 64 bits");
        ValuePtr v = make(Kind::Int);
        if (len > 0) {
          std::uint64_t raw = uint_le(static_cast<int>(len));
          if (len < 8 && (raw >> (8 * len - 1)) & 1) raw |= ~0ull << (8 * len);  // sign-extend
          v->i = static_cast<std::int64_t>(raw);
        }
        push(v);
        return true;
      }
      case 'I': {
        const std::string t = line();
        if (t == "01" || t == "00") {
          ValuePtr v = make(Kind::Bool);
          v->b = t == "01";
          push(v);
        } else {
          ValuePtr v = make(Kind::Int);
          v->i = decimal(t);
          push(v);
        }
        return true;
      }
      case 'L': {
        ValuePtr v = make(Kind::Int);
        v->i = decimal(line());
        push(v);
        return true;
      }
      default: return false;
    }
  }

  // Floats, strings, bytes, None and bools.
  bool literal_op() {
    switch (op_) {
      case 'G': {  // BINFLOAT, big-endian
        need(8);
        std::uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | p_[pos_ + static_cast<std::size_t>(k)];
        pos_ += 8;
        ValuePtr v = make(Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        return true;
      }
      case 'F': {
        const std::string t = line();
        char* end = nullptr;
        ValuePtr v = make(Kind::Float);
        v->f = std::strtod(t.c_str(), &end);
        if (t.empty() || *end != '\0') fail("bad float literal '" + t + "'");
        push(v);
        return true;
      }

      case 'X':     // BINUNICODE
      case 0x8c:    // SHORT_BINUNICODE
      case 0x8d:    // BINUNICODE8
      case 'T':     // BINSTRING
      case 'U': {   // SHORT_BINSTRING
        const int w = op_ == 0x8c || op_ == 'U' ? 1 : op_ == 0x8d ? 8 : 4;
        std::uint64_t len = uint_le(w);
        if (op_ == 'T' && (len >> 31)) fail("negative string length");
        ValuePtr v = make(Kind::String);
        v->s = take(len);
        push(v);
        return true;
      }
      case 'B':     // BINBYTES
      case 'C':     // SHORT_BINBYTES
      case 0x8e:    // BINBYTES8
      case 0x96: {  // BYTEARRAY8
        const int w = op_ == 'C' ? 1 : op_ == 'B' ? 4 : 8;
        std::uint64_t len = uint_le(w);
        ValuePtr v = make(Kind::Bytes);
        v->s = take(len);
        push(v);
        return true;
      }

      case 'N': push(make(Kind::None)); return true;
      case 0x88:
      case 0x89: {
        ValuePtr v = make(Kind::Bool);
        v->b = op_ == 0x88;
        push(v);
        return true;
      }
      default: return false;
    }
  }

  // Calls, attribute state, persistent ids and instances: only what the allowlist permits.
  bool object_op() {
    switch (op_) {
      case 'R': {  // REDUCE
        ValuePtr args = pop(), fn = pop();
        push(call(fn, args));
        return true;
      }
      case 'b': {  // BUILD: sets attributes; none of the allowed objects needs them
        pop();
        const Kind k = top()->kind;
        if (k != Kind::Dict && k != Kind::Tensor && k != Kind::Opaque)
          fail(std::string("BUILD on a ") + kind_name(k));
        return true;
      }
      case 'Q': {  // BINPERSID
        ValuePtr pid = pop();
        push(persistent_load(pid));
        return true;
      }
      case 0x81:    // NEWOBJ
      case 0x92: {  // NEWOBJ_EX
        if (op_ == 0x92) pop();  // kwargs
        pop();                   // args
        ValuePtr cls = pop();
        if (cls->kind != Kind::Global || info(*cls).role != Role::Inert)
          fail("cannot instantiate " + (cls->kind == Kind::Global ? "'" + cls->s + "'" : std::string(kind_name(cls->kind))));
        ValuePtr o = make(Kind::Opaque);
        o->s = cls->s + "()";
        push(o);
        return true;
      }
      default: return false;
    }
  }

  const std::uint8_t* p_;
  std::size_t n_;
  const std::string& src_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::uint8_t op_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, ValuePtr> memo_;
  std::vector<ValuePtr> arena_;
  std::vector<std::shared_ptr<const StorageRef>> storages_;
};

void flatten(const Value& dict, const std::string& prefix, int depth, const std::string& source,
             std::set<std::string>& seen,
             std::vector<std::pair<std::string, std::shared_ptr<const TensorRef>>>& out) {
  if (depth > 32) {
    throw FormatError("'" + source + "': dicts nested more than 32 deep under '" + prefix +
                      "' (cyclic or corrupt checkpoint)");
  }
  for (const auto& [k, v] : dict.entries) {
    if (k->kind != Kind::String) continue;
    const std::string name = prefix + k->s;
    if (v->kind == Kind::Tensor) {
      if (!seen.insert(name).second)
        throw FormatError("'" + source + "': two tensors flatten to the same name '" + name + "'");
      out.emplace_back(name, v->tensor);
    } else if (v->kind == Kind::Dict) {
      flatten(*v, name + ".", depth + 1, source, seen, out);
    }
  }
}

}  // namespace

Unpickled::~Unpickled() { break_cycles(arena); }

Unpickled unpickle(const std::uint8_t* data, std::size_t size, const std::string& source,
                   std::size_t* consumed) {
  return Unpickler(data, size, source).run(consumed);
}

std::vector<std::pair<std::string, std::shared_ptr<const TensorRef>>> state_dict_tensors(
    const ValuePtr& root, const std::string& source) {
  if (!root || root->kind != Kind::Dict) {
    throw FormatError("'" + source + "': expected the checkpoint to hold a dict of tensors, found " +
                      (root ? kind_name(root->kind) : "nothing"));
  }
  const Value* top = root.get();
  for (const auto& [k, v] : root->entries) {
    if (k->kind == Kind::String && k->s == "state_dict" && v->kind == Kind::Dict) {
      top = v.get();
      break;
    }
  }
  std::vector<std::pair<std::string, std::shared_ptr<const TensorRef>>> out;
  std::set<std::string> seen;
  flatten(*top, "", 0, source, seen, out);
  return out;
}

}  // namespace sumi::io::pickle

#include "sumi/recipe/value.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace sumi::recipe {

namespace {
Value with_origin(std::string origin) {
  Value v;
  v.set_origin(std::move(origin));
  return v;
}

[[noreturn]] void wrong_kind(const Value& v, const char* wanted) {
  throw RecipeError(std::string("expected ") + wanted + ", found " + v.kind_name() + " " +
                    v.text() + " (" + v.origin() + ")");
}
}  // namespace

Value Value::null(std::string origin) { return with_origin(std::move(origin)); }

Value Value::boolean(bool b, std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}

Value Value::integer(int64_t i, std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}

Value Value::real(double d, std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::Double;
  v.d_ = d;
  return v;
}

Value Value::string(std::string s, std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::String;
  v.s_ = std::move(s);
  return v;
}

Value Value::array(std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::Array;
  return v;
}

Value Value::table(std::string origin) {
  Value v = with_origin(std::move(origin));
  v.kind_ = Kind::Table;
  return v;
}

bool Value::as_bool() const {
  if (kind_ != Kind::Bool) wrong_kind(*this, "a boolean");
  return b_;
}

int64_t Value::as_int() const {
  if (kind_ != Kind::Int) wrong_kind(*this, "an integer");
  return i_;
}

double Value::as_double() const {
  if (kind_ == Kind::Int) return static_cast<double>(i_);
  if (kind_ != Kind::Double) wrong_kind(*this, "a number");
  return d_;
}

const std::string& Value::as_string() const {
  if (kind_ != Kind::String) wrong_kind(*this, "a string");
  return s_;
}

const std::vector<Value>& Value::items() const {
  if (kind_ != Kind::Array) wrong_kind(*this, "an array");
  return items_;
}

std::vector<Value>& Value::items() {
  if (kind_ != Kind::Array) wrong_kind(*this, "an array");
  return items_;
}

void Value::push_back(Value v) {
  if (kind_ != Kind::Array) wrong_kind(*this, "an array");
  items_.push_back(std::move(v));
}

const std::vector<std::string>& Value::keys() const {
  if (kind_ != Kind::Table) wrong_kind(*this, "a table");
  return keys_;
}

const Value* Value::find(std::string_view key) const {
  if (kind_ != Kind::Table) return nullptr;
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key) return &items_[i];
  return nullptr;
}

Value* Value::find(std::string_view key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->find(key));
}

Value& Value::set(std::string key, Value v) {
  if (kind_ != Kind::Table) wrong_kind(*this, "a table");
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) {
      items_[i] = std::move(v);
      return items_[i];
    }
  }
  keys_.push_back(std::move(key));
  items_.push_back(std::move(v));
  return items_.back();
}

bool Value::erase(std::string_view key) {
  if (kind_ != Kind::Table) return false;
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) {
      keys_.erase(keys_.begin() + static_cast<std::ptrdiff_t>(i));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
  }
  return false;
}

size_t Value::size() const {
  return (kind_ == Kind::Array || kind_ == Kind::Table) ? items_.size() : 0;
}

const char* Value::kind_name(Kind k) {
  switch (k) {
    case Kind::Null: return "null";
    case Kind::Bool: return "boolean";
    case Kind::Int: return "integer";
    case Kind::Double: return "float";
    case Kind::String: return "string";
    case Kind::Array: return "array";
    case Kind::Table: return "table";
  }
  return "?";
}

const char* Value::kind_name() const { return kind_name(kind_); }

std::string format_double(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string quote_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string Value::text() const {
  switch (kind_) {
    case Kind::Null: return "null";
    case Kind::Bool: return b_ ? "true" : "false";
    case Kind::Int: return std::to_string(i_);
    case Kind::Double: return format_double(d_);
    case Kind::String: return quote_string(s_);
    case Kind::Array: {
      std::string out = "[";
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i) out += ", ";
        out += items_[i].text();
      }
      return out + "]";
    }
    case Kind::Table: {
      if (items_.empty()) return "{}";
      std::string out = "{ ";
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i) out += ", ";
        out += keys_[i] + " = " + items_[i].text();
      }
      return out + " }";
    }
  }
  return "";
}

bool Value::operator==(const Value& o) const {
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::Null: return true;
    case Kind::Bool: return b_ == o.b_;
    case Kind::Int: return i_ == o.i_;
    case Kind::Double: return d_ == o.d_ || (std::isnan(d_) && std::isnan(o.d_));
    case Kind::String: return s_ == o.s_;
    case Kind::Array: return items_ == o.items_;
    case Kind::Table: return keys_ == o.keys_ && items_ == o.items_;
  }
  return false;
}

}  // namespace sumi::recipe

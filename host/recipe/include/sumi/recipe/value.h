// The recipe value tree: what a TOML or YAML recipe, a kohya config file and command-line
// flags all become before validation. Every value remembers where it came from, so every
// later error can point at a file and line (or a flag).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::recipe {

// Every user-facing recipe problem. The message is complete: it names the file/key/flag,
// what was expected and what was found.
class RecipeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Kind { Null, Bool, Int, Double, String, Array, Table };

  Value() = default;
  static Value null(std::string origin);
  static Value boolean(bool b, std::string origin);
  static Value integer(int64_t i, std::string origin);
  static Value real(double d, std::string origin);
  static Value string(std::string s, std::string origin);
  static Value array(std::string origin);
  static Value table(std::string origin);

  Kind kind() const { return kind_; }
  bool is_table() const { return kind_ == Kind::Table; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Double; }

  // Where the value came from: "recipe.toml:12", "--network_dim", "config.toml:5".
  const std::string& origin() const { return origin_; }
  void set_origin(std::string origin) { origin_ = std::move(origin); }
  // The kohya flag this value was given through (CLI or --config_file), "" otherwise. Lets
  // validation say "sumi does not support --xyz yet" instead of "unknown key".
  const std::string& flag() const { return flag_; }
  void set_flag(std::string flag) { flag_ = std::move(flag); }
  // The text of a --network_args / --optimizer_args item a typed value was read from ("" when
  // it came otherwise): a string parameter given "0" or "1,,0.5" there gets exactly that text,
  // as kohya's modules receive their args as strings.
  const std::string& source_text() const { return source_text_; }
  void set_source_text(std::string text) { source_text_ = std::move(text); }

  // Scalar access; each throws RecipeError (naming the origin) on the wrong kind.
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;  // ints widen
  const std::string& as_string() const;

  // Arrays.
  const std::vector<Value>& items() const;
  std::vector<Value>& items();
  void push_back(Value v);

  // Tables keep insertion order.
  const std::vector<std::string>& keys() const;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  // Replace the value under `key` in place (keeping its position) or append it.
  Value& set(std::string key, Value v);
  bool erase(std::string_view key);
  size_t size() const;  // array items or table entries

  // "integer", "string", ... for error messages.
  const char* kind_name() const;
  static const char* kind_name(Kind k);

  // Canonical text: TOML-like, stable across input formats (the basis of dump_plan).
  // Strings are quoted, doubles use the shortest text that round-trips, tables inline.
  std::string text() const;

  // Structural equality of content (origins ignored).
  bool operator==(const Value& o) const;
  bool operator!=(const Value& o) const { return !(*this == o); }

 private:
  Kind kind_ = Kind::Null;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0.0;
  std::string s_;
  std::vector<Value> items_;       // array items, or table values parallel to keys_
  std::vector<std::string> keys_;  // table keys
  std::string origin_;
  std::string flag_;
  std::string source_text_;
};

// Canonical text of a double: shortest round-tripping form, always recognisable as a float.
std::string format_double(double d);
// A TOML basic string literal for `s`.
std::string quote_string(std::string_view s);

}  // namespace sumi::recipe

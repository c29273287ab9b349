// Parameter schemas and validation of one recipe section. A plugin section's keys are the
// host's own keys for that section (host_schema) plus the chosen plugin's parameter schema
// (sumi_param_spec); resolve_section checks a section against both, converts types and
// fills defaults, so components only ever see a complete, typed configuration.
#pragma once

#include <sumi/sumi.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sumi/recipe/value.h"

namespace sumi::recipe {

struct ParamSpec {
  std::string key;
  int type = SUMI_PARAM_STRING;                // SUMI_PARAM_*
  std::optional<std::string> default_value;   // recipe syntax; nullopt = required...
  std::string doc;
  bool optional = false;                       // ...unless optional: may stay unset

  ParamSpec() = default;
  ParamSpec(std::string key, int type, std::optional<std::string> default_value, std::string doc,
            bool optional = false);
  // From a plugin descriptor (fields beyond struct_size are treated as absent).
  ParamSpec(const sumi_param_spec& spec);  // NOLINT: implicit on purpose
};

std::vector<ParamSpec> to_specs(const sumi_param_spec* specs, int64_t n);

// A type only the host's own keys use (never in a plugin's schema, not part of the ABI): a list
// of strings, given as an array or as one string (a one-item list), e.g. [model] base_weights.
constexpr int kParamStringList = 64;

// "boolean", "integer", "float", "string", "list of floats", "list of integers".
const char* param_type_name(int type);

// The keys the host itself owns in a section (empty for a section with none). Backed by the
// table in host_schema.cpp.
std::vector<ParamSpec> host_schema(std::string_view section);

// One validated key: its typed value (bool/int/double/string, or an array of doubles/ints
// for the list types) and where it came from ("default" when the schema filled it).
struct ResolvedEntry {
  std::string key;
  int type = SUMI_PARAM_STRING;
  Value value;
  bool from_default = false;
};

class ResolvedSection {
 public:
  ResolvedSection() = default;
  explicit ResolvedSection(std::string name) : name_(std::move(name)) {}

  const std::string& name() const { return name_; }
  // False for an optional key left unset (and for keys no schema declares).
  bool has(std::string_view key) const;

  // Typed access; each throws RecipeError when the key is unset or of another type.
  bool get_bool(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_double(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  std::vector<double> get_double_list(std::string_view key) const;
  std::vector<int64_t> get_int_list(std::string_view key) const;
  std::vector<std::string> get_string_list(std::string_view key) const;

  // Canonical text ("0.0001", "\"lora\"", "[0.9, 0.99]") and origin of a set key.
  std::string text(std::string_view key) const;
  const std::string& origin(std::string_view key) const;

  // Set keys in schema order (host keys first).
  const std::vector<ResolvedEntry>& entries() const { return entries_; }
  void add(ResolvedEntry e) { entries_.push_back(std::move(e)); }

 private:
  const ResolvedEntry& entry(std::string_view key, int type) const;
  std::string name_;
  std::vector<ResolvedEntry> entries_;
};

// Validate one section (a table, or a null Value for a section the recipe leaves out)
// against the host's and the plugin's specs. Rejects unknown keys (naming the nearest valid
// one and listing all), converts types (int for float; "0.9,0.99" or arrays for lists;
// "true"/"false" strings for booleans; numeric strings for numbers), rejects wrong types
// (naming key, expected type, found value and origin), fills defaults and reports missing
// required keys. All problems of the section are reported together in one RecipeError.
ResolvedSection resolve_section(const Value& section, std::string_view section_name,
                                const std::vector<ParamSpec>& host_specs,
                                const std::vector<ParamSpec>& plugin_specs);

// Convert one value to a parameter type. Returns false (and leaves `out` alone) when it
// cannot be converted.
bool convert_value(const Value& in, int type, Value& out);

}  // namespace sumi::recipe

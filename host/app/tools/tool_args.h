// Command lines of the kohya tool scripts (argparse-style): `--flag value`, `--flag=value`,
// lists (`--models a b c`), switches and positionals, with kohya's flag names. Every tool
// declares its flags here, so an unknown flag is refused naming the nearest known one and
// `--help` lists them all.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sumi::app::tools {

class ToolArgs {
 public:
  // `prog`: the command (`resize_lora`); `summary`: one line on what it does and which kohya
  // script it replaces.
  ToolArgs(std::string prog, std::string summary);

  // A flag taking one value; `choices` (when given) lists the accepted values.
  ToolArgs& value(const std::string& name, const std::string& help, std::optional<std::string> default_value = {},
                  std::vector<std::string> choices = {});
  // A flag taking one or more values (argparse nargs="*" / "+").
  ToolArgs& list(const std::string& name, const std::string& help);
  // A switch (argparse store_true).
  ToolArgs& flag(const std::string& name, const std::string& help);
  // A positional argument (in declaration order); `required` ones must be given.
  ToolArgs& positional(const std::string& name, const std::string& help, bool required = true);

  // Parses `args`. Returns false when --help was asked for (the usage is then printed to stdout).
  bool parse(const std::vector<std::string>& args);

  bool given(const std::string& name) const;
  bool on(const std::string& name) const;  // a switch
  std::optional<std::string> get(const std::string& name) const;
  std::string str(const std::string& name) const;  // the value or default; "" when neither
  // Numeric values, refused naming the flag when they do not parse.
  double real(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  std::optional<double> opt_real(const std::string& name) const;
  std::optional<int64_t> opt_integer(const std::string& name) const;
  const std::vector<std::string>& strs(const std::string& name) const;
  std::vector<double> reals(const std::string& name) const;
  // The LoRA merge tools' --ratios: one per --models file (both refused by name otherwise).
  std::vector<double> lora_ratios() const;
  // Throws UserError unless `name` was given.
  std::string required(const std::string& name) const;

  std::string usage() const;
  // Throws a UserError "sumi PROG: message".
  [[noreturn]] void fail(const std::string& message) const;
  const std::string& prog() const { return prog_; }

 private:
  enum class Kind { value, list, flag, positional };
  struct Spec {
    std::string name;
    Kind kind;
    std::string help;
    std::optional<std::string> default_value;
    std::vector<std::string> choices;
    bool required = false;
  };
  const Spec* find(const std::string& name) const;
  const Spec& spec(const std::string& name) const;

  std::string prog_, summary_;
  std::vector<Spec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace sumi::app::tools

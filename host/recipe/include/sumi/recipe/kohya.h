// kohya-ss sd-scripts compatibility: its training flags (train_network.py and
// library/train_util.py) and its `--config_file` TOML, mapped onto recipe keys. Every flag
// maps somewhere, so a flag sumi cannot act on yet is reported as "sumi does not support
// --xyz yet" when the recipe is validated, never silently dropped.
//
// Precedence, lowest first: recipe file < --config_file < explicit flags < --set.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "sumi/recipe/value.h"

namespace sumi::recipe {

enum class KohyaKind {
  String,     // type=str
  Int,        // type=int
  Float,      // type=float
  Switch,     // action="store_true": `--flag` alone means true (`--flag=false` also works)
  KeyValues,  // nargs="*" of "key=value": each becomes <section>.<key>
};

struct KohyaFlag {
  const char* name;    // without the leading "--"
  const char* target;  // recipe path: "network.dim"; "optimizer.*" for KeyValues;
                       // "datasets.<key>" lands in the first [[datasets]] entry;
                       // "" for flags sumi rejects outright (no recipe meaning)
  KohyaKind kind;
  bool many;           // nargs="*" of plain values (a list)
};

// The table, in kohya's argument-group order.
const std::vector<KohyaFlag>& kohya_flags();
// A flag by name (without "--"); nullptr when kohya has no such flag (or sumi does not know it).
const KohyaFlag* find_kohya_flag(std::string_view name);

// kohya names -> sumi plugin names. "networks.lora" -> "lora"; "AdamW" -> "adamw",
// "torch.optim.SGD" -> "sgd", "" -> "adamw" (kohya's default). Optimizers sumi lacks pass
// through lower-cased so the host reports "no optimizer plugin named ...".
// (SGDNesterov is handled by apply_*: type "sgd" with nesterov = true, momentum = 0.9.)
std::string normalize_network_module(std::string_view module);
std::string normalize_optimizer_type(std::string_view type);

// Apply kohya command-line arguments (without the program name) on top of `root`.
// Understands `--flag value`, `--flag=value`, bare switches, `--*_args k=v ...`, kohya's
// `--config_file x[.toml]` (applied first, below the explicit flags) and sumi's
// `--set section.key=value` (applied last). Unknown flags name the nearest known flag.
void apply_kohya_args(Value& root, const std::vector<std::string>& args);

// A kohya config file: flat keys named like the flags, at the top level or inside any table
// (kohya ignores the table names). Values keep their TOML types.
void apply_kohya_config_file(Value& root, const std::filesystem::path& path);

}  // namespace sumi::recipe

#include "dataset_options.h"

#include "core/error.h"

namespace sumi::app {

// The [datasets] table (one entry) as the dataset layer's kohya-named options.
datasets::CliOptions dataset_options(const recipe::Value& root, std::string& dataset_config) {
  datasets::CliOptions cli;
  const recipe::Value* d = root.find("datasets");
  if (!d) return cli;
  const recipe::Value* table = d;
  if (d->is_array()) {
    if (d->size() != 1)
      throw host::UserError("[[datasets]] in a recipe: give one table of kohya dataset options, or point "
                            "dataset_config at a kohya --dataset_config file for several datasets");
    table = &d->items().front();
  }
  for (const auto& key : table->keys()) {
    const recipe::Value& v = *table->find(key);
    if (key == "dataset_config") {
      dataset_config = v.as_string();
      continue;
    }
    switch (v.kind()) {
      case recipe::Value::Kind::Bool: cli[key] = v.as_bool(); break;
      case recipe::Value::Kind::Int: cli[key] = static_cast<long long>(v.as_int()); break;
      case recipe::Value::Kind::Double: cli[key] = v.as_double(); break;
      case recipe::Value::Kind::String: cli[key] = v.as_string(); break;
      default:
        throw host::UserError("[datasets] " + key + " (" + v.origin() + "): expected a bool, number or string");
    }
  }
  return cli;
}

}  // namespace sumi::app

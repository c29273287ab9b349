// `sumi show_metadata`: kohya's tools/show_metadata.py — a safetensors file's `__metadata__`
// as kohya prints it (json.dumps(metadata, indent=4, sort_keys=True)), after a summary of the
// header (tensors, dtypes, shapes). `--json` writes the whole header as one JSON document;
// `--metadata_only` prints exactly what kohya's script prints. Reads the header only.
#include "app/tools/tools.h"

#include "core/error.h"
#include "sumi/io/safetensors.h"
#include "app/tools/tool_args.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <map>

namespace sumi::app::tools {

namespace {
std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
}  // namespace

int cmd_show_metadata(const std::vector<std::string>& argv) {
  ToolArgs args("show_metadata", "Prints a .safetensors file's header and metadata (kohya tools/show_metadata.py).");
  args.positional("FILE", "the .safetensors file (or use --model)", false)
      .value("model", "the .safetensors file (kohya's flag)")
      .flag("json", "print the whole header (tensors and __metadata__) as one JSON document")
      .flag("metadata_only", "print only the metadata, exactly as kohya's show_metadata.py does");
  if (!args.parse(argv)) return 0;
  std::string path = args.str("model");
  if (args.given("FILE")) {
    if (!path.empty()) args.fail("give the file either as FILE or with --model, not both");
    path = args.str("FILE");
  }
  if (path.empty()) args.fail("--model is required: the .safetensors file to show");
  std::shared_ptr<io::SafetensorsFile> file;
  try {
    file = io::SafetensorsFile::open(path);
  } catch (const std::exception& e) {
    args.fail(std::string(e.what()) + " (show_metadata reads .safetensors files)");
  }
  nlohmann::json meta = nlohmann::json::object();  // std::map order: sorted like sort_keys=True
  for (const auto& [k, v] : file->metadata()) meta[k] = v;
  if (args.on("json")) {
    nlohmann::ordered_json doc = nlohmann::ordered_json::object();
    doc["file"] = path;
    doc["file_size"] = file->file_size();
    doc["header_size"] = file->data_start() - 8;
    nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
    for (const auto& t : file->tensors())
      tensors[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.offset, t.offset + t.nbytes}}};
    doc["tensors"] = std::move(tensors);
    doc["__metadata__"] = meta;
    std::cout << doc.dump(4, ' ', true) << "\n";
    return 0;
  }
  if (!args.on("metadata_only")) {
    std::map<std::string, std::pair<size_t, int64_t>> by_dtype;
    int64_t params = 0;
    for (const auto& t : file->tensors()) {
      auto& d = by_dtype[t.dtype];
      d.first += 1;
      d.second += t.numel();
      params += t.numel();
    }
    std::cout << "file: " << path << "\n"
              << "size: " << file->file_size() << " bytes (header " << file->data_start() - 8 << ")\n"
              << "tensors: " << file->tensors().size() << ", " << params << " values";
    for (const auto& [d, n] : by_dtype) std::cout << "; " << d << ": " << n.first;
    std::cout << "\n\n";
    size_t width = 0;
    for (const auto& t : file->tensors()) width = std::max(width, t.name.size());
    for (const auto& t : file->tensors()) {
      std::string name = t.name;
      name.resize(width, ' ');
      std::cout << name << "  " << t.dtype << std::string(t.dtype.size() < 5 ? 5 - t.dtype.size() : 1, ' ') << " "
                << shape_text(t.shape) << "\n";
    }
    std::cout << "\n__metadata__:\n";
  }
  if (file->metadata().empty()) {
    if (args.on("metadata_only")) std::fputs("No metadata found\n", stderr);
    else std::cout << "No metadata found\n";
    return 0;
  }
  std::cout << meta.dump(4, ' ', true) << "\n";
  return 0;
}

}  // namespace sumi::app::tools

// `sumi merge_captions_to_metadata` and `sumi merge_dd_tags_to_metadata`: kohya's
// finetune/merge_captions_to_metadata.py and merge_dd_tags_to_metadata.py. Each image's
// caption (tag) file, read whole and stripped, goes into the metadata JSON under the image's
// stem (or its path with --full_path) as "caption" ("tags"); an existing metadata file
// (--in_json, or out_json itself when it exists) is updated, its other keys and order kept.
#include "app/tools/tools.h"

#include "app/tools/dataset_files.h"
#include "app/tools/tool_args.h"
#include "core/error.h"
#include "core/progress.h"

#include <filesystem>
#include <iostream>

namespace sumi::app::tools {

namespace {

struct MergeKind {
  const char* prog;
  const char* summary;
  const char* field;             // "caption" / "tags"
  const char* default_extension;
  const char* overwrite_note;
  const char* merge_line;
};

int merge_to_metadata(const MergeKind& k, const std::vector<std::string>& argv, bool caption_typo_flag) {
  ToolArgs args(k.prog, k.summary);
  args.positional("train_data_dir", "folder of the training images")
      .positional("out_json", "metadata file to write")
      .value("in_json", "metadata file to update (default: out_json when it exists)")
      .value("caption_extension", std::string("extension of the ") + k.field + " files", k.default_extension)
      .flag("full_path", "key the metadata by the image's path instead of its file name without extension")
      .flag("recursive", "also look in every folder below train_data_dir (needs --full_path)")
      .flag("debug", std::string("print each key and its ") + k.field);
  if (caption_typo_flag) args.value("caption_extention", "kohya's old misspelling of --caption_extension");
  if (!args.parse(argv)) return 0;
  const bool full_path = args.on("full_path"), recursive = args.on("recursive"), debug = args.on("debug");
  if (recursive && !full_path)
    args.fail("--recursive needs --full_path (images in different folders may share a name; kohya asserts the same)");
  std::string ext = args.str("caption_extension");
  if (caption_typo_flag && args.given("caption_extention")) ext = args.str("caption_extention");
  (void)with_suffix("x.png", ext, "--caption_extension");  // refuse a bad extension before any work

  const std::string out_json = args.str("out_json");
  const auto images = kohya_glob_images(args.str("train_data_dir"), recursive, "train_data_dir");
  std::cout << "found " << images.size() << " images.\n";

  std::string in_json = args.str("in_json");
  std::string in_flag = "--in_json";
  std::error_code ec;
  if (in_json.empty() && std::filesystem::is_regular_file(out_json, ec)) {
    in_json = out_json;
    in_flag = "out_json";
  }
  MetadataJson metadata = MetadataJson::object();
  if (!in_json.empty()) {
    std::cout << "loading existing metadata: " << in_json << "\n";
    metadata = read_metadata_json(in_json, in_flag);
    std::cout << k.overwrite_note << "\n";
  } else {
    std::cout << "new metadata will be created\n";
  }

  std::cout << k.merge_line << "\n";
  sumi_progress* bar = host::progress_begin(k.field, static_cast<int64_t>(images.size()));
  try {
    for (const auto& image : images) {
      const std::string text_path = with_suffix(image, ext, "--caption_extension");
      const std::string text =
          py_strip(read_text_utf8(text_path, std::string(k.field) + " file of " + image +
                                                 "; every image needs one (--caption_extension " + ext + ")"));
      const std::string key = full_path ? image : path_stem(image);
      auto& entry = metadata[key];
      if (entry.is_null()) entry = MetadataJson::object();
      if (!entry.is_object())
        throw host::UserError(in_json + ": the entry of \"" + key + "\" is not an object (expected {\"caption\": ..., \"tags\": ...})");
      entry[k.field] = text;
      if (debug) std::cout << key << " " << text << "\n";
      host::progress_update(bar, 1, nullptr);
    }
  } catch (...) {
    host::progress_end(bar);
    throw;
  }
  host::progress_end(bar);

  std::cout << "writing metadata: " << out_json << "\n";
  write_metadata_json(out_json, metadata);
  std::cout << "done!\n";
  return 0;
}

}  // namespace

int cmd_merge_captions_to_metadata(const std::vector<std::string>& argv) {
  static const MergeKind k{"merge_captions_to_metadata",
                           "Merges caption files into kohya's metadata JSON (kohya finetune/merge_captions_to_metadata.py).",
                           "caption",
                           ".caption",
                           "captions for existing images will be overwritten",
                           "merge caption texts to metadata json."};
  return merge_to_metadata(k, argv, true);
}

int cmd_merge_dd_tags_to_metadata(const std::vector<std::string>& argv) {
  static const MergeKind k{"merge_dd_tags_to_metadata",
                           "Merges tag files (WD14 / DeepDanbooru) into kohya's metadata JSON (kohya finetune/merge_dd_tags_to_metadata.py).",
                           "tags",
                           ".txt",
                           "tags data for existing images will be overwritten",
                           "merge tags to metadata json."};
  return merge_to_metadata(k, argv, false);
}

}  // namespace sumi::app::tools

// What kohya's dataset scripts (finetune/*.py, tools/resize_images_to_resolution.py) share:
// listing a folder's images as train_util.glob_images_pathlib does (kohya's ten extensions,
// case as listed, sorted as Python sorts Path objects, paths spelled as str(Path) spells them),
// reading caption files as Path.read_text does (UTF-8, universal newlines) and stripping them
// as str.strip does, and the metadata JSON read and written as json.load / json.dumps(indent=2)
// do (key order kept, non-ASCII escaped), written to a temporary file and renamed.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace sumi::app::tools {

using MetadataJson = nlohmann::ordered_json;

// str(pathlib.PurePosixPath(p)): repeated slashes and "." parts dropped, no trailing slash,
// "." for an empty path.
std::string python_path(const std::string& p);

// train_util.glob_images_pathlib(Path(dir), recursive): the images (".png .jpg .jpeg .webp
// .bmp" and their upper-case forms) in `dir` (and below it with `recursive`), sorted part by
// part, each spelled str(Path(dir) / relative). Throws UserError naming `flag` when `dir` is
// not a folder.
std::vector<std::string> kohya_glob_images(const std::string& dir, bool recursive, const std::string& flag);

// Path.stem / Path.with_suffix(ext) of a path string. with_suffix refuses an extension
// without a leading dot, naming `flag`.
std::string path_stem(const std::string& p);
std::string with_suffix(const std::string& p, const std::string& ext, const std::string& flag);

// Path.read_text(encoding="utf-8"): the whole file, "\r\n" and "\r" read as "\n". Throws
// UserError naming the file when it is missing, unreadable or not UTF-8; `what` says which
// file it is for the message ("caption file of x.png").
std::string read_text_utf8(const std::string& path, const std::string& what);

// Python's str.strip(): Unicode whitespace at both ends (ASCII whitespace, \x1c-\x1f, \x85,
// NBSP, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
std::string py_strip(const std::string& s);

// json.load of kohya's metadata file: an object of image key -> object. Throws UserError
// naming the file (and `flag`) when it cannot be read, is not JSON or is not an object.
MetadataJson read_metadata_json(const std::string& path, const std::string& flag);

// json.dumps(metadata, indent=2) written to `path` through a temporary file and a rename.
void write_metadata_json(const std::string& path, const MetadataJson& metadata);
// The same text (for tests and --debug).
std::string python_json_dumps(const MetadataJson& metadata);

// Writes `bytes` to `path` through a temporary sibling and a rename. Throws UserError.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Unicode code points <-> UTF-8 (valid UTF-8 in; nlohmann's strings always are).
std::u32string utf8_to_u32(const std::string& s);
std::string u32_to_utf8(const std::u32string& s);

}  // namespace sumi::app::tools

// Facts about a model file or folder that the host needs before loading any plugin: which SD
// family it is (from tensor names or the diffusers layout, never the data) and its A1111 hash.
#pragma once

#include <string>

namespace sumi::app {

// "sd1", "sd2" or "sdxl"; "" when the names cannot tell (e.g. a .ckpt: pass --v2/--sdxl).
std::string detect_family(const std::string& path);

// A1111's "Model hash" (AutoV2): the first 10 hex digits of the file's SHA-256; "" for folders.
std::string a1111_hash(const std::string& path);

}  // namespace sumi::app

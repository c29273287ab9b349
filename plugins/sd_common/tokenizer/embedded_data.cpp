// The CLIP vocabulary and merges, assembled into the library so the product reads no data files.
// .incbin copies the bytes at assembly time (instant, unlike compiling a generated C array);
// a NUL is appended so each blob is also a C string. The symbols are hidden so that several
// plugins linking this static library each keep their own copy without interposition.
#include "embedded_data.h"

#if defined(__APPLE__)
#define SUMI_SYM(name) "_" #name
#define SUMI_RODATA ".const_data\n"
#define SUMI_RODATA_END ".text\n"
#define SUMI_HIDDEN ".private_extern "
#elif defined(__GNUC__) || defined(__clang__)
#define SUMI_SYM(name) #name
#define SUMI_RODATA ".pushsection .rodata\n"
#define SUMI_RODATA_END ".popsection\n"
#define SUMI_HIDDEN ".hidden "
#else
#error "embedded_data.cpp needs a GNU-compatible assembler (.incbin); add an embedding path for this compiler"
#endif

#define SUMI_EMBED(name, path)                     \
  __asm__(SUMI_RODATA                              \
          ".balign 16\n"                           \
          ".globl " SUMI_SYM(name) "\n"            \
          SUMI_HIDDEN SUMI_SYM(name) "\n"          \
          SUMI_SYM(name) ":\n"                     \
          ".incbin \"" path "\"\n"                 \
          ".byte 0\n"                              \
          ".globl " SUMI_SYM(name##_end) "\n"      \
          SUMI_HIDDEN SUMI_SYM(name##_end) "\n"    \
          SUMI_SYM(name##_end) ":\n"               \
          SUMI_RODATA_END)

SUMI_EMBED(sumi_clip_vocab_json, SUMI_CLIP_VOCAB_PATH);
SUMI_EMBED(sumi_clip_merges_txt, SUMI_CLIP_MERGES_PATH);

#define SUMI_EMBEDDED extern __attribute__((visibility("hidden"))) const char
extern "C" {
SUMI_EMBEDDED sumi_clip_vocab_json[];
SUMI_EMBEDDED sumi_clip_vocab_json_end[];
SUMI_EMBEDDED sumi_clip_merges_txt[];
SUMI_EMBEDDED sumi_clip_merges_txt_end[];
}

namespace sumi::sd::detail {

// The sizes leave out the appended NUL.
std::string_view embedded_vocab_json() {
  return {sumi_clip_vocab_json, static_cast<std::size_t>(sumi_clip_vocab_json_end - sumi_clip_vocab_json - 1)};
}

std::string_view embedded_merges_txt() {
  return {sumi_clip_merges_txt, static_cast<std::size_t>(sumi_clip_merges_txt_end - sumi_clip_merges_txt - 1)};
}

}  // namespace sumi::sd::detail

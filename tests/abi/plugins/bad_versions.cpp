// Hand-written plugins that the host must refuse. BAD_KIND selects which one this build is.
#include <sumi/sumi.h>

#include <cstring>

namespace {
[[maybe_unused]] sumi_native_info g_native = {sizeof(sumi_native_info), "0.0.1-not-this-torch", 1, 0, ""};
[[maybe_unused]] sumi_plugin_descriptor g_desc = {sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, "bad", "0", nullptr, 0,
                                 nullptr};
}  // namespace

#if BAD_KIND == 4
// No entry symbol at all.
extern "C" SUMI_EXPORT int sumi_something_else() { return 0; }
#else
extern "C" SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host, const sumi_plugin_descriptor** out) {
#if BAD_KIND == 1
  g_desc.abi_minor = SUMI_ABI_MINOR + 1;  // newer minor than the host
#elif BAD_KIND == 2
  g_desc.abi_major = SUMI_ABI_MAJOR + 1;  // another major
#elif BAD_KIND == 3
  g_desc.native = &g_native;  // native build for another torch
#elif BAD_KIND == 5
  return host->set_error(SUMI_ERR_RUNTIME, "bad plugin: refusing to initialise on purpose");
#endif
  *out = &g_desc;
  return SUMI_OK;
}
#endif

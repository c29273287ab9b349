/* A plain-C plugin built against the frozen ABI 1.0 header (tests/abi/abi_1_0): the host must keep
 * loading and running it. It provides an lr_scheduler "oldest_half" returning 0.5. */
#include <sumi/sumi.h>

static sumi_status half(void* self, const sumi_lr_query* q, double* out) {
  (void)self;
  (void)q;
  *out = 0.5;
  return SUMI_OK;
}
static int g_instance;
static sumi_status create(const sumi_host_api* host, sumi_context* ctx, void** self) {
  (void)host;
  (void)ctx;
  *self = &g_instance;
  return SUMI_OK;
}
static void destroy(void* self) { (void)self; }
static const sumi_lr_scheduler_vtable vt = {sizeof(sumi_lr_scheduler_vtable), &half};
static const sumi_component components[] = {{sizeof(sumi_component), SUMI_KIND_LR_SCHEDULER, SUMI_LR_SCHEDULER_API,
                                             "oldest_half", "Constant 0.5 (C, ABI 1.0).", NULL, 0, &create, &destroy,
                                             &vt}};
static const sumi_plugin_descriptor desc = {sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, "oldest",
                                            "1.0", components, 1, NULL};

SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host, const sumi_plugin_descriptor** out) {
  (void)host;
  *out = &desc;
  return SUMI_OK;
}

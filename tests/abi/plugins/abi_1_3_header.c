/* A plain-C noise scheduler built against the frozen ABI 1.3 header (tests/abi/abi_1_3): its
 * vtable ends at alphas_cumprod (no describe, appended in 1.4), so the host must neither read nor
 * call past it and must give it the defaults (its component name as the A1111 label, one noise
 * per step). It samples nothing: every slot refuses. */
#include <sumi/sumi.h>

static const sumi_host_api* g_host;
static int g_instance;
static sumi_status create(const sumi_host_api* host, sumi_context* ctx, void** self) {
  (void)host;
  (void)ctx;
  *self = &g_instance;
  return SUMI_OK;
}
static void destroy(void* self) { (void)self; }
static sumi_status refuse(void) { return g_host->set_error(SUMI_ERR_UNSUPPORTED, "abi13_sampler computes nothing"); }
static sumi_status s_set(void* s, int64_t n) { (void)s; (void)n; return refuse(); }
static sumi_status s_tensor(void* s, sumi_tensor* o) { (void)s; (void)o; return refuse(); }
static sumi_status s_sigma(void* s, double* o) { (void)s; (void)o; return refuse(); }
static sumi_status s_scale(void* s, sumi_tensor x, int64_t i, sumi_tensor* o) { (void)s; (void)x; (void)i; (void)o; return refuse(); }
static sumi_status s_step(void* s, sumi_tensor m, int64_t i, sumi_tensor x, sumi_tensor n, sumi_tensor* o) {
  (void)s; (void)m; (void)i; (void)x; (void)n; (void)o; return refuse();
}
static sumi_status s_three(void* s, sumi_tensor a, sumi_tensor b, sumi_tensor c, sumi_tensor* o) {
  (void)s; (void)a; (void)b; (void)c; (void)o; return refuse();
}
static const sumi_noise_scheduler_vtable sampler_vt = {sizeof(sumi_noise_scheduler_vtable), &s_set, &s_tensor, &s_tensor,
                                                       &s_sigma, &s_scale, &s_step, &s_three, &s_three, &s_tensor};

static const sumi_component components[] = {
    {sizeof(sumi_component), SUMI_KIND_NOISE_SCHEDULER, SUMI_NOISE_SCHEDULER_API, "abi13_sampler",
     "A noise scheduler vtable of ABI 1.3 (C).", NULL, 0, &create, &destroy, &sampler_vt}};
static const sumi_plugin_descriptor desc = {sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, "abi13",
                                            "1.3", components, 1, NULL};

SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host, const sumi_plugin_descriptor** out) {
  g_host = host;
  *out = &desc;
  return SUMI_OK;
}

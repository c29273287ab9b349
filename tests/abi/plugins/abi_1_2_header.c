/* A plain-C network built against the frozen ABI 1.2 header (tests/abi/abi_1_2): the host must keep
 * loading and running it. Its vtable ends at set_training (no probe, configure_from_weights,
 * metadata, bias_delta) and it reads sumi_module_info as the 104-byte records of ABI 1.2, so the
 * host must hand it an array of those. attach checks every record and wraps the Linear modules;
 * the other slots refuse. */
#include <sumi/sumi.h>

#include <string.h>

static const sumi_host_api* g_host;
static int g_instance;
static sumi_status create(const sumi_host_api* host, sumi_context* ctx, void** self) {
  (void)host;
  (void)ctx;
  *self = &g_instance;
  return SUMI_OK;
}
static void destroy(void* self) { (void)self; }
static sumi_status refuse(void) { return g_host->set_error(SUMI_ERR_UNSUPPORTED, "abi12_network computes nothing"); }
static sumi_status n_attach(void* s, const sumi_module_info* m, int64_t n, int32_t* selected) {
  (void)s;
  for (int64_t i = 0; i < n; ++i) {
    if (m[i].struct_size != sizeof(sumi_module_info) || !m[i].name || strncmp(m[i].name, "mod", 3) != 0)
      return g_host->set_error(SUMI_ERR_ABI, "abi12_network: module records are not ABI 1.2's");
    selected[i] = m[i].kind == SUMI_MODULE_LINEAR;
  }
  return SUMI_OK;
}
static sumi_status n_forward(void* s, int64_t i, sumi_tensor x, sumi_tensor b, sumi_tensor* o) {
  (void)s; (void)i; (void)x; (void)b; (void)o; return refuse();
}
static sumi_status n_delta(void* s, int64_t i, sumi_tensor* o) { (void)s; (void)i; (void)o; return refuse(); }
static sumi_status n_mul(void* s, double m) { (void)s; (void)m; return SUMI_OK; }
static sumi_status n_load(void* s, const char* const* names, const sumi_tensor* t, int64_t n) {
  (void)s; (void)names; (void)t; (void)n; return refuse();
}
static sumi_status n_training(void* s, int32_t t) { (void)s; (void)t; return SUMI_OK; }
static const sumi_network_vtable network_vt = {sizeof(sumi_network_vtable), &n_attach, &n_forward, &n_delta, &n_mul,
                                               &n_load, &n_training};

static const sumi_component components[] = {
    {sizeof(sumi_component), SUMI_KIND_NETWORK, SUMI_NETWORK_API, "abi12_network", "A network vtable of ABI 1.2 (C).",
     NULL, 0, &create, &destroy, &network_vt}};
static const sumi_plugin_descriptor desc = {sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, "abi12",
                                            "1.2", components, 1, NULL};

SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host, const sumi_plugin_descriptor** out) {
  g_host = host;
  *out = &desc;
  return SUMI_OK;
}

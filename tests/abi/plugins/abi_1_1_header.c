/* A plain-C plugin built against the frozen ABI 1.1 header (tests/abi/abi_1_1): the host must keep
 * loading and running it. Its model "abi11_model" has ABI 1.1's slots (the training ones included)
 * but not 1.2's describe, so the host's fallback for a model that cannot describe itself can be
 * exercised. Every call refuses. */
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
static sumi_status refuse(void) { return g_host->set_error(SUMI_ERR_UNSUPPORTED, "abi11_model computes nothing"); }
static sumi_status m_load(void* s, const char* p) { (void)s; (void)p; return refuse(); }
static sumi_status m_modules(void* s, const sumi_module_info** o, int64_t* n) { (void)s; (void)o; (void)n; return refuse(); }
static sumi_status m_encode(void* s, const char* const* p, int64_t n, sumi_tensor* c, sumi_tensor* pl) {
  (void)s; (void)p; (void)n; (void)c; (void)pl; return refuse();
}
static sumi_status m_denoise(void* s, sumi_tensor l, sumi_tensor t, sumi_tensor c, sumi_tensor p, sumi_tensor a,
                             sumi_tensor* o) {
  (void)s; (void)l; (void)t; (void)c; (void)p; (void)a; (void)o; return refuse();
}
static sumi_status m_vae_encode(void* s, sumi_tensor i, int32_t smp, sumi_tensor* o) { (void)s; (void)i; (void)smp; (void)o; return refuse(); }
static sumi_status m_vae_decode(void* s, sumi_tensor l, sumi_tensor* o) { (void)s; (void)l; (void)o; return refuse(); }
static sumi_status m_set_network(void* s, void* n, const sumi_network_vtable* v, const int32_t* sel) {
  (void)s; (void)n; (void)v; (void)sel; return refuse();
}
static sumi_status m_train_part(void* s, const char* part) { (void)s; (void)part; return refuse(); }
static sumi_status m_add_token(void* s, const char* t, const char* w, int64_t n) { (void)s; (void)t; (void)w; (void)n; return refuse(); }
static sumi_status m_save_token(void* s, const char* t, const char* p, const sumi_dtype* d, int32_t o) {
  (void)s; (void)t; (void)p; (void)d; (void)o; return refuse();
}
static sumi_status m_save(void* s, const char* p, const sumi_dtype* d, int32_t o) { (void)s; (void)p; (void)d; (void)o; return refuse(); }
static const sumi_model_vtable model_vt = {sizeof(sumi_model_vtable), &m_load, &m_modules, &m_encode, &m_denoise,
                                           &m_vae_encode, &m_vae_decode, &m_set_network, &m_train_part,
                                           &m_add_token, &m_save_token, &m_save};

static const sumi_component components[] = {
    {sizeof(sumi_component), SUMI_KIND_MODEL, SUMI_MODEL_API, "abi11_model", "A model vtable of ABI 1.1 (C).", NULL, 0,
     &create, &destroy, &model_vt}};
static const sumi_plugin_descriptor desc = {sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, "abi11",
                                            "1.1", components, 1, NULL};

SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host, const sumi_plugin_descriptor** out) {
  g_host = host;
  *out = &desc;
  return SUMI_OK;
}

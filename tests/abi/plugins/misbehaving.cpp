// Components that fail in every way a plugin can: an error status, an exception thrown inside
// skin code (turned into a status by the glue), and an exception thrown straight out of a raw C
// function (caught by the host).
#include <sumi/plugin.hpp>

#include <stdexcept>

namespace {

class Failing : public sumi::Optimizer {
 public:
  explicit Failing(sumi::Context& ctx) : mode_(ctx.get_string("fail")) {
    if (mode_ == "create") throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "failing: asked to fail in create");
  }
  void add_param_group(const std::string&, std::vector<sumi::Tensor>) override {}
  void step(const std::vector<double>&) override {
    if (mode_ == "throw") throw std::runtime_error("failing: std::runtime_error thrown inside step");
    throw sumi::Error(SUMI_ERR_RUNTIME, "failing: step returns an error");
  }

 private:
  std::string mode_;
};

const sumi_param_spec kParams[] = {sumi::param("fail", SUMI_PARAM_STRING, "step", "Where to fail: create, step, throw.")};

// A raw vtable whose step throws through the C boundary.
sumi_status raw_add(void*, const char*, const sumi_tensor*, int64_t) { return SUMI_OK; }
sumi_status raw_step(void*, const double*, int64_t) { throw std::logic_error("raw plugin threw through the C ABI"); }
const sumi_optimizer_vtable kRawVt = {sizeof(sumi_optimizer_vtable), &raw_add, &raw_step};
int g_dummy = 0;
sumi_status raw_create(const sumi_host_api*, sumi_context*, void** self) {
  *self = &g_dummy;
  return SUMI_OK;
}
void raw_destroy(void*) {}

}  // namespace

SUMI_PLUGIN("misbehaving", "0.0.1", sumi::component<Failing>("failing", "Fails on purpose.", kParams),
            sumi_component{sizeof(sumi_component), SUMI_KIND_OPTIMIZER, SUMI_OPTIMIZER_API, "raw_throw",
                           "Throws through the C boundary.", nullptr, 0, &raw_create, &raw_destroy, &kRawVt})

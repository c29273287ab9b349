// Pins the released ABI 1.0 - 1.4 layouts (LP64). A change here breaks every plugin built before it:
// grow structs only by appending, and add asserts for the new minor instead of editing these.
#include <sumi/sumi.h>

#include <cstddef>

#if defined(__LP64__)
static_assert(sizeof(sumi_host_api) == 336, "sumi_host_api layout changed");
static_assert(offsetof(sumi_host_api, device) == 328, "sumi_host_api.device moved (1.4)");
static_assert(offsetof(sumi_host_api, param_group_lr_scale) == 320, "sumi_host_api.param_group_lr_scale moved (1.3)");
static_assert(offsetof(sumi_host_api, last_error) == 16, "sumi_host_api.last_error moved");
static_assert(offsetof(sumi_host_api, op_call) == 160, "sumi_host_api.op_call moved");
static_assert(offsetof(sumi_host_api, autograd_apply) == 208, "sumi_host_api.autograd_apply moved");
static_assert(offsetof(sumi_host_api, param_create) == 280, "sumi_host_api.param_create moved");
static_assert(offsetof(sumi_host_api, native_wrap) == 312, "sumi_host_api.native_wrap moved");
static_assert(sizeof(sumi_value) == 24, "sumi_value layout changed");
static_assert(sizeof(sumi_dtype) == 4, "sumi_dtype layout changed");
static_assert(sizeof(sumi_device) == 8, "sumi_device layout changed");
static_assert(sizeof(sumi_param_spec) == 40, "sumi_param_spec layout changed");
static_assert(sizeof(sumi_component) == 72, "sumi_component layout changed");
static_assert(offsetof(sumi_component, vtable) == 64, "sumi_component.vtable moved");
static_assert(sizeof(sumi_plugin_descriptor) == 56, "sumi_plugin_descriptor layout changed");
static_assert(offsetof(sumi_plugin_descriptor, native) == 48, "sumi_plugin_descriptor.native moved");
static_assert(sizeof(sumi_native_info) == 32, "sumi_native_info layout changed");
static_assert(sizeof(sumi_autograd_function) == 40, "sumi_autograd_function layout changed");
static_assert(sizeof(sumi_optimizer_vtable) == 24, "sumi_optimizer_vtable layout changed");
static_assert(sizeof(sumi_lr_query) == 40, "sumi_lr_query layout changed");
static_assert(sizeof(sumi_lr_scheduler_vtable) == 16, "sumi_lr_scheduler_vtable layout changed");
static_assert(SUMI_NOISE_SCHEDULER_VTABLE_SIZE_1_3 == 80, "sumi_noise_scheduler_vtable 1.0-1.3 layout changed");
static_assert(SUMI_MODULE_INFO_SIZE_1_2 == 104, "sumi_module_info 1.0-1.2 layout changed");
static_assert(offsetof(sumi_module_info, weight) == 96, "sumi_module_info.weight moved");
static_assert(SUMI_NETWORK_VTABLE_SIZE_1_2 == 56, "sumi_network_vtable 1.0-1.2 layout changed");
static_assert(offsetof(sumi_network_vtable, set_training) == 48, "sumi_network_vtable.set_training moved");
// ABI 1.0's model vtable ended where 1.1's training slots begin.
static_assert(offsetof(sumi_model_vtable, train_part) == 64, "sumi_model_vtable 1.0 part changed");
static_assert(sizeof(sumi_tagger_vtable) == 16, "sumi_tagger_vtable layout changed");

// ABI 1.1: the model vtable's training slots, appended.
static_assert(SUMI_MODEL_VTABLE_SIZE_1_0 == 64, "the 1.0 model vtable size moved");
static_assert(offsetof(sumi_model_vtable, add_token) == 72, "sumi_model_vtable.add_token moved");
static_assert(offsetof(sumi_model_vtable, save_token) == 80, "sumi_model_vtable.save_token moved");
static_assert(offsetof(sumi_model_vtable, save) == 88, "sumi_model_vtable.save moved");
// ABI 1.2: describe, appended.
static_assert(SUMI_MODEL_VTABLE_SIZE_1_1 == 96, "the 1.1 model vtable size moved");
static_assert(offsetof(sumi_model_vtable, describe) == 96, "sumi_model_vtable.describe moved");
static_assert(offsetof(sumi_model_vtable, probe) == 104, "sumi_model_vtable.probe moved");
static_assert(offsetof(sumi_model_vtable, load_token) == 112, "sumi_model_vtable.load_token moved");
static_assert(offsetof(sumi_model_vtable, convert) == 120, "sumi_model_vtable.convert moved");
static_assert(SUMI_MODEL_VTABLE_SIZE_1_2 == 128, "sumi_model_vtable 1.2 layout changed");
// ABI 1.3: the network contract, appended (module bias; probe, configure_from_weights, metadata,
// bias_delta) and the file-tensor description it passes.
static_assert(offsetof(sumi_module_info, bias) == 104, "sumi_module_info.bias moved");
static_assert(sizeof(sumi_module_info) == 112, "sumi_module_info 1.3 layout changed");
static_assert(offsetof(sumi_network_vtable, probe) == 56, "sumi_network_vtable.probe moved");
static_assert(offsetof(sumi_network_vtable, configure_from_weights) == 64, "sumi_network_vtable.configure_from_weights moved");
static_assert(offsetof(sumi_network_vtable, metadata) == 72, "sumi_network_vtable.metadata moved");
static_assert(offsetof(sumi_network_vtable, bias_delta) == 80, "sumi_network_vtable.bias_delta moved");
static_assert(offsetof(sumi_network_vtable, apply_max_norm) == 88, "sumi_network_vtable.apply_max_norm moved");
static_assert(sizeof(sumi_network_vtable) == 96, "sumi_network_vtable 1.3 layout changed");
static_assert(sizeof(sumi_file_tensor) == 32, "sumi_file_tensor layout changed");
// ABI 1.3: the model's token-level text encoding, appended.
static_assert(offsetof(sumi_model_vtable, encode_tokens) == 128, "sumi_model_vtable.encode_tokens moved");
static_assert(offsetof(sumi_model_vtable, token_text) == 136, "sumi_model_vtable.token_text moved");
static_assert(SUMI_MODEL_VTABLE_SIZE_1_3 == 144, "sumi_model_vtable 1.3 layout changed");
// ABI 1.4: release_part, appended.
static_assert(offsetof(sumi_model_vtable, release_part) == 144, "sumi_model_vtable.release_part moved");
static_assert(sizeof(sumi_model_vtable) == 152, "sumi_model_vtable 1.4 layout changed");
// ABI 1.4: the noise scheduler's describe, appended.
static_assert(offsetof(sumi_noise_scheduler_vtable, describe) == 80, "sumi_noise_scheduler_vtable.describe moved");
static_assert(sizeof(sumi_noise_scheduler_vtable) == 88, "sumi_noise_scheduler_vtable 1.4 layout changed");
static_assert(offsetof(sumi_file_tensor, ndim) == 24, "sumi_file_tensor.ndim moved");
#endif

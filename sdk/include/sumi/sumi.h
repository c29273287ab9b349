/*
 * sumi.h — the plugin ABI of sumi. This C header is the whole contract between the host and
 * a plugin; everything else in sdk/ is convenience built on it.
 *
 * A plugin library exports exactly one symbol, SUMI_PLUGIN_ENTRY_NAME, of type
 * sumi_plugin_entry_fn. The host calls it once with its function table (sumi_host_api) and
 * receives a descriptor listing the library's components (an optimizer, a network module...).
 *
 * Rules that keep this stable (docs/abi.md has the full reference):
 *  - Every struct that crosses starts with `struct_size`; tables and vtables only grow by
 *    appending. A reader touches a field only if the size it was given covers it
 *    (SUMI_HAS_FIELD).
 *  - Host accepts a plugin when the ABI majors match and the plugin's minor <= the host's.
 *  - Nothing C++ crosses: every function returns sumi_status; on failure the message is in
 *    the host's thread-local last error (host->last_error / host->set_error).
 *  - Ownership is written on every signature: "borrowed" handles stay owned by the caller,
 *    "new reference" handles must be released with host->tensor_release.
 *  - dtypes and devices use DLPack's codes.
 *  - "since 1.0" marks the ABI minor that introduced a field. ABI 1.1 appended the model
 *    vtable's training slots (train_part, add_token, save_token, save); ABI 1.2 its describe,
 *    probe, load_token and convert slots (the host asks the model instead of knowing families);
 *    ABI 1.3 the network contract: sumi_module_info's bias, and the network vtable's probe,
 *    configure_from_weights, metadata and bias_delta slots (the host asks the network instead of
 *    knowing LoRA), and the model vtable's encode_tokens and token_text (token-level text
 *    encoding for kohya's lora_interrogator); ABI 1.4 the run's device (host->device: models place
 *    their weights there, networks and optimizers create tensors where their parameters are),
 *    the model vtable's release_part and the noise scheduler vtable's describe.
 */
#ifndef SUMI_SUMI_H
#define SUMI_SUMI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SUMI_ABI_MAJOR 1
#define SUMI_ABI_MINOR 4

#if defined(_WIN32)
#define SUMI_EXPORT __declspec(dllexport)
#else
#define SUMI_EXPORT __attribute__((visibility("default")))
#endif

/* True when a struct whose first member is `struct_size` is large enough to hold `field`. */
#define SUMI_HAS_FIELD(ptr, type, field) \
  ((ptr) != NULL && (ptr)->struct_size >= offsetof(type, field) + sizeof(((type*)0)->field))

/* ---------------------------------------------------------------- status codes -------- */
typedef int32_t sumi_status;
#define SUMI_OK 0
#define SUMI_ERR_INVALID_ARGUMENT 1 /* a caller passed something malformed */
#define SUMI_ERR_NOT_FOUND 2        /* an op, key, tensor or plugin does not exist */
#define SUMI_ERR_UNSUPPORTED 3      /* a valid request this implementation refuses */
#define SUMI_ERR_ABI 4              /* version or layout mismatch */
#define SUMI_ERR_RUNTIME 5          /* a computation failed */
#define SUMI_ERR_EXCEPTION 6        /* a C++ exception was caught at the boundary */

/* ---------------------------------------------------------------- DLPack codes -------- */
/* dtype: DLPack DLDataTypeCode + bits (lanes is always 1 here). */
#define SUMI_DTYPE_CODE_INT 0
#define SUMI_DTYPE_CODE_UINT 1
#define SUMI_DTYPE_CODE_FLOAT 2
#define SUMI_DTYPE_CODE_BFLOAT 4
#define SUMI_DTYPE_CODE_BOOL 6
typedef struct sumi_dtype {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} sumi_dtype;

/* device: DLPack DLDeviceType. */
#define SUMI_DEVICE_CPU 1
#define SUMI_DEVICE_CUDA 2
typedef struct sumi_device {
  int32_t device_type;
  int32_t device_id;
} sumi_device;

/* ---------------------------------------------------------------- opaque handles ------ */
/* A reference-counted tensor owned by the host. Wraps whatever the host computes with
 * (an at::Tensor in sumi); autograd history travels with it. */
typedef struct sumi_tensor_s* sumi_tensor;
/* A resolved operator (ATen schema name + overload). Lives as long as the process. */
typedef struct sumi_op_s* sumi_op;
/* A component instance's context: its validated configuration and its namespace in the
 * host's parameter registry. Owned by the host; valid until the component is destroyed. */
typedef struct sumi_context_s sumi_context;
/* The context of one custom autograd function application. */
typedef struct sumi_autograd_ctx_s sumi_autograd_ctx;
/* A progress bar. */
typedef struct sumi_progress_s sumi_progress;

/* ---------------------------------------------------------------- boxed values -------- */
/* Tags of sumi_value; append-only. */
#define SUMI_VALUE_NONE 0
#define SUMI_VALUE_TENSOR 1      /* u.tensor (borrowed when passed in, new reference out) */
#define SUMI_VALUE_INT 2         /* u.i */
#define SUMI_VALUE_DOUBLE 3      /* u.d */
#define SUMI_VALUE_BOOL 4        /* u.b (0 / 1) */
#define SUMI_VALUE_INT_LIST 5    /* u.ints */
#define SUMI_VALUE_DOUBLE_LIST 6 /* u.doubles */
#define SUMI_VALUE_TENSOR_LIST 7 /* u.tensors */
#define SUMI_VALUE_STRING 8      /* u.str (NUL-terminated) */
#define SUMI_VALUE_DTYPE 9       /* u.dtype (a ScalarType argument) */
#define SUMI_VALUE_DEVICE 10     /* u.device */
#define SUMI_VALUE_BOOL_LIST 11  /* u.bools */

typedef struct sumi_value {
  int32_t tag;
  int32_t reserved;
  union {
    sumi_tensor tensor;
    int64_t i;
    double d;
    int32_t b;
    struct { const int64_t* data; int64_t size; } ints;
    struct { const double* data; int64_t size; } doubles;
    struct { const int32_t* data; int64_t size; } bools;
    struct { const sumi_tensor* data; int64_t size; } tensors;
    const char* str;
    sumi_dtype dtype;
    sumi_device device;
  } u;
} sumi_value;

/* ---------------------------------------------------------------- logging ------------- */
#define SUMI_LOG_DEBUG 0
#define SUMI_LOG_INFO 1
#define SUMI_LOG_WARN 2
#define SUMI_LOG_ERROR 3

/* ---------------------------------------------------------------- autograd ------------ */
/* A custom autograd function; the host wraps it in an autograd node.
 * forward runs with grad mode off; it may save tensors on ctx for backward.
 * backward receives one gradient per output (a handle to zeros where the output was unused)
 * and writes one new reference (or NULL for "no gradient") per forward input. */
typedef struct sumi_autograd_function {
  size_t struct_size;
  const char* name; /* for error messages and graph dumps; static storage */
  void* user;       /* passed back to both callbacks */
  sumi_status (*forward)(void* user, sumi_autograd_ctx* ctx, const sumi_tensor* inputs,
                         int64_t n_inputs, sumi_tensor* outputs, int64_t max_outputs,
                         int64_t* n_outputs);
  sumi_status (*backward)(void* user, sumi_autograd_ctx* ctx, const sumi_tensor* grad_outputs,
                          int64_t n_grad_outputs, sumi_tensor* grad_inputs, int64_t n_inputs);
} sumi_autograd_function;

/* ---------------------------------------------------------------- the host table ------ */
/* Filled by the host, read by plugins. Append-only: a plugin built against minor M may call
 * every function present in minor M; fields after that exist only when struct_size covers
 * them. All functions are thread-safe unless noted. */
typedef struct sumi_host_api {
  size_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;

  /* --- errors (since 1.0) --- */
  /* Thread-local message of the last failed call on this thread. Borrowed; valid until the
   * next call that fails on this thread. Never NULL (empty when there is none). */
  const char* (*last_error)(void);
  /* Record a message as this thread's last error; returns `code` so a plugin can write
   * `return host->set_error(SUMI_ERR_INVALID_ARGUMENT, "...")`. */
  sumi_status (*set_error)(sumi_status code, const char* message);

  /* --- logging and progress (since 1.0) --- */
  void (*log)(int32_t level, const char* component, const char* message);
  /* new progress bar; `total` may be 0 for unknown. Release with progress_end. */
  sumi_progress* (*progress_begin)(const char* label, int64_t total);
  /* advance by `n`; `postfix` (nullable, borrowed) is shown after the bar, e.g. "loss=0.1". */
  void (*progress_update)(sumi_progress* p, int64_t n, const char* postfix);
  void (*progress_end)(sumi_progress* p);

  /* --- tensors (since 1.0) --- */
  void (*tensor_retain)(sumi_tensor t);  /* +1 reference */
  void (*tensor_release)(sumi_tensor t); /* -1 reference; NULL is ignored */
  int64_t (*tensor_ndim)(sumi_tensor t);
  /* copy up to `max_dims` sizes into `out`; returns ndim */
  int64_t (*tensor_shape)(sumi_tensor t, int64_t* out, int64_t max_dims);
  sumi_dtype (*tensor_dtype)(sumi_tensor t);
  sumi_device (*tensor_device)(sumi_tensor t);
  int32_t (*tensor_requires_grad)(sumi_tensor t);
  /* the accumulated gradient: new reference, or *out = NULL when there is none */
  sumi_status (*tensor_grad)(sumi_tensor t, sumi_tensor* out);
  /* a new CPU tensor holding a copy of `data` (row-major, `numel * bits/8` bytes). */
  sumi_status (*tensor_from_data)(const void* data, sumi_dtype dtype, const int64_t* shape,
                                  int64_t ndim, sumi_tensor* out);
  /* copy a tensor (any device, converted to `dtype`) into a caller buffer of `nbytes`. */
  sumi_status (*tensor_copy_to)(sumi_tensor t, sumi_dtype dtype, void* dst, size_t nbytes);
  /* value of a one-element tensor */
  sumi_status (*tensor_item)(sumi_tensor t, double* out);

  /* --- ATen operators by schema name (since 1.0) --- */
  /* Resolve "aten::add" + overload "Tensor" (or "" for the default overload) once. */
  sumi_status (*op_find)(const char* name, const char* overload, sumi_op* out);
  /* Call with `n_args` positional arguments (borrowed). Trailing arguments that have a
   * schema default may be left out. Results are written to `results` (tensors and tensor
   * lists as new references; release with values_release); `*n_results` receives the count.
   * Runs through the dispatcher: autograd, autocast and devices apply. */
  sumi_status (*op_call)(sumi_op op, const sumi_value* args, int64_t n_args, sumi_value* results,
                         int64_t max_results, int64_t* n_results);
  /* Release tensors (and host-allocated tensor-list arrays) inside op_call results. */
  void (*values_release)(sumi_value* values, int64_t n);

  /* --- grad mode and autocast, thread-local (since 1.0) --- */
  int32_t (*grad_mode_enabled)(void);
  void (*grad_mode_set)(int32_t enabled);
  /* autocast for a device type: enabled flag and the lower-precision dtype. */
  void (*autocast_get)(int32_t device_type, int32_t* enabled, sumi_dtype* dtype);
  void (*autocast_set)(int32_t device_type, int32_t enabled, sumi_dtype dtype);

  /* --- custom autograd (since 1.0) --- */
  /* Apply `fn` to `inputs` (borrowed); outputs are new references connected to the graph. */
  sumi_status (*autograd_apply)(const sumi_autograd_function* fn, const sumi_tensor* inputs,
                                int64_t n_inputs, sumi_tensor* outputs, int64_t max_outputs,
                                int64_t* n_outputs);
  /* Within forward: keep tensors (borrowed) for backward. */
  sumi_status (*autograd_save)(sumi_autograd_ctx* ctx, const sumi_tensor* tensors, int64_t n);
  /* Within backward: the i-th saved tensor, new reference. */
  sumi_status (*autograd_saved)(sumi_autograd_ctx* ctx, int64_t index, sumi_tensor* out);

  /* --- component configuration (since 1.0) ---
   * The host validated the configuration against the component's parameter schema and
   * filled defaults, so a key declared in the schema is always present. Strings and lists
   * are borrowed from the context. */
  sumi_status (*config_int)(const sumi_context* ctx, const char* key, int64_t* out);
  sumi_status (*config_double)(const sumi_context* ctx, const char* key, double* out);
  sumi_status (*config_bool)(const sumi_context* ctx, const char* key, int32_t* out);
  sumi_status (*config_string)(const sumi_context* ctx, const char* key, const char** out);
  sumi_status (*config_double_list)(const sumi_context* ctx, const char* key,
                                    const double** data, int64_t* size);
  sumi_status (*config_int_list)(const sumi_context* ctx, const char* key, const int64_t** data,
                                 int64_t* size);

  /* --- the parameter and state registry (since 1.0) ---
   * Trainable parameters and persistent state (optimizer moments, step counts) live in one
   * host registry under "<component>/<name>", so saving, resuming and optimizers see the
   * same set. `init` is borrowed; the host stores a detached copy. `group` names the
   * parameter group (e.g. "unet", "text_encoder"; NULL for the default group).
   * *out is a new reference to the registered tensor. Creating a name twice fails. */
  sumi_status (*param_create)(sumi_context* ctx, const char* name, sumi_tensor init,
                              const char* group, sumi_tensor* out);
  sumi_status (*state_create)(sumi_context* ctx, const char* name, sumi_tensor init,
                              sumi_tensor* out);
  /* an existing state tensor of this component, new reference; SUMI_ERR_NOT_FOUND if absent */
  sumi_status (*state_find)(sumi_context* ctx, const char* name, sumi_tensor* out);

  /* --- native tier (since 1.0) --- only for plugins that declared sumi_native_info and
   * passed the exact-build check. Borrowed pointer to the host's at::Tensor. */
  void* (*native_tensor)(sumi_tensor t);
  /* wrap an at::Tensor* (copied: the caller keeps its own) into a new reference. */
  sumi_tensor (*native_wrap)(const void* at_tensor);

  /* --- per-group learning rates (since 1.3) ---
   * The learning rate of this component's parameter group `group` (as given to param_create)
   * becomes its base rate (unet_lr / text_encoder_lr / learning_rate) times `scale` (>= 0,
   * default 1; the last call wins). Scale 0: the group is not trained (its parameters get no
   * gradient and are not given to the optimizer) but stays in the registry and is saved.
   * Call it before training starts (create / attach). */
  sumi_status (*param_group_lr_scale)(sumi_context* ctx, const char* group, double scale);

  /* --- the device (since 1.4) ---
   * Where this run computes (--device): a model moves its weights there at load and creates
   * its working tensors there; networks and optimizers create theirs on the device of the
   * tensors they are given (module weights, parameters), which is this one. Inputs the host
   * hands a component are on it too; the host's CPU generator stays the source of random
   * draws (noise is drawn on the CPU and moved). CPU when the run names none. */
  sumi_status (*device)(const sumi_context* ctx, sumi_device* out);
} sumi_host_api;

/* ---------------------------------------------------------------- parameter schema ---- */
#define SUMI_PARAM_BOOL 0
#define SUMI_PARAM_INT 1
#define SUMI_PARAM_DOUBLE 2
#define SUMI_PARAM_STRING 3
#define SUMI_PARAM_DOUBLE_LIST 4
#define SUMI_PARAM_INT_LIST 5

typedef struct sumi_param_spec {
  size_t struct_size;
  const char* key;           /* recipe key, e.g. "weight_decay" */
  int32_t type;              /* SUMI_PARAM_* */
  const char* default_value; /* in recipe syntax ("0.01", "0.9,0.999", "true"); NULL = required */
  const char* doc;           /* one sentence for `sumi plugins show` */
} sumi_param_spec;

/* ---------------------------------------------------------------- component kinds ----- */
#define SUMI_KIND_MODEL 1
#define SUMI_KIND_NETWORK 2
#define SUMI_KIND_OPTIMIZER 3
#define SUMI_KIND_LR_SCHEDULER 4
#define SUMI_KIND_NOISE_SCHEDULER 5
#define SUMI_KIND_TAGGER 6

/* Component API versions, one per kind; bumped when a kind's vtable semantics change. */
#define SUMI_MODEL_API 1
#define SUMI_NETWORK_API 1
#define SUMI_OPTIMIZER_API 1
#define SUMI_LR_SCHEDULER_API 1
#define SUMI_NOISE_SCHEDULER_API 1
#define SUMI_TAGGER_API 1

/* --- optimizer: updates the registry's parameters in place. */
typedef struct sumi_optimizer_vtable {
  size_t struct_size;
  /* Called once per group after create; `params` borrowed (the host keeps them alive). */
  sumi_status (*add_param_group)(void* self, const char* group, const sumi_tensor* params,
                                 int64_t n_params);
  /* One update. `lrs[i]` is the learning rate of group i (in add_param_group order) for this
   * step. Runs with grad mode off. Parameters without a gradient are skipped. */
  sumi_status (*step)(void* self, const double* lrs, int64_t n_groups);
} sumi_optimizer_vtable;

/* --- LR scheduler: a pure function of the step, so resuming needs no state. */
typedef struct sumi_lr_query {
  size_t struct_size;
  int64_t step;          /* optimizer steps taken so far (0 for the first step) */
  int64_t total_steps;   /* planned optimizer steps */
  int64_t warmup_steps;  /* from the recipe's lr_scheduler.warmup_steps */
  double base_lr;        /* the optimizer's learning_rate (polynomial decay ends at lr_end) */
} sumi_lr_query;

typedef struct sumi_lr_scheduler_vtable {
  size_t struct_size;
  /* Multiplier applied to each group's base learning rate. */
  sumi_status (*factor)(void* self, const sumi_lr_query* query, double* out);
} sumi_lr_scheduler_vtable;

/* --- noise scheduler: training noise and inference sampling. Tensors borrowed in,
 * new references out. `step_index` counts from 0 over the timesteps of set_timesteps. */
typedef struct sumi_noise_scheduler_vtable {
  size_t struct_size;
  sumi_status (*set_timesteps)(void* self, int64_t num_inference_steps);
  /* 1-D float64 timesteps of the current schedule */
  sumi_status (*timesteps)(void* self, sumi_tensor* out);
  /* 1-D float64 sigmas (or an empty tensor for schedulers that have none) */
  sumi_status (*sigmas)(void* self, sumi_tensor* out);
  sumi_status (*init_noise_sigma)(void* self, double* out);
  sumi_status (*scale_model_input)(void* self, sumi_tensor sample, int64_t step_index,
                                   sumi_tensor* out);
  /* `noise` (nullable) is the fresh noise an ancestral sampler adds at this step. */
  sumi_status (*step)(void* self, sumi_tensor model_output, int64_t step_index,
                      sumi_tensor sample, sumi_tensor noise, sumi_tensor* out);
  /* training: noisy = q(x_t | x_0) at integer `timesteps` (1-D, one per batch item) */
  sumi_status (*add_noise)(void* self, sumi_tensor original, sumi_tensor noise,
                           sumi_tensor timesteps, sumi_tensor* out);
  /* training: the v-prediction target */
  sumi_status (*velocity)(void* self, sumi_tensor sample, sumi_tensor noise,
                          sumi_tensor timesteps, sumi_tensor* out);
  /* 1-D float64 alphas_cumprod of the training schedule */
  sumi_status (*alphas_cumprod)(void* self, sumi_tensor* out);
  /* (since 1.4) What the sampler says about itself, as the model's describe: `*json` receives
   * one JSON object (UTF-8), borrowed until the next describe call on the same thread. Keys
   * (all optional): "a1111_name" (string: its label in A1111's `parameters` text, e.g.
   * "Euler a", "DPM++ 2M Karras"; default the component name), "noises_per_step" (integer:
   * the sampler noises gen_img draws per step and image before sampling; default 1). */
  sumi_status (*describe)(void* self, const char** json);
} sumi_noise_scheduler_vtable;

/* Size of the noise scheduler vtable of ABI 1.0 - 1.3 (before describe). */
#define SUMI_NOISE_SCHEDULER_VTABLE_SIZE_1_3 offsetof(sumi_noise_scheduler_vtable, describe)

/* --- what a model exposes for adapters: one adaptable layer. */
#define SUMI_MODULE_LINEAR 0
#define SUMI_MODULE_CONV2D 1

#define SUMI_ROLE_UNET 0
#define SUMI_ROLE_TEXT_ENCODER 1
#define SUMI_ROLE_TEXT_ENCODER_2 2

typedef struct sumi_module_info {
  size_t struct_size;
  const char* name;      /* kohya module name, e.g. "lora_unet_down_blocks_0_attentions_0_proj_in" */
  int32_t kind;          /* SUMI_MODULE_* */
  int32_t role;          /* SUMI_ROLE_* */
  int64_t in_features;   /* in_channels for conv */
  int64_t out_features;  /* out_channels for conv */
  int64_t kernel[2];     /* 1x1 for linear */
  int64_t stride[2];
  int64_t padding[2];
  int32_t in_transformer; /* inside a transformer block (kohya's LierLa target set) */
  int32_t reserved;
  sumi_tensor weight;    /* borrowed; the frozen base weight */
  sumi_tensor bias;      /* borrowed; the frozen base bias, NULL when the layer has none (since 1.3) */
} sumi_module_info;

/* Size of sumi_module_info in ABI 1.0 - 1.2 (before bias). A model's array has the stride of
 * its elements' struct_size; the host hands a network an array in the layout it was built for. */
#define SUMI_MODULE_INFO_SIZE_1_2 offsetof(sumi_module_info, bias)

/* One tensor of a weights file as a network's probe / configure_from_weights see it: no data,
 * only the name (the file's key) and the shape. (since 1.3) */
typedef struct sumi_file_tensor {
  size_t struct_size;
  const char* name;     /* borrowed */
  const int64_t* shape; /* borrowed, ndim values */
  int32_t ndim;
  int32_t reserved;
} sumi_file_tensor;

/* --- network (adapter): wraps a subset of a model's modules.
 * Call order (docs/abi.md): create; [probe: on any instance, also one made only to ask];
 * [configure_from_weights: before attach]; attach (once); load (optional, after attach); set_multiplier,
 * set_training (any time after attach); forward (run time) or weight_delta + bias_delta (merge);
 * metadata (after attach, when saving); destroy. `module_index` is always the position in the
 * array given to attach. */
typedef struct sumi_network_vtable {
  size_t struct_size;
  /* Choose and set up the modules to adapt. Writes selected[i] = 1 for each wrapped module
   * and creates its parameters through host->param_create (registry names become the saved
   * file's keys). `modules` (and the names and weights it points to) stay valid until the
   * network is destroyed; the network may keep the borrowed weight handles but must not write
   * to them. */
  sumi_status (*attach)(void* self, const sumi_module_info* modules, int64_t n_modules,
                        int32_t* selected);
  /* Runtime application: given a wrapped module's input and the frozen layer's output, write
   * the adapted output (new reference). */
  sumi_status (*forward)(void* self, int64_t module_index, sumi_tensor input,
                         sumi_tensor base_output, sumi_tensor* out);
  /* Merge: the weight delta for a wrapped module at the current multiplier (new reference,
   * same shape as the base weight, any floating dtype, on the base weight's device). The host
   * adds it to the weight (in float32, rounded once); the network's own tensors are unchanged. */
  sumi_status (*weight_delta)(void* self, int64_t module_index, sumi_tensor* out);
  sumi_status (*set_multiplier)(void* self, double multiplier);
  /* Fill parameters from a file's tensors (names as the network's file format has them). */
  sumi_status (*load)(void* self, const char* const* names, const sumi_tensor* tensors,
                      int64_t n);
  /* Training mode toggles dropout-style behaviour. */
  sumi_status (*set_training)(void* self, int32_t training);
  /* --- since 1.3 --- */
  /* Can this network read a weights file? Given the file's tensors (names and shapes) and its
   * metadata as a JSON object of strings ("{}" when it has none), writes understood[i] = 1 for
   * every tensor the network's load would take. The host picks, for a file given without
   * --network_module, a network that understands every tensor. Needs no attach; must not
   * create parameters. */
  sumi_status (*probe)(void* self, const sumi_file_tensor* tensors, int64_t n,
                       const char* metadata_json, int32_t* understood);
  /* Before attach, on the instance that will attach and load the file: take from a weights
   * file what kohya's create_network_from_weights takes (each module's rank, which modules it
   * covers: U-Net only, text encoder only, 3x3 convolutions, per-module ranks as resize_lora
   * writes them), replacing the configuration's values for those. attach then wraps exactly
   * the file's modules. Refuses a file the network cannot read, naming the tensor. */
  sumi_status (*configure_from_weights)(void* self, const sumi_file_tensor* tensors, int64_t n,
                                        const char* metadata_json);
  /* The metadata the network writes into a saved file, as a JSON object of strings: kohya's
   * ss_network_dim / ss_network_alpha for networks that have them ("{}" for none; the host
   * writes no LoRA values for a network that gives none). An "ss_network_args" entry replaces
   * the host's (the user's --network_args). Borrowed until the next call; after attach. */
  sumi_status (*metadata)(void* self, const char** json);
  /* Merge, for networks that change a layer's bias (output scaling): the bias delta of a wrapped
   * module at the current multiplier (new reference, the bias's shape), or *out = NULL when the
   * network leaves the bias alone. The host adds it to sumi_module_info.bias. */
  sumi_status (*bias_delta)(void* self, int64_t module_index, sumi_tensor* out);
  /* kohya's --scale_weight_norms (max-norm regularisation), called after each optimizer step
   * with grad mode off: scales each wrapped module's trained tensors in place so that the norm
   * of its weight delta (at multiplier 1) is at most `max_norm`; writes how many modules were
   * scaled (kohya's keys_scaled) and the mean and largest norm after scaling.
   * SUMI_ERR_UNSUPPORTED (or a NULL slot) when the network has no such rule. (appended in 1.3) */
  sumi_status (*apply_max_norm)(void* self, double max_norm, int64_t* keys_scaled,
                                double* mean_norm, double* max_key_norm);
} sumi_network_vtable;

/* Size of the network vtable of ABI 1.0 - 1.2 (before probe): the least a network provides. */
#define SUMI_NETWORK_VTABLE_SIZE_1_2 offsetof(sumi_network_vtable, probe)

/* --- model family (normally native tier). */
typedef struct sumi_model_vtable {
  size_t struct_size;
  /* Load weights from a file or folder; options come from the component configuration. */
  sumi_status (*load)(void* self, const char* path);
  /* The adaptable modules (borrowed array, valid until destroy). */
  sumi_status (*modules)(void* self, const sumi_module_info** out, int64_t* n);
  /* Conditioning for prompts: `cond` [B, 77*k, C]; `pooled` (nullable out) for SDXL. */
  sumi_status (*encode_text)(void* self, const char* const* prompts, int64_t n_prompts,
                             sumi_tensor* cond, sumi_tensor* pooled);
  /* The denoiser: model output for latents at timesteps. `added` (nullable) carries SDXL's
   * size/crop conditioning [B, 6]. */
  sumi_status (*denoise)(void* self, sumi_tensor latents, sumi_tensor timesteps, sumi_tensor cond,
                         sumi_tensor pooled, sumi_tensor added, sumi_tensor* out);
  /* Images [B,3,H,W] in [-1,1] -> scaled latents (the mean of the posterior when `sample` is
   * 0, a draw from it otherwise), and back. */
  sumi_status (*vae_encode)(void* self, sumi_tensor images, int32_t sample, sumi_tensor* out);
  sumi_status (*vae_decode)(void* self, sumi_tensor latents, sumi_tensor* out);
  /* Route a module's forward through a network (runtime application); NULL network detaches. */
  sumi_status (*set_network)(void* self, void* network_self, const sumi_network_vtable* network,
                             const int32_t* selected);

  /* --- training the model itself (since 1.1): DreamBooth / fine-tuning / Textual Inversion.
   * A host reads these only when struct_size covers them (a 1.0 model has none). All strings
   * are borrowed for the call. */
  /* Make one part trainable: every weight of `part` ("unet", "text_encoder",
   * "text_encoder_2") is registered with host->param_create under the component's context,
   * group = `part`, name "<part>.<diffusers/transformers name>"; from then on the model
   * computes with the registered tensors, so optimizers, save_state and resume see them.
   * Needs a loaded model; a part is made trainable once. */
  sumi_status (*train_part)(void* self, const char* part);
  /* Textual Inversion: add `token` as `num_vectors` new tokens (token, token1, token2, ...;
   * in prompts `token` alone expands to all of them). Their embedding rows, one block per text
   * encoder, are the only new parameters: "ti.<token>.emb_params" (SD1/SD2) or
   * "ti.<token>.clip_l" + "ti.<token>.clip_g" (SDXL), group "textual_inversion", fp32.
   * Initialised from the token embeddings of `init_word` (repeated or cut to num_vectors);
   * NULL or "" draws N(0, 0.02). Refused when the token string is already a token. */
  sumi_status (*add_token)(void* self, const char* token, const char* init_word,
                           int64_t num_vectors);
  /* Write a token added by add_token as an embedding file (.safetensors only): "emb_params"
   * [n, dim] (SD1/SD2) or "clip_l" + "clip_g" (SDXL), as kohya and A1111 read them. `dtype`
   * (nullable: fp32) converts the vectors. An existing file is replaced only if `overwrite`. */
  sumi_status (*save_token)(void* self, const char* token, const char* path,
                            const sumi_dtype* dtype, int32_t overwrite);
  /* Write the whole model (UNet, text encoder(s), VAE; trained weights included, added tokens
   * not): `path` ending in .safetensors is one original-layout file (LDM / SGM names), anything
   * else a diffusers folder. `dtype` (nullable: the model's own) converts floating-point
   * weights. An existing path is replaced (atomically) only if `overwrite`. */
  sumi_status (*save)(void* self, const char* path, const sumi_dtype* dtype, int32_t overwrite);

  /* --- describing the loaded model (since 1.2). A host reads it only when struct_size covers it.
   * `*json` receives one JSON object (UTF-8), borrowed: valid until the next describe call on the
   * same thread. Keys (a host uses those it knows and ignores the rest):
   *   "family"                 string, the component's family name ("sd1", "sd2", "sdxl", ...)
   *   "prediction_type"        "epsilon" or "v_prediction"
   *   "latent_channels"        integer; "vae_scale_factor": pixels per latent (8 for SD)
   *   "scaling_factor"         the VAE latent scale the model's vae_encode applies
   *   "default_resolution"     [width, height] the model was trained at
   *   "text_encoders"          the trainable text-encoder part names (train_part)
   *   "force_zeros_for_empty_prompt"  an empty negative prompt is zero conditioning (SDXL)
   *   "modelspec_architecture" SAI model spec architecture string of the model ("stable-diffusion-v1")
   *   "scheduler"              the diffusers scheduler config to sample with: a folder's own
   *                            scheduler_config.json, or the family's standard one for a single file
   * Needs a loaded model. */
  sumi_status (*describe)(void* self, const char** json);
  /* Can this component load `path` (a file or folder)? Judged from names, shapes and configs
   * (a safetensors header, a folder's config.json files; a pickled .ckpt is unpickled by the
   * restricted reader), before and without load. SUMI_OK with `*json` = {"family": "<name>"}
   * (borrowed as describe's) when the checkpoint is this component's family; an error status
   * whose message says what the file is otherwise (another family, not a model). (since 1.2) */
  sumi_status (*probe)(void* self, const char* path, const char** json);
  /* Textual Inversion: the vectors of a token added by add_token, from an embedding file (what
   * save_token writes; A1111 .pt). Refused when the file's vector count or width differs. (since 1.2) */
  sumi_status (*load_token)(void* self, const char* token, const char* path);
  /* Convert a checkpoint of this component's family between the forms it reads and writes,
   * without building the model: `dst` ending in .safetensors is one original-layout file, a path
   * without a file extension a diffusers folder (other extensions are refused). `dtype`
   * (nullable) converts floating-point tensors; otherwise each keeps its own. An existing `dst`
   * is replaced (atomically) only if `overwrite`. (since 1.2) */
  sumi_status (*convert)(void* self, const char* src, const char* dst, const sumi_dtype* dtype,
                         int32_t overwrite);

  /* --- token-level text encoding (appended in 1.3). A host reads these only when struct_size
   * covers them; a NULL slot or SUMI_ERR_UNSUPPORTED means the model has none. */
  /* The conditioning of raw token ids: `ids` (borrowed) [B, T] int64 ids of the model's (first)
   * tokenizer, used as given (no BOS / EOS / padding added; T at most the encoder's positions);
   * `*cond` (new reference) [B, T, C], what encode_text computes from such ids (clip_skip
   * applies; no prompt weighting). describe's "tokenizer" object gives "vocab_size",
   * "bos_token_id", "eos_token_id" and "special_token_ids". */
  sumi_status (*encode_tokens)(void* self, sumi_tensor ids, sumi_tensor* cond);
  /* The text of token `id` (0 <= id < vocab_size) as the tokenizer reads it back: the token's
   * bytes as UTF-8 (invalid sequences as U+FFFD), "</w>" as a space, surrounding white space
   * trimmed (transformers' convert_tokens_to_string). Borrowed: valid until the next call on
   * the same thread. */
  sumi_status (*token_text)(void* self, int64_t id, const char** text);

  /* --- freeing parts a run no longer needs (appended in 1.4). A host reads it only when
   * struct_size covers it; a NULL slot or SUMI_ERR_UNSUPPORTED means the model keeps the part.
   * `part` "vae": the host has cached every latent and will not encode or decode again (no
   * sample images, no model save); the model frees the VAE's weights, and a later vae_encode /
   * vae_decode / save fails naming the released part. describe keeps answering. Other part
   * names are refused with SUMI_ERR_INVALID_ARGUMENT. */
  sumi_status (*release_part)(void* self, const char* part);
} sumi_model_vtable;

/* Size of the model vtable of ABI 1.0 (before train_part): the least a model must provide. */
#define SUMI_MODEL_VTABLE_SIZE_1_0 offsetof(sumi_model_vtable, train_part)
/* Size of the model vtable of ABI 1.1 (before describe). */
#define SUMI_MODEL_VTABLE_SIZE_1_1 offsetof(sumi_model_vtable, describe)
/* Size of the model vtable of ABI 1.2 (before encode_tokens). */
#define SUMI_MODEL_VTABLE_SIZE_1_2 offsetof(sumi_model_vtable, encode_tokens)
/* Size of the model vtable of ABI 1.3 (before release_part). */
#define SUMI_MODEL_VTABLE_SIZE_1_3 offsetof(sumi_model_vtable, release_part)

/* --- tagger: image -> tags. */
typedef void (*sumi_tag_sink)(void* user, const char* tag, double score);
typedef struct sumi_tagger_vtable {
  size_t struct_size;
  /* `image` [H,W,3] float in [0,1]; reports each tag above the configured threshold. */
  sumi_status (*tag)(void* self, sumi_tensor image, sumi_tag_sink sink, void* user);
} sumi_tagger_vtable;

/* ---------------------------------------------------------------- descriptors --------- */
typedef struct sumi_component {
  size_t struct_size;
  int32_t kind;          /* SUMI_KIND_* */
  uint32_t api_version;  /* SUMI_<KIND>_API the component was written for */
  const char* name;      /* what users type: "lora", "adamw", "cosine" */
  const char* summary;   /* one line */
  const sumi_param_spec* params;
  int64_t n_params;
  /* Create an instance. `ctx` is owned by the host and outlives the instance. */
  sumi_status (*create)(const sumi_host_api* host, sumi_context* ctx, void** self);
  void (*destroy)(void* self);
  const void* vtable; /* sumi_<kind>_vtable*, struct_size first */
} sumi_component;

/* Native tier: the exact libtorch build a plugin was compiled against. */
typedef struct sumi_native_info {
  size_t struct_size;
  const char* torch_version; /* TORCH_VERSION, e.g. "1.13.0" */
  int32_t cxx11_abi;         /* _GLIBCXX_USE_CXX11_ABI */
  int32_t reserved;
  const char* cuda_version;  /* "" for CPU builds */
} sumi_native_info;

typedef struct sumi_plugin_descriptor {
  size_t struct_size;
  uint32_t abi_major; /* SUMI_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor; /* SUMI_ABI_MINOR the plugin was built with */
  const char* library; /* library name, e.g. "sumi_optimizers" */
  const char* version; /* the library's own version string */
  const sumi_component* components;
  int64_t n_components;
  const sumi_native_info* native; /* NULL for stable-tier libraries */
} sumi_plugin_descriptor;

/* The one exported symbol. Called once per load; `*out` must stay valid while the library
 * is loaded (normally static storage). The host pointer stays valid for the process. */
#define SUMI_PLUGIN_ENTRY_NAME "sumi_plugin_entry"
typedef sumi_status (*sumi_plugin_entry_fn)(const sumi_host_api* host,
                                            const sumi_plugin_descriptor** out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SUMI_SUMI_H */

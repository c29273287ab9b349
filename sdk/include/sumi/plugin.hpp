// sumi/plugin.hpp — write a plugin as a C++ class and export it in a few lines.
//
//   class MyOptimizer : public sumi::Optimizer {
//    public:
//     explicit MyOptimizer(sumi::Context& ctx);
//     void add_param_group(const std::string& group, std::vector<sumi::Tensor> params) override;
//     void step(const std::vector<double>& lrs) override;
//   };
//   static const sumi_param_spec kParams[] = {
//       sumi::param("momentum", SUMI_PARAM_DOUBLE, "0.9", "Momentum factor.")};
//   SUMI_PLUGIN("my_optimizers", "1.0.0",
//               sumi::component<MyOptimizer>("myopt", "My optimizer.", kParams))
//
// The glue gives each kind's C vtable trampolines that catch every exception, so nothing C++
// crosses the boundary. Build with hidden visibility (sumi_add_plugin in the CMake package does).
#ifndef SUMI_PLUGIN_HPP
#define SUMI_PLUGIN_HPP

#include <sumi/tensor.hpp>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace sumi {

constexpr sumi_param_spec param(const char* key, int32_t type, const char* default_value,
                                const char* doc) {
  return sumi_param_spec{sizeof(sumi_param_spec), key, type, default_value, doc};
}

// The configuration and registry namespace of one component instance.
class Context {
 public:
  explicit Context(sumi_context* c) : c_(c) {}
  sumi_context* get() const { return c_; }

  int64_t get_int(const char* key) const {
    int64_t v = 0;
    check(api().config_int(c_, key, &v));
    return v;
  }
  double get_double(const char* key) const {
    double v = 0;
    check(api().config_double(c_, key, &v));
    return v;
  }
  bool get_bool(const char* key) const {
    int32_t v = 0;
    check(api().config_bool(c_, key, &v));
    return v != 0;
  }
  std::string get_string(const char* key) const {
    const char* v = nullptr;
    check(api().config_string(c_, key, &v));
    return v ? v : "";
  }
  std::vector<double> get_double_list(const char* key) const {
    const double* d = nullptr;
    int64_t n = 0;
    check(api().config_double_list(c_, key, &d, &n));
    return std::vector<double>(d, d + n);
  }
  std::vector<int64_t> get_int_list(const char* key) const {
    const int64_t* d = nullptr;
    int64_t n = 0;
    check(api().config_int_list(c_, key, &d, &n));
    return std::vector<int64_t>(d, d + n);
  }
  // A trainable parameter registered with the host (a detached copy of `init`).
  // The run's device (host->device, ABI 1.4); the CPU under an older host, which has none.
  sumi_device device() const {
    sumi_device d{SUMI_DEVICE_CPU, 0};
    if (SUMI_HAS_FIELD(&api(), sumi_host_api, device) && api().device) check(api().device(c_, &d));
    return d;
  }
  Tensor param(const std::string& name, const Tensor& init, const char* group = nullptr) {
    sumi_tensor t = nullptr;
    check(api().param_create(c_, name.c_str(), init.get(), group, &t));
    return Tensor::adopt(t);
  }
  // ABI 1.3: the learning rate of parameter group `group` is the base rate times `scale`; 0 =
  // the group is not trained (still saved). Throws on a host older than 1.3.
  void param_group_lr_scale(const std::string& group, double scale) {
    if (api().struct_size < offsetof(sumi_host_api, param_group_lr_scale) + sizeof(void*))
      throw Error(SUMI_ERR_UNSUPPORTED, "the host is older than ABI 1.3 and has no per-group learning rates");
    check(api().param_group_lr_scale(c_, group.c_str(), scale));
  }
  // Persistent non-trainable state (saved with --save_state, restored on --resume).
  Tensor state(const std::string& name, const Tensor& init) {
    sumi_tensor t = nullptr;
    check(api().state_create(c_, name.c_str(), init.get(), &t));
    return Tensor::adopt(t);
  }
  // Existing state, or an undefined Tensor.
  Tensor find_state(const std::string& name) {
    sumi_tensor t = nullptr;
    if (api().state_find(c_, name.c_str(), &t) != SUMI_OK) return Tensor();
    return Tensor::adopt(t);
  }

 private:
  sumi_context* c_;
};

// ---- one base class per kind; a plugin derives from one and has a (Context&) constructor.
class Optimizer {
 public:
  static constexpr int32_t kind = SUMI_KIND_OPTIMIZER;
  static constexpr uint32_t api = SUMI_OPTIMIZER_API;
  virtual ~Optimizer() = default;
  virtual void add_param_group(const std::string& group, std::vector<Tensor> params) = 0;
  virtual void step(const std::vector<double>& lrs) = 0;
};

class LrScheduler {
 public:
  static constexpr int32_t kind = SUMI_KIND_LR_SCHEDULER;
  static constexpr uint32_t api = SUMI_LR_SCHEDULER_API;
  virtual ~LrScheduler() = default;
  virtual double factor(const sumi_lr_query& q) = 0;
};

class NoiseScheduler {
 public:
  static constexpr int32_t kind = SUMI_KIND_NOISE_SCHEDULER;
  static constexpr uint32_t api = SUMI_NOISE_SCHEDULER_API;
  virtual ~NoiseScheduler() = default;
  virtual void set_timesteps(int64_t n) = 0;
  virtual Tensor timesteps() = 0;
  virtual Tensor sigmas() = 0;
  virtual double init_noise_sigma() = 0;
  virtual Tensor scale_model_input(const Tensor& sample, int64_t step_index) = 0;
  virtual Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample,
                      const Tensor& noise) = 0;
  virtual Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) = 0;
  virtual Tensor velocity(const Tensor& sample, const Tensor& noise, const Tensor& timesteps) = 0;
  virtual Tensor alphas_cumprod() = 0;
  // ABI 1.4: one JSON object ("a1111_name", "noises_per_step"; sumi.h); "{}" = the defaults.
  virtual std::string describe() { return "{}"; }
};

// A weights file's tensor as probe / configure_from_weights see it (ABI 1.3): name and shape.
struct FileTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// A file's tensor names and shapes as two parallel lists (what sumi::targets' file readers take).
struct FileNamesShapes {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
};
inline FileNamesShapes names_and_shapes(const std::vector<FileTensor>& tensors) {
  FileNamesShapes out;
  for (const auto& t : tensors) {
    out.names.push_back(t.name);
    out.shapes.push_back(t.shape);
  }
  return out;
}

// Python's str(float), as kohya's metadata holds numbers: the shortest text that reads back to
// the same double, ".0" when integral ("2.0", "0.001", "1e-05").
inline std::string py_float(double v) {
  char buf[32];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string out = buf;
  if (out.find_first_of(".einn") == std::string::npos) out += ".0";
  return out;
}

// A JSON object of strings, {"key": "value", ...}, keys in map order; for metadata().
inline std::string json_object(const std::map<std::string, std::string>& m) {
  auto quote = [](const std::string& v) {
    std::string o = "\"";
    for (char c : v) {
      switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\t': o += "\\t"; break;
        case '\r': o += "\\r"; break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            o += buf;
          } else {
            o += c;
          }
      }
    }
    return o + "\"";
  };
  std::string out = "{";
  for (const auto& [k, v] : m) out += (out.size() > 1 ? ", " : "") + quote(k) + ": " + quote(v);
  return out + "}";
}

// The metadata_json a network's probe / configure_from_weights receive: a JSON object of strings
// (a file's safetensors metadata) as a map. Throws sumi::Error on text that is not one.
inline std::map<std::string, std::string> parse_json_object(const std::string& json) {
  size_t i = 0;
  auto bad = [&](const char* what) -> void {
    throw Error(SUMI_ERR_INVALID_ARGUMENT, std::string("metadata JSON: ") + what + " at offset " + std::to_string(i));
  };
  auto ws = [&] {
    while (i < json.size() && (json[i] == ' ' || json[i] == '\n' || json[i] == '\t' || json[i] == '\r')) ++i;
  };
  auto str = [&] {
    ws();
    if (i >= json.size() || json[i] != '"') bad("expected a string");
    std::string out;
    for (++i; i < json.size() && json[i] != '"'; ++i) {
      char c = json[i];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i >= json.size()) bad("unterminated escape");
      switch (json[i]) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i + 4 >= json.size()) bad("short \\u escape");
          unsigned cp = static_cast<unsigned>(std::strtoul(json.substr(i + 1, 4).c_str(), nullptr, 16));
          i += 4;
          if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < json.size() && json[i + 1] == '\\' && json[i + 2] == 'u') {
            const unsigned lo = static_cast<unsigned>(std::strtoul(json.substr(i + 3, 4).c_str(), nullptr, 16));
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          }
          // UTF-8
          if (cp < 0x80) out += static_cast<char>(cp);
          else if (cp < 0x800) out += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
          else if (cp < 0x10000)
            out += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
          else
            out += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
                    static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
          break;
        }
        default: out += json[i];  // \" \\ \/
      }
    }
    if (i >= json.size()) bad("unterminated string");
    ++i;
    return out;
  };
  std::map<std::string, std::string> out;
  ws();
  if (i >= json.size() || json[i] != '{') bad("expected an object");
  ++i;
  ws();
  if (i < json.size() && json[i] == '}') return out;
  while (true) {
    std::string k = str();
    ws();
    if (i >= json.size() || json[i] != ':') bad("expected ':'");
    ++i;
    out[k] = str();
    ws();
    if (i < json.size() && json[i] == ',') {
      ++i;
      continue;
    }
    if (i < json.size() && json[i] == '}') return out;
    bad("expected ',' or '}'");
  }
}

// kohya's ss_network_module of a file's metadata without the "networks." prefix ("" when absent).
inline std::string file_network_module(const std::string& metadata_json) {
  const auto m = parse_json_object(metadata_json);
  auto it = m.find("ss_network_module");
  if (it == m.end()) return "";
  const std::string& v = it->second;
  return v.rfind("networks.", 0) == 0 ? v.substr(9) : v;
}

class Network {
 public:
  static constexpr int32_t kind = SUMI_KIND_NETWORK;
  static constexpr uint32_t api = SUMI_NETWORK_API;
  virtual ~Network() = default;
  // Returns, per module, whether it is wrapped. The infos stay valid while the network lives;
  // their size is the current sumi_module_info's (the host repacks older models' arrays).
  virtual std::vector<bool> attach(const std::vector<const sumi_module_info*>& modules) = 0;
  virtual Tensor forward(int64_t module_index, const Tensor& input, const Tensor& base_output) = 0;
  virtual Tensor weight_delta(int64_t module_index) = 0;
  virtual void set_multiplier(double m) = 0;
  virtual void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) = 0;
  virtual void set_training(bool training) = 0;
  // ABI 1.3, with defaults so a network written before needs no change:
  // per tensor, whether load would take it (default: none, the network reads no foreign files);
  virtual std::vector<bool> probe(const std::vector<FileTensor>& tensors, const std::string& metadata_json) {
    (void)metadata_json;
    return std::vector<bool>(tensors.size(), false);
  }
  // before attach: take ranks / coverage from a weights file (default: nothing, the network's
  // configuration is the user's and load checks the file against it);
  virtual void configure_from_weights(const std::vector<FileTensor>& tensors, const std::string& metadata_json) {
    (void)tensors;
    (void)metadata_json;
  }
  // the ss_* metadata the network writes when saved (default: none);
  virtual std::map<std::string, std::string> metadata() { return {}; }
  // the bias delta of a wrapped module at the current multiplier (default: undefined, the bias
  // stays).
  virtual Tensor bias_delta(int64_t module_index) {
    (void)module_index;
    return Tensor();
  }
  // kohya's --scale_weight_norms after a step (default: unsupported).
  struct MaxNorm {
    int64_t keys_scaled = 0;
    double mean_norm = 0, max_norm = 0;
  };
  virtual MaxNorm apply_max_norm(double max_norm) {
    (void)max_norm;
    throw Error(SUMI_ERR_UNSUPPORTED, "this network has no max-norm regularisation (--scale_weight_norms)");
  }
};

class Model {
 public:
  static constexpr int32_t kind = SUMI_KIND_MODEL;
  static constexpr uint32_t api = SUMI_MODEL_API;
  virtual ~Model() = default;
  virtual void load(const std::string& path) = 0;
  virtual const std::vector<sumi_module_info>& modules() = 0;
  // Returns {cond, pooled}; pooled undefined when the family has none.
  virtual std::pair<Tensor, Tensor> encode_text(const std::vector<std::string>& prompts) = 0;
  virtual Tensor denoise(const Tensor& latents, const Tensor& timesteps, const Tensor& cond,
                         const Tensor& pooled, const Tensor& added) = 0;
  virtual Tensor vae_encode(const Tensor& images, bool sample) = 0;
  virtual Tensor vae_decode(const Tensor& latents) = 0;
  virtual void set_network(void* network_self, const sumi_network_vtable* network,
                           const int32_t* selected) = 0;
  // Training the model itself (ABI 1.1). A model that does not train leaves these: they
  // refuse with SUMI_ERR_UNSUPPORTED. `dtype` empty = the default the slot documents.
  virtual void train_part(const std::string& part) {
    throw Error(SUMI_ERR_UNSUPPORTED, "this model cannot train its weights (train_part '" + part + "')");
  }
  virtual void add_token(const std::string& token, const std::string& init_word, int64_t num_vectors) {
    (void)init_word;
    (void)num_vectors;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model has no Textual Inversion tokens (add_token '" + token + "')");
  }
  virtual void save_token(const std::string& token, const std::string& path, std::optional<sumi_dtype> dtype,
                          bool overwrite) {
    (void)path;
    (void)dtype;
    (void)overwrite;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model has no Textual Inversion tokens (save_token '" + token + "')");
  }
  virtual void save(const std::string& path, std::optional<sumi_dtype> dtype, bool overwrite) {
    (void)dtype;
    (void)overwrite;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model cannot be saved (save '" + path + "')");
  }
  // What the host needs to know of the loaded model, as a JSON object (ABI 1.2, sumi.h lists the
  // keys). The default says nothing ("{}"): the host then falls back to its flags and defaults.
  virtual std::string describe() { return "{}"; }
  // ABI 1.2: whether `path` is a checkpoint this component loads; the JSON describe documents
  // ({"family": ...}). Throw (an Error's message reaches the host) when it is not. The default
  // claims nothing.
  virtual std::string probe(const std::string& path) {
    throw Error(SUMI_ERR_UNSUPPORTED, "this model cannot tell which files it loads (probe '" + path + "')");
  }
  virtual void load_token(const std::string& token, const std::string& path) {
    (void)path;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model has no Textual Inversion tokens (load_token '" + token + "')");
  }
  virtual void convert(const std::string& src, const std::string& dst, std::optional<sumi_dtype> dtype, bool overwrite) {
    (void)dst;
    (void)dtype;
    (void)overwrite;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model cannot convert checkpoints (convert '" + src + "')");
  }
  // ABI 1.3: the conditioning of raw token ids [B, T] (sumi.h, encode_tokens) and a token's text.
  virtual Tensor encode_tokens(const Tensor& ids) {
    (void)ids;
    throw Error(SUMI_ERR_UNSUPPORTED, "this model cannot encode raw token ids (encode_tokens)");
  }
  virtual std::string token_text(int64_t id) {
    throw Error(SUMI_ERR_UNSUPPORTED, "this model has no token texts (token_text " + std::to_string(id) + ")");
  }
  // ABI 1.4: free a part the run no longer needs (sumi.h, release_part); the default keeps it.
  virtual void release_part(const std::string& part) {
    throw Error(SUMI_ERR_UNSUPPORTED, "this model keeps its parts (release_part '" + part + "')");
  }
};

class Tagger {
 public:
  static constexpr int32_t kind = SUMI_KIND_TAGGER;
  static constexpr uint32_t api = SUMI_TAGGER_API;
  virtual ~Tagger() = default;
  virtual std::vector<std::pair<std::string, double>> tag(const Tensor& image) = 0;
};

namespace detail {

template <class Impl>
Impl& self_of(void* s) {
  return *static_cast<Impl*>(s);
}

// Trampolines: one C vtable per (kind, implementation).
template <class Impl>
struct OptimizerVtable {
  static const sumi_optimizer_vtable* get() {
    static const sumi_optimizer_vtable vt = {
        sizeof(sumi_optimizer_vtable),
        [](void* s, const char* group, const sumi_tensor* params, int64_t n) {
          return guarded([&] {
            std::vector<Tensor> ps;
            for (int64_t i = 0; i < n; ++i) ps.push_back(Tensor::borrow(params[i]));
            self_of<Impl>(s).add_param_group(group ? group : "", std::move(ps));
          });
        },
        [](void* s, const double* lrs, int64_t n) {
          return guarded([&] { self_of<Impl>(s).step(std::vector<double>(lrs, lrs + n)); });
        }};
    return &vt;
  }
};

template <class Impl>
struct LrSchedulerVtable {
  static const sumi_lr_scheduler_vtable* get() {
    static const sumi_lr_scheduler_vtable vt = {
        sizeof(sumi_lr_scheduler_vtable), [](void* s, const sumi_lr_query* q, double* out) {
          return guarded([&] { *out = self_of<Impl>(s).factor(*q); });
        }};
    return &vt;
  }
};

template <class Impl>
struct NoiseSchedulerVtable {
  static sumi_status put(sumi_tensor* out, Tensor t) {
    *out = t.release();
    return SUMI_OK;
  }
  static const sumi_noise_scheduler_vtable* get() {
    static const sumi_noise_scheduler_vtable vt = {
        sizeof(sumi_noise_scheduler_vtable),
        [](void* s, int64_t n) { return guarded([&] { self_of<Impl>(s).set_timesteps(n); }); },
        [](void* s, sumi_tensor* out) { return guarded([&] { put(out, self_of<Impl>(s).timesteps()); }); },
        [](void* s, sumi_tensor* out) { return guarded([&] { put(out, self_of<Impl>(s).sigmas()); }); },
        [](void* s, double* out) { return guarded([&] { *out = self_of<Impl>(s).init_noise_sigma(); }); },
        [](void* s, sumi_tensor sample, int64_t i, sumi_tensor* out) {
          return guarded([&] { put(out, self_of<Impl>(s).scale_model_input(Tensor::borrow(sample), i)); });
        },
        [](void* s, sumi_tensor mo, int64_t i, sumi_tensor sample, sumi_tensor noise, sumi_tensor* out) {
          return guarded([&] {
            put(out, self_of<Impl>(s).step(Tensor::borrow(mo), i, Tensor::borrow(sample), Tensor::borrow(noise)));
          });
        },
        [](void* s, sumi_tensor x0, sumi_tensor noise, sumi_tensor ts, sumi_tensor* out) {
          return guarded([&] {
            put(out, self_of<Impl>(s).add_noise(Tensor::borrow(x0), Tensor::borrow(noise), Tensor::borrow(ts)));
          });
        },
        [](void* s, sumi_tensor x0, sumi_tensor noise, sumi_tensor ts, sumi_tensor* out) {
          return guarded([&] {
            put(out, self_of<Impl>(s).velocity(Tensor::borrow(x0), Tensor::borrow(noise), Tensor::borrow(ts)));
          });
        },
        [](void* s, sumi_tensor* out) { return guarded([&] { put(out, self_of<Impl>(s).alphas_cumprod()); }); },
        [](void* s, const char** json) {
          return guarded([&] {
            thread_local std::string text;
            text = self_of<Impl>(s).describe();
            *json = text.c_str();
          });
        }};
    return &vt;
  }
};

template <class Impl>
struct NetworkVtable {
  static const sumi_network_vtable* get() {
    static const sumi_network_vtable vt = {
        sizeof(sumi_network_vtable),
        [](void* s, const sumi_module_info* mods, int64_t n, int32_t* selected) {
          return guarded([&] {
            std::vector<const sumi_module_info*> ms;
            for (int64_t i = 0; i < n; ++i) ms.push_back(&mods[i]);
            auto sel = self_of<Impl>(s).attach(ms);
            for (int64_t i = 0; i < n; ++i) selected[i] = i < static_cast<int64_t>(sel.size()) && sel[static_cast<size_t>(i)];
          });
        },
        [](void* s, int64_t idx, sumi_tensor in, sumi_tensor base, sumi_tensor* out) {
          return guarded([&] { *out = self_of<Impl>(s).forward(idx, Tensor::borrow(in), Tensor::borrow(base)).release(); });
        },
        [](void* s, int64_t idx, sumi_tensor* out) {
          return guarded([&] { *out = self_of<Impl>(s).weight_delta(idx).release(); });
        },
        [](void* s, double m) { return guarded([&] { self_of<Impl>(s).set_multiplier(m); }); },
        [](void* s, const char* const* names, const sumi_tensor* ts, int64_t n) {
          return guarded([&] {
            std::vector<std::string> ns;
            std::vector<Tensor> tv;
            for (int64_t i = 0; i < n; ++i) {
              ns.emplace_back(names[i]);
              tv.push_back(Tensor::borrow(ts[i]));
            }
            self_of<Impl>(s).load(ns, tv);
          });
        },
        [](void* s, int32_t training) { return guarded([&] { self_of<Impl>(s).set_training(training != 0); }); },
        [](void* s, const sumi_file_tensor* ts, int64_t n, const char* meta, int32_t* understood) {
          return guarded([&] {
            auto got = self_of<Impl>(s).probe(file_tensors(ts, n), meta ? meta : "{}");
            for (int64_t i = 0; i < n; ++i) understood[i] = i < static_cast<int64_t>(got.size()) && got[static_cast<size_t>(i)];
          });
        },
        [](void* s, const sumi_file_tensor* ts, int64_t n, const char* meta) {
          return guarded([&] { self_of<Impl>(s).configure_from_weights(file_tensors(ts, n), meta ? meta : "{}"); });
        },
        [](void* s, const char** json) {
          return guarded([&] {
            thread_local std::string text;
            text = json_object(self_of<Impl>(s).metadata());
            *json = text.c_str();
          });
        },
        [](void* s, int64_t idx, sumi_tensor* out) {
          return guarded([&] { *out = self_of<Impl>(s).bias_delta(idx).release(); });
        },
        [](void* s, double max_norm, int64_t* keys_scaled, double* mean_norm, double* max_key_norm) {
          return guarded([&] {
            const auto r = self_of<Impl>(s).apply_max_norm(max_norm);
            *keys_scaled = r.keys_scaled;
            *mean_norm = r.mean_norm;
            *max_key_norm = r.max_norm;
          });
        }};
    return &vt;
  }
  static std::vector<FileTensor> file_tensors(const sumi_file_tensor* ts, int64_t n) {
    std::vector<FileTensor> out;
    for (int64_t i = 0; i < n; ++i) {
      const sumi_file_tensor& t = *reinterpret_cast<const sumi_file_tensor*>(reinterpret_cast<const char*>(ts) +
                                                                              static_cast<size_t>(i) * ts[0].struct_size);
      out.push_back({t.name ? t.name : "", std::vector<int64_t>(t.shape, t.shape + t.ndim)});
    }
    return out;
  }
};

template <class Impl>
struct ModelVtable {
  static std::string str(const char* s) { return s ? s : ""; }
  static std::optional<sumi_dtype> opt(const sumi_dtype* d) {
    return d ? std::optional<sumi_dtype>(*d) : std::nullopt;
  }
  static const sumi_model_vtable* get() {
    static const sumi_model_vtable vt = {
        sizeof(sumi_model_vtable),
        [](void* s, const char* path) { return guarded([&] { self_of<Impl>(s).load(path); }); },
        [](void* s, const sumi_module_info** out, int64_t* n) {
          return guarded([&] {
            const auto& m = self_of<Impl>(s).modules();
            *out = m.data();
            *n = static_cast<int64_t>(m.size());
          });
        },
        [](void* s, const char* const* prompts, int64_t n, sumi_tensor* cond, sumi_tensor* pooled) {
          return guarded([&] {
            std::vector<std::string> ps(prompts, prompts + n);
            auto r = self_of<Impl>(s).encode_text(ps);
            *cond = r.first.release();
            if (pooled) *pooled = r.second.release();
          });
        },
        [](void* s, sumi_tensor lat, sumi_tensor ts, sumi_tensor cond, sumi_tensor pooled, sumi_tensor added,
           sumi_tensor* out) {
          return guarded([&] {
            *out = self_of<Impl>(s)
                       .denoise(Tensor::borrow(lat), Tensor::borrow(ts), Tensor::borrow(cond),
                                Tensor::borrow(pooled), Tensor::borrow(added))
                       .release();
          });
        },
        [](void* s, sumi_tensor img, int32_t sample, sumi_tensor* out) {
          return guarded([&] { *out = self_of<Impl>(s).vae_encode(Tensor::borrow(img), sample != 0).release(); });
        },
        [](void* s, sumi_tensor lat, sumi_tensor* out) {
          return guarded([&] { *out = self_of<Impl>(s).vae_decode(Tensor::borrow(lat)).release(); });
        },
        [](void* s, void* net, const sumi_network_vtable* vt2, const int32_t* selected) {
          return guarded([&] { self_of<Impl>(s).set_network(net, vt2, selected); });
        },
        [](void* s, const char* part) { return guarded([&] { self_of<Impl>(s).train_part(str(part)); }); },
        [](void* s, const char* token, const char* init_word, int64_t n) {
          return guarded([&] { self_of<Impl>(s).add_token(str(token), str(init_word), n); });
        },
        [](void* s, const char* token, const char* path, const sumi_dtype* dtype, int32_t overwrite) {
          return guarded([&] { self_of<Impl>(s).save_token(str(token), str(path), opt(dtype), overwrite != 0); });
        },
        [](void* s, const char* path, const sumi_dtype* dtype, int32_t overwrite) {
          return guarded([&] { self_of<Impl>(s).save(str(path), opt(dtype), overwrite != 0); });
        },
        [](void* s, const char** json) {
          return guarded([&] {
            thread_local std::string text;
            text = self_of<Impl>(s).describe();
            *json = text.c_str();
          });
        },
        [](void* s, const char* path, const char** json) {
          return guarded([&] {
            thread_local std::string text;
            text = self_of<Impl>(s).probe(str(path));
            *json = text.c_str();
          });
        },
        [](void* s, const char* token, const char* path) {
          return guarded([&] { self_of<Impl>(s).load_token(str(token), str(path)); });
        },
        [](void* s, const char* src, const char* dst, const sumi_dtype* dtype, int32_t overwrite) {
          return guarded([&] { self_of<Impl>(s).convert(str(src), str(dst), opt(dtype), overwrite != 0); });
        },
        [](void* s, sumi_tensor ids, sumi_tensor* cond) {
          return guarded([&] { *cond = self_of<Impl>(s).encode_tokens(Tensor::borrow(ids)).release(); });
        },
        [](void* s, int64_t id, const char** text) {
          return guarded([&] {
            thread_local std::string t;
            t = self_of<Impl>(s).token_text(id);
            *text = t.c_str();
          });
        },
        [](void* s, const char* part) { return guarded([&] { self_of<Impl>(s).release_part(str(part)); }); }};
    return &vt;
  }
};

template <class Impl>
struct TaggerVtable {
  static const sumi_tagger_vtable* get() {
    static const sumi_tagger_vtable vt = {
        sizeof(sumi_tagger_vtable), [](void* s, sumi_tensor image, sumi_tag_sink sink, void* user) {
          return guarded([&] {
            for (const auto& [tag, score] : self_of<Impl>(s).tag(Tensor::borrow(image))) sink(user, tag.c_str(), score);
          });
        }};
    return &vt;
  }
};

template <class Impl>
const void* vtable_for() {
  if constexpr (std::is_base_of_v<Optimizer, Impl>) return OptimizerVtable<Impl>::get();
  else if constexpr (std::is_base_of_v<LrScheduler, Impl>) return LrSchedulerVtable<Impl>::get();
  else if constexpr (std::is_base_of_v<NoiseScheduler, Impl>) return NoiseSchedulerVtable<Impl>::get();
  else if constexpr (std::is_base_of_v<Network, Impl>) return NetworkVtable<Impl>::get();
  else if constexpr (std::is_base_of_v<Model, Impl>) return ModelVtable<Impl>::get();
  else {
    static_assert(std::is_base_of_v<Tagger, Impl>, "a component derives from one sumi kind base class");
    return TaggerVtable<Impl>::get();
  }
}

inline sumi_status plugin_entry(const sumi_host_api* h, const sumi_plugin_descriptor** out,
                                const sumi_plugin_descriptor* desc) {
  if (!h || !out) return SUMI_ERR_INVALID_ARGUMENT;
  // Version checks are the host's: it reads abi_major/abi_minor from the descriptor and
  // refuses with a message naming both sides.
  g_host = h;
  *out = desc;
  return SUMI_OK;
}

}  // namespace detail

// Describe one component implemented by class Impl (derived from a kind base class, with an
// `explicit Impl(sumi::Context&)` constructor).
template <class Impl, size_t N>
sumi_component component(const char* name, const char* summary, const sumi_param_spec (&params)[N]) {
  return sumi_component{sizeof(sumi_component),
                        Impl::kind,
                        Impl::api,
                        name,
                        summary,
                        params,
                        static_cast<int64_t>(N),
                        [](const sumi_host_api*, sumi_context* c, void** self) {
                          return detail::guarded([&] {
                            Context ctx(c);
                            *self = new Impl(ctx);
                          });
                        },
                        [](void* self) { delete static_cast<Impl*>(self); },
                        detail::vtable_for<Impl>()};
}

template <class Impl>
sumi_component component(const char* name, const char* summary) {
  static const sumi_param_spec none_[1] = {param("", 0, nullptr, nullptr)};
  auto c = component<Impl>(name, summary, none_);
  c.n_params = 0;
  return c;
}

}  // namespace sumi

// Export the library's entry point. Arguments after the version are sumi_component values.
#define SUMI_PLUGIN_DESCRIPTOR_(LIB, VER, NATIVE, ...)                                            \
  extern "C" SUMI_EXPORT sumi_status sumi_plugin_entry(const sumi_host_api* host_,              \
                                                       const sumi_plugin_descriptor** out_) {   \
    static const sumi_component components_[] = {__VA_ARGS__};                                  \
    static const sumi_plugin_descriptor desc_ = {                                                \
        sizeof(sumi_plugin_descriptor), SUMI_ABI_MAJOR, SUMI_ABI_MINOR, LIB, VER, components_,   \
        static_cast<int64_t>(sizeof(components_) / sizeof(components_[0])), NATIVE};             \
    return ::sumi::detail::plugin_entry(host_, out_, &desc_);                                    \
  }

#define SUMI_PLUGIN(LIB, VER, ...) SUMI_PLUGIN_DESCRIPTOR_(LIB, VER, nullptr, __VA_ARGS__)

#endif  // SUMI_PLUGIN_HPP

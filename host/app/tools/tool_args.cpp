#include "app/tools/tool_args.h"

#include "core/error.h"
#include "core/runtime.h"

#include <sumi/recipe/suggest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace sumi::app::tools {

ToolArgs::ToolArgs(std::string prog, std::string summary) : prog_(std::move(prog)), summary_(std::move(summary)) {
  value("threads", "CPU threads for the computation (sumi's common option; default: all cores)");
}

ToolArgs& ToolArgs::value(const std::string& name, const std::string& help, std::optional<std::string> default_value,
                          std::vector<std::string> choices) {
  specs_.push_back({name, Kind::value, help, std::move(default_value), std::move(choices)});
  return *this;
}
ToolArgs& ToolArgs::list(const std::string& name, const std::string& help) {
  specs_.push_back({name, Kind::list, help, {}, {}});
  return *this;
}
ToolArgs& ToolArgs::flag(const std::string& name, const std::string& help) {
  specs_.push_back({name, Kind::flag, help, {}, {}});
  return *this;
}
ToolArgs& ToolArgs::positional(const std::string& name, const std::string& help, bool required) {
  Spec s{name, Kind::positional, help, {}, {}};
  s.required = required;
  specs_.push_back(std::move(s));
  return *this;
}

const ToolArgs::Spec* ToolArgs::find(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name && s.kind != Kind::positional) return &s;
  return nullptr;
}

const ToolArgs::Spec& ToolArgs::spec(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return s;
  throw std::logic_error(prog_ + ": no declared argument '" + name + "'");
}

void ToolArgs::fail(const std::string& message) const { throw host::UserError("sumi " + prog_ + ": " + message); }

bool ToolArgs::parse(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  for (const auto& s : specs_)
    if (s.kind != Kind::positional) names.push_back("--" + s.name);
  std::vector<const Spec*> positionals;
  for (const auto& s : specs_)
    if (s.kind == Kind::positional) positionals.push_back(&s);
  size_t next_positional = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      return false;
    }
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), inline_value;
      const auto eq = name.find('=');
      const bool has_inline = eq != std::string::npos;
      if (has_inline) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const Spec* s = find(name);
      if (!s)
        fail("unknown option '--" + name + "'" + recipe::did_you_mean("--" + name, names) + " (sumi " + prog_ +
             " --help lists the options)");
      auto& slot = values_[name];
      auto is_flag_token = [](const std::string& t) {
        // "-1" or "-0.5" are values; "--x" and "-x" are options.
        if (t.size() < 2 || t[0] != '-') return false;
        return !(std::isdigit(static_cast<unsigned char>(t[1])) || t[1] == '.');
      };
      if (s->kind == Kind::flag) {
        if (has_inline) fail("--" + name + " is a switch and takes no value");
        slot = {"1"};
      } else if (s->kind == Kind::value) {
        if (has_inline) slot = {inline_value};
        else {
          if (i + 1 >= args.size() || is_flag_token(args[i + 1])) fail("--" + name + " needs a value");
          slot = {args[++i]};
        }
        if (!s->choices.empty() && std::find(s->choices.begin(), s->choices.end(), slot[0]) == s->choices.end()) {
          std::string c;
          for (const auto& x : s->choices) c += (c.empty() ? "" : ", ") + x;
          fail("--" + name + " '" + slot[0] + "' is not one of " + c);
        }
      } else {  // list
        slot.clear();
        if (has_inline) slot.push_back(inline_value);
        while (i + 1 < args.size() && !is_flag_token(args[i + 1])) slot.push_back(args[++i]);
        if (slot.empty()) fail("--" + name + " needs at least one value");
      }
      continue;
    }
    if (next_positional >= positionals.size())
      fail("unexpected argument '" + a + "' (sumi " + prog_ + " --help lists the options)");
    values_[positionals[next_positional++]->name] = {a};
  }
  for (const Spec* p : positionals)
    if (p->required && !given(p->name)) fail("missing " + p->name + "\n\n" + usage());
  if (auto t = opt_integer("threads")) {
    if (*t < 1) fail("--threads must be at least 1");
    host::init_runtime(static_cast<int>(*t));
  }
  return true;
}

bool ToolArgs::given(const std::string& name) const { return values_.count(name) > 0; }
bool ToolArgs::on(const std::string& name) const {
  (void)spec(name);
  return given(name);
}

std::optional<std::string> ToolArgs::get(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(name);
  if (it != values_.end() && !it->second.empty()) return it->second.front();
  return s.default_value;
}

std::string ToolArgs::str(const std::string& name) const { return get(name).value_or(""); }

std::string ToolArgs::required(const std::string& name) const {
  auto v = get(name);
  if (!v || v->empty()) fail("--" + name + " is required (" + spec(name).help + ")");
  return *v;
}

namespace {
bool parse_double(const std::string& t, double& out) {
  try {
    size_t pos = 0;
    out = std::stod(t, &pos);
    return pos == t.size();
  } catch (const std::exception&) {
    return false;
  }
}
bool parse_int(const std::string& t, int64_t& out) {
  try {
    size_t pos = 0;
    out = std::stoll(t, &pos);
    return pos == t.size();
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace

std::optional<double> ToolArgs::opt_real(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  double d = 0;
  if (!parse_double(*v, d)) fail("--" + name + " '" + *v + "' is not a number");
  return d;
}
std::optional<int64_t> ToolArgs::opt_integer(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  int64_t n = 0;
  if (!parse_int(*v, n)) fail("--" + name + " '" + *v + "' is not an integer");
  return n;
}
double ToolArgs::real(const std::string& name) const {
  auto v = opt_real(name);
  if (!v) fail("--" + name + " is required");
  return *v;
}
int64_t ToolArgs::integer(const std::string& name) const {
  auto v = opt_integer(name);
  if (!v) fail("--" + name + " is required");
  return *v;
}

const std::vector<std::string>& ToolArgs::strs(const std::string& name) const {
  static const std::vector<std::string> none;
  (void)spec(name);
  auto it = values_.find(name);
  return it == values_.end() ? none : it->second;
}

std::vector<double> ToolArgs::lora_ratios() const {
  const auto& models = strs("models");
  std::vector<double> ratios = reals("ratios");
  if (models.empty()) fail("--models is required: the LoRA files to merge");
  if (models.size() != ratios.size())
    fail("--models names " + std::to_string(models.size()) + " files but --ratios gives " + std::to_string(ratios.size()) +
         " ratios; give one ratio per LoRA");
  return ratios;
}

std::vector<double> ToolArgs::reals(const std::string& name) const {
  std::vector<double> out;
  for (const auto& t : strs(name)) {
    double d = 0;
    if (!parse_double(t, d)) fail("--" + name + " value '" + t + "' is not a number");
    out.push_back(d);
  }
  return out;
}

std::string ToolArgs::usage() const {
  std::ostringstream o;
  o << "usage: sumi " << prog_;
  for (const auto& s : specs_)
    if (s.kind == Kind::positional) o << (s.required ? " " : " [") << s.name << (s.required ? "" : "]");
  o << " [options]\n\n" << summary_ << "\n\n";
  for (const auto& s : specs_) {
    std::string left = s.kind == Kind::positional ? "  " + s.name : "  --" + s.name;
    if (s.kind == Kind::value) left += " X";
    if (s.kind == Kind::list) left += " X [X ...]";
    o << left;
    o << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << s.help;
    if (!s.choices.empty()) {
      o << " (";
      for (size_t i = 0; i < s.choices.size(); ++i) o << (i ? ", " : "") << s.choices[i];
      o << ")";
    }
    if (s.default_value) o << " [default: " << *s.default_value << "]";
    o << "\n";
  }
  return o.str();
}

}  // namespace sumi::app::tools

// `sumi lora_interrogator` (kohya networks/lora_interrogator.py) on the tiny SD1 fixture: kohya's
// output format and count, the order (largest change first, ties in token order), numbers that
// do not depend on --batch_size, the printed differences recomputed through another path (the
// prompt encoder on the token's word, whose first three positions are BOS, token, EOS whatever
// padding follows: CLIP's attention is causal), and kohya's refusal of a LoRA without
// text-encoder modules.
#include <doctest/doctest.h>

#include "../common/test_data.h"
#include "tool_run.h"

#include "app/app.h"
#include "app/network_settings.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tools.h"
#include "core/error.h"
#include "core/handle_scope.h"
#include "core/registry.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>

namespace fs = std::filesystem;
using sumi::test::fixture;

namespace {

std::string scratch(const std::string& name) { return sumi::test::tools_scratch(name); }

std::string run(const std::vector<std::string>& args) { return sumi::test::run_tool("lora_interrogator", args); }

struct Row {
  int rank;
  int64_t token;
  std::string text;
  double diff;
};

// "top 100:" then "[%3d]: %5d %-20s: %.5f" lines.
std::vector<Row> parse(const std::string& out) {
  std::istringstream in(out);
  std::string line;
  REQUIRE(std::getline(in, line));
  REQUIRE(line == "top 100:");
  const std::regex re(R"(^\[([ \d]{3})\]: ([ \d]{5}) (.*?) *: (\d+\.\d{5})$)");
  std::vector<Row> rows;
  while (std::getline(in, line)) {
    std::smatch m;
    INFO(line);
    REQUIRE(std::regex_match(line, m, re));
    rows.push_back({std::stoi(m[1]), std::stoll(m[2]), m[3], std::stod(m[4])});
  }
  return rows;
}

// The fixture LoRA with some tensors changed.
std::string edited_lora(const std::string& name, bool keep_te, bool zero_te_up) {
  sumi::io::NamedTensors out;
  for (auto [key, t] : sumi::io::load_all(fixture("tiny-sd1.lora.safetensors"))) {
    const bool te = key.rfind("lora_te", 0) == 0;
    if (te && !keep_te) continue;
    if (te && zero_te_up && key.find("lora_up") != std::string::npos) t = at::zeros_like(t);
    out.emplace_back(key, t);
  }
  const std::string path = scratch(name);
  sumi::io::save_tensors(path, out);
  return path;
}

}  // namespace

TEST_CASE("lora_interrogator: kohya's top 100, largest change first, independent of the batch size") {
  const std::string model = fixture("tiny-sd1.safetensors"), lora = fixture("tiny-sd1.lora.safetensors");
  const std::string out = run({"--sd_model", model, "--model", lora, "--batch_size", "1000"});
  const auto rows = parse(out);
  REQUIRE(rows.size() == 100);
  std::set<int64_t> tokens;
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i].rank == static_cast<int>(i));
    CHECK(rows[i].token >= 0);
    CHECK(rows[i].token <= 49407);
    tokens.insert(rows[i].token);
    if (i) CHECK(rows[i].diff <= rows[i - 1].diff);
  }
  CHECK(tokens.size() == 100);
  CHECK(rows.front().diff > rows.back().diff);
  CHECK(rows.back().diff > 0);
  // Each call encodes its token prompts independently: the batch size changes nothing.
  CHECK(run({"--sd_model", model, "--model", lora, "--batch_size", "333"}) == out);

  // The printed numbers through the prompt encoder: a word token is the prompt "word".
  sumi::host::Registry registry;
  auto pm = sumi::app::tools::tool_plugin_manager({});
  sumi::app::tools::PluginModel m(pm, registry, "sd1", model, "model");
  auto& c = m.component();
  const auto& vt = c.vtable<sumi_model_vtable>();
  const auto file = sumi::app::read_weights_file(lora);
  auto ref = pm.find(SUMI_KIND_NETWORK, sumi::app::find_network_component(pm, file));
  sumi::host::Component net(ref, "network", registry, sumi::host::make_config(*ref.component, {}));
  sumi::app::configure_network_from_file(net, file);
  const auto selected = sumi::app::prepare_network(c, net, lora, 1.0, false);
  auto encode_prompt = [&](const std::string& prompt) {
    const char* p = prompt.c_str();
    sumi::host::OwnedHandle cond, pooled;
    c.check(vt.encode_text(c.self(), &p, 1, &cond.h, &pooled.h), "encode_text");
    return cond.get().narrow(1, 0, 3).to(at::kFloat).clone();
  };
  auto encode_ids = [&](int64_t id) {
    sumi::host::HandleScope scope;
    sumi::host::OwnedHandle cond;
    c.check(vt.encode_tokens(c.self(), scope(at::tensor({int64_t{49406}, id, int64_t{49407}}).view({1, 3})), &cond.h),
            "encode_tokens");
    return cond.get().to(at::kFloat).clone();
  };
  at::NoGradGuard no_grad;
  int checked = 0;
  for (const Row& r : rows) {
    if (!std::regex_match(r.text, std::regex("[a-z]+"))) continue;
    c.check(vt.set_network(c.self(), nullptr, nullptr, nullptr), "set_network");
    const at::Tensor plain = encode_prompt(r.text);
    if (!at::allclose(plain, encode_ids(r.token), 1e-5, 1e-6)) continue;  // the word is another token
    c.check(vt.set_network(c.self(), net.self(), &net.vtable<sumi_network_vtable>(), selected.data()), "set_network");
    const double diff = (plain - encode_prompt(r.text)).abs().mean().item<double>();
    INFO(r.token << " '" << r.text << "'");
    CHECK(std::abs(diff - r.diff) <= 6e-6);  // printed to 5 decimals
    ++checked;
  }
  c.check(vt.set_network(c.self(), nullptr, nullptr, nullptr), "set_network");
  CHECK(checked >= 3);
}

TEST_CASE("lora_interrogator: no change ranks the tokens in id order, with kohya's padding") {
  const std::string lora = edited_lora("interrogate_zero_te.safetensors", true, true);
  const auto out = run({"--sd_model", fixture("tiny-sd1.safetensors"), "--model", lora, "--batch_size", "4096"});
  const auto rows = parse(out);
  REQUIRE(rows.size() == 100);
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i].token == static_cast<int64_t>(i));
    CHECK(rows[i].diff == 0.0);
  }
  std::istringstream in(out);
  std::string line;
  std::getline(in, line);
  std::getline(in, line);
  CHECK(line == "[  0]:     0 !" + std::string(19, ' ') + ": 0.00000");
  std::getline(in, line);
  CHECK(line == "[  1]:     1 \"" + std::string(19, ' ') + ": 0.00000");
  // Token 94 is the lone byte 0xA1, not UTF-8 by itself: U+FFFD, as Python's errors="replace".
  CHECK(rows[94].text == "\xEF\xBF\xBD");
}

TEST_CASE("lora_interrogator: a LoRA without text-encoder modules is refused with kohya's message") {
  const std::string lora = edited_lora("interrogate_unet_only.safetensors", false, false);
  CHECK_THROWS_WITH_AS(run({"--sd_model", fixture("tiny-sd1.safetensors"), "--model", lora}),
                       doctest::Contains("This LoRA does not have modules for Text Encoder, cannot interrogate"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run({"--sd_model", fixture("tiny-sd1.safetensors"), "--model", lora, "--batch_size", "0"}),
                       doctest::Contains("--batch_size must be at least 1"), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run({"--sd_model", fixture("tiny-sd1.safetensors")}), doctest::Contains("--model"),
                       sumi::host::UserError);
}

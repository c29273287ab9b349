// The `sumi` subcommands. Each takes the arguments after its name and returns an exit code;
// user errors are thrown as host::UserError / recipe::RecipeError and printed by main.
#pragma once

#include <string>
#include <vector>

namespace sumi::app {

int cmd_plugins(const std::vector<std::string>& args);
int cmd_fit(const std::vector<std::string>& args);
int cmd_plan(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_train(const std::vector<std::string>& args);
int cmd_convert(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);

}  // namespace sumi::app

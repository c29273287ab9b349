#include "error.h"

namespace sumi::host {

namespace {
thread_local std::string t_last_error;
}

void set_last_error(const std::string& message) { t_last_error = message; }
const std::string& last_error() { return t_last_error; }

}  // namespace sumi::host

// Host-side errors: the thread-local last error behind sumi_host_api::last_error, and the
// exception type host code throws for user-facing failures (bad plugin, bad recipe...).
#pragma once

#include <sumi/sumi.h>

#include <stdexcept>
#include <string>

namespace sumi::host {

// A failure to report to the user as-is: the message names what, why and a hint.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void set_last_error(const std::string& message);
const std::string& last_error();

// Runs `f` and converts any exception into a status + last error (host functions called by
// plugins go through this so nothing escapes into plugin code).
template <class F>
sumi_status guarded(F&& f) noexcept {
  try {
    f();
    return SUMI_OK;
  } catch (const std::exception& e) {
    set_last_error(e.what());
    return SUMI_ERR_RUNTIME;
  } catch (...) {
    set_last_error("unknown exception in the sumi host");
    return SUMI_ERR_EXCEPTION;
  }
}

}  // namespace sumi::host

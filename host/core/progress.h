// Console progress bars (sumi_host_api::progress_*), and host logging.
#pragma once

#include <sumi/sumi.h>

#include <string>

namespace sumi::host {

sumi_progress* progress_begin(const char* label, int64_t total);
void progress_update(sumi_progress* p, int64_t n, const char* postfix);
void progress_end(sumi_progress* p);

// Messages below `level` are dropped (SUMI_LOG_*; default INFO, SUMI_LOG_LEVEL=debug lowers it).
void set_log_level(int32_t level);
void log(int32_t level, const char* component, const char* message);
inline void log(int32_t level, const std::string& component, const std::string& message) {
  log(level, component.c_str(), message.c_str());
}

}  // namespace sumi::host

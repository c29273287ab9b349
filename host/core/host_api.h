// The host function table handed to every plugin (see sdk/include/sumi/sumi.h).
#pragma once

#include <sumi/sumi.h>

namespace sumi::host {

// The process-wide table. Valid for the life of the process.
const sumi_host_api* host_api();

}  // namespace sumi::host

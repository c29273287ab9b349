// The ABI's op calls (op_find, op_call, values_release) implemented over the dispatcher.
#pragma once

#include <sumi/sumi.h>

namespace sumi::host {

sumi_status op_find(const char* name, const char* overload, sumi_op* out);
sumi_status op_call(sumi_op op, const sumi_value* args, int64_t n_args, sumi_value* results, int64_t max_results,
                    int64_t* n_results);
void values_release(sumi_value* values, int64_t n);
void release_handle(sumi_tensor t);

}  // namespace sumi::host

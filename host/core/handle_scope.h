// Host-side owners of sumi_tensor handles around vtable calls: the handles the host lends to a
// plugin (borrowed for the call) and those a plugin returns (new references) are released when
// the owner goes out of scope, also when a call throws.
#pragma once

#include "core/op_bridge.h"
#include "core/tensor_handle.h"

#include <vector>

namespace sumi::host {

// Every handle made or adopted in one scope.
class HandleScope {
 public:
  HandleScope() = default;
  HandleScope(const HandleScope&) = delete;
  HandleScope& operator=(const HandleScope&) = delete;
  ~HandleScope() {
    for (auto h : handles_) release_handle(h);
  }
  // A handle for `t` to pass as a borrowed argument (NULL for an undefined tensor).
  sumi_tensor operator()(const at::Tensor& t) {
    if (!t.defined()) return nullptr;
    handles_.push_back(make_handle(t));
    return handles_.back();
  }
  // Adopts a handle a call returned (new reference); its tensor (undefined for NULL).
  at::Tensor take(sumi_tensor h) {
    if (!h) return at::Tensor();
    handles_.push_back(h);
    return unwrap(h);
  }

 private:
  std::vector<sumi_tensor> handles_;
};

// One handle a call returns through an out-parameter: `vt.f(self, ..., &out.h)`.
struct OwnedHandle {
  sumi_tensor h = nullptr;
  OwnedHandle() = default;
  OwnedHandle(const OwnedHandle&) = delete;
  OwnedHandle& operator=(const OwnedHandle&) = delete;
  ~OwnedHandle() { release_handle(h); }
  at::Tensor get() const { return h ? unwrap(h) : at::Tensor(); }
};

}  // namespace sumi::host

# libtorch: Debian's libtorch-dev by default; any other build (2.x, CUDA) via CMAKE_PREFIX_PATH.
# Torch's own config adds flags we do not want globally, so we wrap it in an interface target.
find_package(Torch REQUIRED)
add_library(sumi_torch INTERFACE)
target_link_libraries(sumi_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(sumi_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
if(TORCH_CXX_FLAGS)
  separate_arguments(_sumi_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(sumi_torch INTERFACE ${_sumi_torch_flags})
endif()
set(SUMI_TORCH_HAS_CUDA OFF)
if(TARGET torch_cuda OR CUDA_FOUND OR TORCH_CUDA_LIBRARIES)
  set(SUMI_TORCH_HAS_CUDA ON)
endif()
if(SUMI_TORCH_HAS_CUDA AND CUDA_VERSION)
  target_compile_definitions(sumi_torch INTERFACE SUMI_TORCH_CUDA_VERSION="${CUDA_VERSION}")
endif()
message(STATUS "sumi: libtorch ${Torch_VERSION} (CUDA: ${SUMI_TORCH_HAS_CUDA})")

# Precompiled header shared by translation units that include ATen.
add_library(sumi_torch_pch STATIC ${PROJECT_SOURCE_DIR}/cmake/pch_anchor.cpp)
target_link_libraries(sumi_torch_pch PUBLIC sumi_torch)
target_precompile_headers(sumi_torch_pch PUBLIC <ATen/ATen.h>)

# Give a target the shared ATen precompiled header.
# Executables compile as PIE, which a PIC header cannot serve, so they get their own.
function(sumi_use_torch_pch target)
  # (BUILD_INTERFACE: an installed static library, sdk/io's, names libtorch itself.)
  target_link_libraries(${target} PRIVATE $<BUILD_INTERFACE:sumi_torch>)
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    target_precompile_headers(${target} PRIVATE <ATen/ATen.h>)
  else()
    target_precompile_headers(${target} REUSE_FROM sumi_torch_pch)
  endif()
endfunction()

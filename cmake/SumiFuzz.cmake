# -DSUMI_FUZZ=ON: a build of the parser fuzz harnesses only (docs/fuzzing.md), meant for its
# own build folder (scripts/fuzz.sh uses build-fuzz). Needs clang: libFuzzer drives each
# harness and everything here compiles with AddressSanitizer and UndefinedBehaviorSanitizer.
# Only the parser libraries the harnesses link are configured (their own CMakeLists, so the
# source lists stay in one place) and only what the fuzz targets need is built; the host,
# plugins and the other tests are not part of this build.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "SUMI_FUZZ=ON needs clang (libFuzzer): configure with "
                      "-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang, or run scripts/fuzz.sh")
endif()
set(SUMI_FUZZ_SANITIZERS "address,undefined" CACHE STRING "Sanitizers for the fuzz build")
# Instrument all code for coverage (fuzzer-no-link) and the sanitizers; UBSan findings abort.
# -O1 without NDEBUG: asserts stay on.
set(_sumi_fuzz_flags "-fsanitize=${SUMI_FUZZ_SANITIZERS} -fsanitize=fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1")
set(CMAKE_C_FLAGS "${CMAKE_C_FLAGS} ${_sumi_fuzz_flags}")
set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} ${_sumi_fuzz_flags}")
foreach(config DEBUG RELEASE RELWITHDEBINFO MINSIZEREL)
  set(CMAKE_C_FLAGS_${config} "")
  set(CMAKE_CXX_FLAGS_${config} "")
endforeach()

include(cmake/SumiWarnings.cmake)
include(cmake/SumiOpenImageIO.cmake)
include(cmake/SumiTorch.cmake)  # the torch .ckpt harness and sdk/io's ATen side
find_package(nlohmann_json REQUIRED)

add_subdirectory(sdk EXCLUDE_FROM_ALL)
add_subdirectory(host/recipe EXCLUDE_FROM_ALL)
add_subdirectory(host/prompt EXCLUDE_FROM_ALL)
add_subdirectory(plugins/sd_common/prompt EXCLUDE_FROM_ALL)
add_subdirectory(datasets EXCLUDE_FROM_ALL)
add_subdirectory(tests/fuzz)

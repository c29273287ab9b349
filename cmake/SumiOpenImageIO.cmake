# OpenImageIO through pkg-config: Debian 12's CMake config for it pulls in Imath's, which
# references a Python binding library that is not installed, and fails. pkg-config has no such
# problem. Use the `sumi_oiio` target.
find_package(PkgConfig REQUIRED)
pkg_check_modules(SUMI_OIIO REQUIRED IMPORTED_TARGET OpenImageIO)
add_library(sumi_oiio INTERFACE)
target_link_libraries(sumi_oiio INTERFACE PkgConfig::SUMI_OIIO)

# Finds the OpenImageIO library without its CMake package config: Debian's config aborts
# configuration when the command-line tools (openimageio-tools) are not installed, although
# the library and headers are. Defines the imported target OpenImageIO::OpenImageIO.
find_path(OpenImageIO_INCLUDE_DIR OpenImageIO/imageio.h)
find_library(OpenImageIO_LIBRARY NAMES OpenImageIO)
find_library(OpenImageIO_Util_LIBRARY NAMES OpenImageIO_Util)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenImageIO
  REQUIRED_VARS OpenImageIO_LIBRARY OpenImageIO_Util_LIBRARY OpenImageIO_INCLUDE_DIR)
if(OpenImageIO_FOUND AND NOT TARGET OpenImageIO::OpenImageIO)
  add_library(OpenImageIO::OpenImageIO UNKNOWN IMPORTED GLOBAL)
  set_target_properties(OpenImageIO::OpenImageIO PROPERTIES
    IMPORTED_LOCATION "${OpenImageIO_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${OpenImageIO_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${OpenImageIO_Util_LIBRARY}")
endif()

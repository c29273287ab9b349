# sumi_add_plugin(<target> SOURCES ... [NATIVE] [OUTPUT_DIRECTORY dir])
# Builds a sumi plugin: a shared library with hidden visibility that exports only
# sumi_plugin_entry. NATIVE plugins link libtorch (and must match the host's build exactly).
function(sumi_add_plugin target)
  cmake_parse_arguments(P "NATIVE" "OUTPUT_DIRECTORY" "SOURCES;LIBS" ${ARGN})
  add_library(${target} MODULE ${P_SOURCES})
  target_link_libraries(${target} PRIVATE sumi::sdk ${P_LIBS})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(DEFINED SUMI_PLUGIN_OUTPUT_DIR AND NOT P_OUTPUT_DIRECTORY)
    # In-tree plugins install next to the host.
    install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/sumi/plugins)
  endif()
  if(P_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${P_OUTPUT_DIRECTORY})
  elseif(DEFINED SUMI_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${SUMI_PLUGIN_OUTPUT_DIR})
  endif()
  if(P_NATIVE)
    if(TARGET sumi_torch)
      target_link_libraries(${target} PRIVATE sumi_torch)
    else()
      find_package(Torch REQUIRED)
      target_link_libraries(${target} PRIVATE ${TORCH_LIBRARIES})
    endif()
  endif()
  if(COMMAND sumi_warnings)
    sumi_warnings(${target})
  endif()
endfunction()

# One warning set for all of sumi's own targets.
function(sumi_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(SUMI_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

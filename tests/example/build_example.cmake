# Script for test_example_plugin. Fails (FATAL_ERROR) on any step that does not behave.
file(REMOVE_RECURSE ${WORK})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(OUT "${out}${err}" PARENT_SCOPE)
endfunction()

run(${CMAKE_COMMAND} --install ${SUMI_BUILD} --prefix ${WORK}/prefix)
run(${CMAKE_COMMAND} -S ${SUMI_SOURCE}/examples/lion-optimizer -B ${WORK}/build -G Ninja
    -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK}/build)
set(sumi ${WORK}/prefix/bin/sumi)
run(${sumi} plugins show lion_example --plugin-dir ${WORK}/build)
if(NOT OUT MATCHES "optimizer 'lion_example'" OR NOT OUT MATCHES "betas")
  message(FATAL_ERROR "installed sumi did not describe the example plugin:\n${OUT}")
endif()
# The installed host finds its own plugins, and the example through --plugin-dir; the demo
# switches optimizer by flag alone.
run(${sumi} fit --recipe ${SUMI_SOURCE}/presets/demo-fit.toml --plugin-dir ${WORK}/build
    --optimizer_type lion_example --learning_rate 0.005 --set output.output_dir=${WORK}/out)
if(NOT OUT MATCHES "optimizer lion_example" OR NOT EXISTS ${WORK}/out/demo-fit.safetensors)
  message(FATAL_ERROR "fit with the example optimizer did not run:\n${OUT}")
endif()
string(REGEX MATCH "loss ([0-9.]+) -> ([0-9.]+)" m "${OUT}")
if(NOT CMAKE_MATCH_2 OR CMAKE_MATCH_2 GREATER_EQUAL CMAKE_MATCH_1)
  message(FATAL_ERROR "lion did not lower the loss:\n${OUT}")
endif()
message(STATUS "example plugin built out-of-tree and loaded: ${OUT}")

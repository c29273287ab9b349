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

# The out-of-tree network: examples/ia3-network, built against the installed SDK (sumi::targets
# included), trained by path with the installed `sumi train`, then generated from its file with
# no --network_module: the file's keys choose the plugin found through --plugin-dir. The three
# images (no network, runtime, merged) are compared by test_example_ia3_images.
run(${CMAKE_COMMAND} -S ${SUMI_SOURCE}/examples/ia3-network -B ${WORK}/ia3-build -G Ninja
    -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK}/ia3-build)
set(ia3 ${WORK}/ia3-build/sumi_ia3_example.so)
run(${sumi} plugins show ${ia3})
if(NOT OUT MATCHES "network 'ia3_example'" OR NOT OUT MATCHES "train_unet_only")
  message(FATAL_ERROR "installed sumi did not describe the example network:\n${OUT}")
endif()
set(fixtures ${SUMI_SOURCE}/tests/data/fixtures)
file(MAKE_DIRECTORY "${WORK}/data/5_sks circle")
foreach(f circle_00.png circle_00.txt circle_01.png circle_01.txt)
  file(COPY "${SUMI_SOURCE}/examples/dataset/10_sks circle/${f}" DESTINATION "${WORK}/data/5_sks circle")
endforeach()
# A large learning rate so that two steps move the scales well away from 1.
run(${sumi} train --pretrained_model_name_or_path ${fixtures}/tiny-sd1.safetensors --train_data_dir ${WORK}/data
    --caption_extension .txt --resolution 64 --output_dir ${WORK}/ia3-out --output_name ia3 --seed 5
    --max_train_steps 2 --optimizer_type AdamW --learning_rate 0.05 --network_module ${ia3} --threads 2)
set(file ${WORK}/ia3-out/ia3.safetensors)
if(NOT EXISTS ${file})
  message(FATAL_ERROR "sumi train with the example network wrote no ${file}:\n${OUT}")
endif()
# The file carries the network's own metadata and no LoRA rank / alpha; ss_network_module is the
# --network_module as given (here the library path).
run(${sumi} show_metadata --model ${file})
string(FIND "${OUT}" "${ia3}" module_at)
if(NOT OUT MATCHES "ss_network_ia3_form" OR NOT OUT MATCHES "ia3_scale" OR module_at EQUAL -1
   OR OUT MATCHES "ss_network_dim")
  message(FATAL_ERROR "the example network's file lacks its keys or metadata, or has LoRA's:\n${OUT}")
endif()
set(gen --ckpt ${fixtures}/tiny-sd1.safetensors --W 64 --H 64 --steps 4 --sampler euler --seed 3 --threads 2
    --prompt "sks circle")
run(${sumi} generate ${gen} --outdir ${WORK}/img-base)
run(${sumi} generate ${gen} --outdir ${WORK}/img-runtime --network_weights ${file} --plugin-dir ${WORK}/ia3-build)
run(${sumi} generate ${gen} --outdir ${WORK}/img-merged --network_weights ${file} --plugin-dir ${WORK}/ia3-build
    --network_merge)
# Without --plugin-dir nobody reads the file; the error names a tensor.
execute_process(COMMAND ${sumi} generate ${gen} --outdir ${WORK}/img-none --network_weights ${file}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT "${out}${err}" MATCHES "ia3_scale")
  message(FATAL_ERROR "a file no installed plugin reads was not refused by name (${rc}):\n${out}${err}")
endif()
message(STATUS "example network built out-of-tree, trained and generated")

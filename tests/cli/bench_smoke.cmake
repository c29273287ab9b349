# Script for test_bench_smoke: `sumi bench --tiny` runs every job and prints sane fields
# (a smoke test of the benchmark, never a timed assertion).
execute_process(COMMAND ${SUMI} bench --tiny --steps 1 --threads 1 RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sumi bench --tiny: exit ${rc}\n${out}\n${err}")
endif()
set(num "[0-9]+\\.[0-9]+")
foreach(job "peak matmul 256\\^2 +fp32" "peak conv3x3 32ch 16\\^2 +bf16" "unet forward 64 b1 +bf16"
            "cfg step 64 \\(b2 unet\\) +bf16" "lora step 64 \\(te\\+unet\\) +bf16")
  # seconds, GFLOP, GFLOP/s, fraction of the peak, peak RSS, CPU seconds
  if(NOT out MATCHES "${job} +${num} +${num} +${num} +${num}% +${num} +${num}")
    message(FATAL_ERROR "sumi bench --tiny: no line '${job}' with seconds, GFLOP, GFLOP/s, % of peak, RSS, CPU s:\n${out}")
  endif()
endforeach()
# Counted work of the tiny UNet is positive and the fixed header names the columns.
if(NOT out MATCHES "job +dtype +seconds +GFLOP +GFLOP/s +of_peak +rss_GiB +cpu_s")
  message(FATAL_ERROR "sumi bench --tiny: header missing:\n${out}")
endif()
if(out MATCHES "unet forward 64 b1 +bf16 +${num} +0\\.00 ")
  message(FATAL_ERROR "sumi bench --tiny: the UNet forward counted no FLOPs:\n${out}")
endif()
# The optimizer job (run by the host through the optimizer plugins): a header and, per optimizer,
# seconds, ns/param, state bytes/param, GB/s, fraction of the measured bandwidth, RSS, CPU s.
if(NOT out MATCHES "optimizer +seconds +ns/param +state_B +GB/s +of_peak +rss_GiB +cpu_s")
  message(FATAL_ERROR "sumi bench --tiny: optimizer header missing:\n${out}")
endif()
foreach(opt "adamw" "adamw8bit" "lion" "prodigy" "adafactor")
  if(NOT out MATCHES "\n${opt} +${num} +${num} +${num} +${num} +${num}% +${num} +${num}")
    message(FATAL_ERROR "sumi bench --tiny: no optimizer line '${opt}' with its fields:\n${out}")
  endif()
endforeach()
# AdamW keeps two float32 moments per parameter: 8 bytes; AdamW8bit two uint8 codes + absmax.
if(NOT out MATCHES "\nadamw +${num} +${num} +8\\.00 ")
  message(FATAL_ERROR "sumi bench --tiny: AdamW's state is not 8 bytes per parameter:\n${out}")
endif()
if(NOT out MATCHES "\nadamw8bit +${num} +${num} +2\\.0[0-9] ")
  message(FATAL_ERROR "sumi bench --tiny: AdamW8bit's state is not ~2 bytes per parameter:\n${out}")
endif()
# The run's device is printed; --device names the CPU as the default does, and a device this
# build or machine does not have is refused by name before anything is timed.
if(NOT out MATCHES "device cpu, 1 threads")
  message(FATAL_ERROR "sumi bench --tiny: the model line does not name the device:\n${out}")
endif()
execute_process(COMMAND ${SUMI} bench --tiny --steps 1 --threads 1 --jobs peak,optimizer --optimizers adamw --device cpu
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "device cpu, 1 threads" OR NOT out MATCHES "\nadamw +${num}")
  message(FATAL_ERROR "sumi bench --device cpu: exit ${rc}\n${out}\n${err}")
endif()
foreach(bad "tpu" "cuda:99")
  execute_process(COMMAND ${SUMI} bench --tiny --steps 1 --jobs peak --device ${bad} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "--device '?${bad}'?: ")
    message(FATAL_ERROR "sumi bench --device ${bad}: expected a refusal naming it, got exit ${rc}\n${out}\n${err}")
  endif()
endforeach()

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

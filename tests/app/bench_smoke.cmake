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

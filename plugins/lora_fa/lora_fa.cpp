// The `lora_fa` network: kohya-ss sd-scripts' networks/lora_fa.py (LoRA-FA, arXiv 2308.03303).
//
// The same layers, tensors, file keys, forward and arguments as `lora` (networks/lora.py; the
// class is ../lora/lora_network.h); what differs: lora_down is drawn once from
// normal(0, sqrt(2 / (in + r))) and frozen there — registered as persistent state, so it is saved
// in the file (kohya keeps it in the state dict) but never given to an optimizer — and only
// lora_up (zeros at creation) is a trainable parameter.
#define SUMI_LORA_NAME "lora_fa"
#define SUMI_LORA_FROZEN_DOWN 1
#include "lora_network.h"

SUMI_PLUGIN("sumi_lora_fa", "0.1.0",
            sumi::component<sumi::lora::LoraNetwork>(
                "lora_fa", "kohya-ss sd-scripts LoRA-FA: LoRA with lora_down frozen at its random init, only lora_up trained; kohya's LoRA file format.",
                sumi::lora::kParams))

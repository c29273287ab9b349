// The `lora` network: kohya-ss sd-scripts' networks/lora.py LoRAModule / LoRANetwork.
//
// Each wrapped layer gets lora_down (Linear in->r, or Conv2d with the layer's kernel, stride
// and padding) and lora_up (Linear r->out, or 1x1 Conv2d), registered under kohya's file keys
// ("<module>.lora_down.weight", "<module>.lora_up.weight", state "<module>.alpha"), so saving
// the registry writes kohya's file. The output is base + up(down(x)) * multiplier * alpha / r.
// The class is lora_network.h, shared with lora_fa.
#define SUMI_LORA_NAME "lora"
#define SUMI_LORA_FROZEN_DOWN 0
#include "lora_network.h"

SUMI_PLUGIN("sumi_lora", "0.1.0",
            sumi::component<sumi::lora::LoraNetwork>("lora", "kohya-ss sd-scripts LoRA (LierLa, C3Lier with conv_dim) in kohya's file format.",
                                                     sumi::lora::kParams))

#!/usr/bin/env bash
# The main job: sets up, builds, trains a LoRA on the bundled example dataset
# (examples/dataset) with the bundled tiny SD1 model (presets/lora-example.toml), then generates
# images with it. Outputs land in out/lora-example/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
sumi=./build/bin/sumi
$sumi train --recipe lora-example
$sumi generate --ckpt tests/data/fixtures/tiny-sd1.safetensors \
  --network_module networks.lora --network_weights out/lora-example/sks-circle.safetensors \
  --prompt "a sks circle on a light background --n blurry" --W 64 --H 64 --steps 20 --sampler euler_a \
  --seed 1 --images_per_prompt 2 --outdir out/lora-example/images
echo "demo: LoRA in out/lora-example/sks-circle.safetensors, images in out/lora-example/images/"

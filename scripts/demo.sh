#!/usr/bin/env bash
# The main job: sets up, builds, and runs sumi's demo. For now (the foundation) this fits a small
# problem with the optimizer and LR-scheduler plugins named in presets/demo-fit.toml, then the
# same run with other plugins chosen by kohya flags alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/bin/sumi plugins
./build/bin/sumi fit --recipe demo-fit
./build/bin/sumi fit --recipe demo-fit --optimizer_type SGDNesterov --learning_rate 0.02 --lr_scheduler linear \
  --set output.output_name=demo-fit-sgd

#!/usr/bin/env bash
# Configures and builds sumi (Release, Ninja, ccache when present) into ./build.
# SUMI_PRESET=ci adds -Werror. Extra arguments go to the configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${SUMI_PRESET:-release}"
cmake --preset "$preset" "$@" >/dev/null
cmake --build build --parallel "$(nproc)"

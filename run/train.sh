#!/bin/sh
# The seed's training entry point:
#   sh run/train.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml [--resume] [--device=cuda]
# Every --key=value becomes `--key value` for `geopurify train`; --resume passes through.
# Several GPUs: torchrun --nproc_per_node=N -m geopurify train --exp_dir ... --config ...
set -e
. "$(dirname "$0")/common.sh"
exec "$PY" -m geopurify train "$@"

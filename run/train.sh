#!/bin/sh
# The seed's training entry point:
#   sh run/train.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml [--resume] [--device=cuda]
#       [--set=distill.epochs=2 --set lift.image_size=[640,512] ...]
# Every --key=value becomes `--key value` for `geopurify train` (split at the first `=`, so
# --set=KEY=VALUE becomes --set KEY=VALUE, the value intact); other arguments pass through as given.
# Several GPUs: torchrun --nproc_per_node=N -m geopurify train --exp_dir ... --config ...
set -e
. "$(dirname "$0")/common.sh"
exec "$PY" -m geopurify train "$@"

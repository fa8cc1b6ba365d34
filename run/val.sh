#!/bin/sh
# The seed's evaluation entry point:
#   sh run/val.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml --ckpt_name=geopurify.pth
#       [--device=cuda] [--set=purify.steps=9 --set lift.vlm=clip ...]
# Every --key=value becomes `--key value` for `geopurify val` (split at the first `=`, so
# --set=KEY=VALUE becomes --set KEY=VALUE, the value intact); other arguments pass through as given.
set -e
. "$(dirname "$0")/common.sh"
exec "$PY" -m geopurify val "$@"

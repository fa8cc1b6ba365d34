#!/bin/sh
# The seed's evaluation entry point:
#   sh run/val.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml --ckpt_name=geopurify.pth
# Every --key=value becomes `--key value` for `geopurify val`.
set -e
. "$(dirname "$0")/common.sh"
exec "$PY" -m geopurify val "$@"

#!/bin/sh
# The seed's evaluation entry point:
#   sh run/val.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml --ckpt_name=geopurify.pth
#       [--nproc=N] [--device=cuda] [--set=purify.steps=9 --set lift.vlm=clip ...]
# Every --key=value becomes `--key value` for `geopurify val` (split at the first `=`, so
# --set=KEY=VALUE becomes --set KEY=VALUE, the value intact); other arguments pass through as given.
# --nproc=N (default 1) splits the scenes over N processes on this machine:
#   torchrun --standalone --nproc_per_node N -m geopurify val ...   (gloo on the CPU, one GPU each on CUDA)
set -e
NPROC=1
for a do
  shift
  case "$a" in
    --nproc=*) NPROC="${a#--nproc=}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
case "$NPROC" in
  '' | *[!0-9]* | 0) echo "error: --nproc: must be a positive integer, got '$NPROC'" >&2; exit 2 ;;
esac
. "$(dirname "$0")/common.sh"
if [ "$NPROC" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m geopurify val "$@"
fi
exec "$PY" -m geopurify val "$@"

#!/bin/sh
# The seed's training entry point:
#   sh run/train.sh --exp_dir=out/scannet --config=config/geopurify_scannet.yaml [--resume] [--device=cuda]
# Every --key=value becomes `--key value` for `geopurify train`; --resume passes through.
# Several GPUs: torchrun --nproc_per_node=N -m geopurify train --exp_dir ... --config ...
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for a do
  shift
  case "$a" in
    --*=*) set -- "$@" "${a%%=*}" "${a#*=}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$PY" -m geopurify train "$@"

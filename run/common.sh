# Shared by run/train.sh and run/val.sh (sourced): pick the project's Python and turn the seed's
# `--key=value` arguments into `--key value`, split at the first `=` (`--set=lift.vlm=clip` ->
# `--set lift.vlm=clip`); each argument stays one word, spaces and brackets included.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
for a do
  shift
  case "$a" in
    --*=*) set -- "$@" "${a%%=*}" "${a#*=}" ;;
    *) set -- "$@" "$a" ;;
  esac
done

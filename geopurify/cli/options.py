"""Options shared by the sub-commands: `--device` and `--set KEY=VALUE`, declared once here.

Every command that runs torch work takes `--device` (default `auto`: CUDA when torch sees it,
else the CPU; geopurify.device.resolve_device), and every command that reads a config takes
`--set KEY=VALUE` (repeatable). A config is merged in this order, later wins: defaults.yaml <
--config FILE (over its `base:` chain) < the command's own flags (--vlm, --vlm-path, ...) < --set.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def add_device(p) -> None:
    """`--device`, default auto."""
    from geopurify.device import CHOICES

    p.add_argument(
        "--device", default="auto", help=f"{CHOICES} (default auto: CUDA when torch sees a GPU, else the CPU)"
    )


def add_set(p) -> None:
    """`--set KEY=VALUE`, repeatable."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="set",
        help="override one config key, e.g. --set distill.epochs=2 --set lift.image_size=[320,240] "
        "(dotted key, YAML value; applied after --config and the other flags; repeatable)",
    )


def device_of(args):
    """The resolved torch.device of `args.device` (InputError for a bad or unavailable one), logged."""
    from geopurify.device import resolve_device

    dev = resolve_device(args.device)
    log.info("device: %s (asked: %s)", dev, args.device)
    return dev


def config_of(args, flags: dict | None = None) -> dict:
    """The config of `args.config` (None = the defaults), then `flags` (the command's own options,
    None values dropped), then `args.set`."""
    from geopurify.config import load_config

    return load_config(getattr(args, "config", None), drop_none(flags), getattr(args, "set", ()))


def drop_none(flags: dict | None) -> dict:
    """`flags` without None values, recursively, and without sections left empty."""
    out = {}
    for k, v in (flags or {}).items():
        if isinstance(v, dict):
            v = drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out

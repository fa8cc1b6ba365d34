"""Which scenes a run trains or evaluates on.

`resolve_scenes(cfg, "train" | "val")` reads `data.root` and the split's list file
(`data.train_list` / `data.val_list`: one scene name per line, `#` comments and blank lines
ignored; null = every scene under root). With `data.dataset: synthetic` the procedural stand-in
rooms are generated first when missing: train = the first `synthetic.n_train` rooms, val = the
next `synthetic.n_val`, all seeded from `synthetic.seed`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from geopurify.data.readers import list_scenes
from geopurify.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def _synthetic_rooms(cfg: dict) -> list[Path]:
    """Paths of all n_train + n_val procedural rooms under data.root, generating missing ones."""
    from geopurify.data.synth import synthesize

    s = cfg["synthetic"]
    root = Path(cfg["data"]["root"])
    n = int(s["n_train"]) + int(s["n_val"])
    if int(s["n_train"]) < 1 or int(s["n_val"]) < 0:
        raise InputError(None, f"synthetic.n_train must be >= 1 and n_val >= 0, got {s['n_train']} / {s['n_val']}")
    log.info("data: %d PROCEDURAL STAND-IN rooms (synthetic, not ScanNet) under %s, seed %d",
             n, root, s["seed"])
    return [Path(p) for p in synthesize(root, n, s["seed"], n_points=s["points"], n_frames=s["frames"])]


def resolve_scenes(cfg: dict, split: str) -> list[Path]:
    """Scene directories of `split` ("train" or "val"); see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = cfg["data"]
    root = Path(data["root"])
    list_file = data[f"{split}_list"]
    if data["dataset"] == "synthetic":
        rooms = _synthetic_rooms(cfg)
        n_train = int(cfg["synthetic"]["n_train"])
        default = rooms[:n_train] if split == "train" else rooms[n_train:]
    else:
        if not root.is_dir():
            raise InputError(root, f"data.root is not a directory (dataset {data['dataset']})")
        default = None
    if list_file is not None:
        return list_scenes(root, list_file)
    if default is None:
        default = list_scenes(root)
    if not default:
        raise InputError(root, f"no scenes for split '{split}'")
    return [Path(p) for p in default]

"""Which scenes a run trains or evaluates on.

`resolve_scenes(cfg, "train" | "val")` reads `data.root` and the split's list file
(`data.train_list` / `data.val_list`: one scene name per line, `#` comments and blank lines
ignored; null = every scene under root). A data set named in the registry `GENERATED` is written
first when missing: `data.dataset: synthetic`, the procedural stand-in rooms
(geopurify.standins.rooms.export.synthetic_rooms): train = the first `synthetic.n_train` rooms,
val = the next `synthetic.n_val`, all seeded from `synthetic.seed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.data.readers import list_scenes
from geopurify.errors import InputError
from geopurify.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "val")

# data.dataset -> a function(cfg) writing the whole data set under data.root (when missing) and
# returning its scene directories, train scenes first: the generated (stand-in) data sets
GENERATED = Registry(
    "data.dataset",
    "generated data set",
    {
        "synthetic": "geopurify.standins.rooms.export:synthetic_rooms",
    },
)


def resolve_scenes(cfg: dict, split: str) -> list[Path]:
    """Scene directories of `split` ("train" or "val"); see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = cfg["data"]
    root = Path(data["root"])
    list_file = data[f"{split}_list"]
    if data["dataset"] in GENERATED:
        rooms = [Path(p) for p in GENERATED.get(data["dataset"])(cfg)]
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

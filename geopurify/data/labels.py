"""Benchmark label sets: raw dataset ids -> class indices 0..C-1 (IGNORE = -1 elsewhere).

Every set knows the raw id space(s) it is defined on:
- "nyu40": NYU40 ids (ScanNet `labels_nyu40.npy`, `*.labels.ply`, the procedural rooms; 0 = unannotated).
- "scannet200_raw": the `id` column of ScanNet's scannetv2-labels.combined.tsv.
- "matterport_raw": Matterport3D face `category_id` = row `index` of category_mapping.tsv (-1/0 = none).

Sets (tables under geopurify/resources, provenance in their header lines):
- scannet20: the 20 ScanNet benchmark classes from NYU40; scannet19: the same without
  otherfurniture (ignored), as the GeoPurify reference code's evaluation does (19 prompts; ground-truth
  otherfurniture points ignored), the setting of the paper's 55.1.
- scannet200: the 200 official ScanNet200 classes. Per-point "scannet200_raw" ids come from a scan's
  aggregation (segGroup label = raw category) through `scannet_raw_category_ids()`.
- matterport21: OpenScene's 21 classes (ScanNet-20 + ceiling) via each category's nyu40id;
  also defined on "nyu40" directly.
- matterport40/80/160: OpenScene's K-class settings: the first K distinct `nyuClass` names of
  category_mapping.tsv in row order (void/unknown/empty excluded); later names are ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

import numpy as np

from geopurify.errors import InputError

IGNORE = -1
SETS = ("scannet20", "scannet19", "scannet200", "matterport21", "matterport40", "matterport80", "matterport160")
_EXCLUDED_MP_NAMES = ("void", "unknown", "")


@dataclass
class LabelSet:
    """A benchmark's class list plus lookup tables from raw ids (one per raw id space)."""

    name: str
    names: list[str]
    raw_space: str  # the primary raw id space
    luts: dict[str, np.ndarray] = field(repr=False)  # space -> int64 (max_raw_id + 1,), class index or IGNORE
    prompt_names: list[str] | None = None  # names used in text prompts when they differ from `names`

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def spaces(self) -> list[str]:
        return list(self.luts)

    def index(self, class_name: str) -> int:
        """Class index of a name (ValueError if absent)."""
        return self.names.index(class_name)

    def map(self, raw_ids, space: str | None = None) -> np.ndarray:
        """int64 array of class indices (same shape as `raw_ids`); ids outside the set -> IGNORE.

        `space` selects the raw id space (default `raw_space`); see `spaces`.
        """
        space = self.raw_space if space is None else space
        if space not in self.luts:
            raise ValueError(f"label set {self.name} is not defined on raw id space {space!r} (has {self.spaces})")
        ids = np.asarray(raw_ids)
        if ids.dtype.kind not in "iub":
            raise TypeError(f"raw ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        lut = self.luts[space]
        out = np.full(ids.shape, IGNORE, dtype=np.int64)
        ok = (ids >= 0) & (ids < lut.shape[0])
        out[ok] = lut[ids[ok]]
        return out

    def prompts(self, template: str = "a {} in a scene") -> list[str]:
        """One text prompt per class, e.g. "a chair in a scene"."""
        return [template.format(n) for n in (self.prompt_names or self.names)]


def _rows(filename: str) -> list[list[str]]:
    """Data rows of a shipped TSV (header line and '#' comment lines skipped)."""
    text = resources.files("geopurify").joinpath(f"resources/{filename}").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return [ln.split("\t") for ln in lines[1:]]


@functools.cache
def _id_name_table(filename: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    rows = _rows(filename)
    return tuple(int(r[0]) for r in rows), tuple(r[1] for r in rows)


@functools.cache
def matterport_categories() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Matterport category table: (index int64, nyu40id int64, nyuClass names, raw_category names)."""
    rows = _rows("matterport_categories.tsv")
    index = np.array([int(r[0]) for r in rows], dtype=np.int64)
    nyu40 = np.array([int(r[2]) for r in rows], dtype=np.int64)
    return index, nyu40, tuple(r[3] for r in rows), tuple(r[1] for r in rows)


def _lut(raw_ids, classes, size: int | None = None) -> np.ndarray:
    """Lookup table raw id -> class index (IGNORE where unset)."""
    raw_ids = np.asarray(raw_ids, dtype=np.int64)
    lut = np.full(int(raw_ids.max()) + 1 if size is None else size, IGNORE, dtype=np.int64)
    lut[raw_ids] = np.asarray(classes, dtype=np.int64)
    return lut


@functools.cache
def scannet_raw_category_ids() -> Mapping[str, int]:
    """ScanNet raw category string -> raw id ("scannet200_raw" space): the `raw_category` and `id`
    columns of scannetv2-labels.combined.tsv (resources/scannet_raw_categories.tsv). Several
    categories (synonyms) share an id; names are matched exactly, as ScanNet's own export does."""
    return MappingProxyType({r[0]: int(r[1]) for r in _rows("scannet_raw_categories.tsv")})  # read-only, cached


def matterport_k_classes(k: int) -> tuple[list[str], np.ndarray]:
    """OpenScene's K-class Matterport setting: (names, lut over category index).

    Walk category rows in order; each new nyuClass name (not void/unknown/empty) becomes the next
    class until K exist; rows whose name is already a class map to it; all others are ignored.
    """
    index, _, nyu_class, _ = matterport_categories()
    names: list[str] = []
    pos: dict[str, int] = {}
    lut = np.full(int(index.max()) + 1, IGNORE, dtype=np.int64)
    for i, x in zip(index, nyu_class):
        if x in pos:
            lut[i] = pos[x]
        elif len(names) < k and x not in _EXCLUDED_MP_NAMES:
            pos[x] = len(names)
            names.append(x)
            lut[i] = pos[x]
    if len(names) < k:
        raise ValueError(f"the Matterport category table defines only {len(names)} classes, asked for {k}")
    return names, lut


_SETTING_NOTES = {
    "scannet19": "19 ScanNet classes, otherfurniture ignored: the GeoPurify reference code's evaluation; "
    "compare with the paper's 55.1 mIoU",
    "scannet20": "the 20 ScanNet benchmark classes, otherfurniture prompted as 'other' as OpenScene does; "
    "not the setting of the paper's 55.1",
    "scannet200": "the 200 ScanNet200 classes; the paper reports f-mIoU / f-mAcc (11.9 / 22.8: wall, floor, "
    "ceiling left out)",
    "matterport21": "21 Matterport3D classes; compare with the paper's 40.2 mIoU",
}


def describe_setting(name: str) -> str:
    """What a label set's numbers are, in one line, e.g. "scannet19 (19 ScanNet classes, otherfurniture
    ignored: the GeoPurify reference code's evaluation; compare with the paper's 55.1 mIoU)"."""
    if name in _SETTING_NOTES:
        return f"{name} ({_SETTING_NOTES[name]})"
    if name.startswith("matterport") and name[len("matterport") :].isdigit():
        return f"{name} (OpenScene's {name[len('matterport') :]}-class Matterport3D setting)"
    return name


def get_label_set(name: str) -> LabelSet:
    """The label set called `name` (one of SETS); InputError for an unknown name."""
    if name in ("scannet20", "scannet19"):
        ids, names = _id_name_table("scannet20.tsv")
        ids, names = list(ids), list(names)
        if name == "scannet19":  # otherfurniture ignored
            ids, names = ids[:-1], names[:-1]
        prompt = ["other" if n == "otherfurniture" else n for n in names]  # OpenScene's prompt for class 39
        return LabelSet(
            name,
            names,
            "nyu40",
            {"nyu40": _lut(ids, range(len(ids)), 41)},
            prompt_names=prompt if prompt != names else None,
        )
    if name == "scannet200":
        ids, names = _id_name_table("scannet200.tsv")
        return LabelSet(name, list(names), "scannet200_raw", {"scannet200_raw": _lut(ids, range(len(ids)))})
    if name == "matterport21":
        ids, names = _id_name_table("matterport21.tsv")
        nyu_lut = _lut(ids, range(len(ids)), 41)
        index, nyu40, _, _ = matterport_categories()
        raw_lut = np.full(int(index.max()) + 1, IGNORE, dtype=np.int64)
        ok = (nyu40 >= 0) & (nyu40 < nyu_lut.shape[0])
        raw_lut[index[ok]] = nyu_lut[nyu40[ok]]
        return LabelSet(name, list(names), "matterport_raw", {"matterport_raw": raw_lut, "nyu40": nyu_lut})
    if name in ("matterport40", "matterport80", "matterport160"):
        names, lut = matterport_k_classes(int(name[len("matterport") :]))
        return LabelSet(name, names, "matterport_raw", {"matterport_raw": lut})
    raise InputError(None, f"unknown label set {name!r}; choose from {', '.join(SETS)}")

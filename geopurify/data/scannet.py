"""ScanNet's annotation files: segment groups painted onto the vertices of the scan mesh.

A scan's `<scene>.aggregation.json` lists segment groups (an object id and a raw category label
each, over segment ids) and `<scene>_vh_clean_2.0.010000.segs.json` assigns every vertex of the
`_vh_clean_2` mesh a segment id. Painting the groups onto the vertices gives per-vertex instance
ids (`scannet_instances`) and raw category ids (`scannet_raw_labels`, what ScanNet200 scores).
Both the scene reader (mesh scenes) and `geopurify prepare scannet` use them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from geopurify.errors import InputError

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


def _segment_index(segs: Path, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct segment ids, per-vertex position in them) from a `.segs.json`."""
    seg_idx = _read_json(segs).get("segIndices")
    if not isinstance(seg_idx, list) or len(seg_idx) != n_vertices:
        raise InputError(
            segs,
            f"segIndices must list one segment per vertex ({n_vertices}), "
            f"got {len(seg_idx) if isinstance(seg_idx, list) else type(seg_idx).__name__}",
        )
    try:
        seg_arr = np.asarray(seg_idx, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(segs, "segIndices must be integers") from None
    if seg_arr.ndim != 1:
        raise InputError(segs, "segIndices must be a flat list of integers")
    uniq, inv = np.unique(seg_arr, return_inverse=True)
    return uniq, inv.reshape(-1)


def _seg_groups(aggregation: Path, key: str) -> list[tuple[object, np.ndarray]]:
    """(group[key], its segment ids) of every segGroup, in file order."""
    groups = _read_json(aggregation).get("segGroups")
    if not isinstance(groups, list):
        raise InputError(aggregation, "no segGroups list")
    out = []
    for g in groups:
        try:
            out.append((g[key], np.asarray(g["segments"], dtype=np.int64).reshape(-1)))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InputError(aggregation, f"segGroups entries need {key} and a list of integer segments") from None
    return out


def _paint_groups(uniq: np.ndarray, inv: np.ndarray, groups: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Per-vertex int32 value of the segment groups (0 where none): every vertex of a listed segment
    takes its group's value, groups in file order, so where groups share a segment the later one
    wins (ScanNet's export scripts assign group after group the same way). Segments the
    over-segmentation does not hold are ignored."""
    lut = np.zeros(uniq.shape[0], dtype=np.int32)
    if uniq.size == 0:
        return lut[inv]
    for value, members in groups:
        pos = np.minimum(np.searchsorted(uniq, members), uniq.shape[0] - 1)
        lut[pos[uniq[pos] == members]] = value
    return lut[inv]


def scannet_instances(aggregation: str | Path, segs: str | Path, n_vertices: int) -> np.ndarray:
    """Per-vertex instance ids (objectId + 1, 0 = none) from ScanNet's aggregation and
    over-segmentation files, as ScanNet's benchmark export defines them."""
    aggregation, segs = Path(aggregation), Path(segs)
    uniq, inv = _segment_index(segs, n_vertices)
    groups = []
    for obj, members in _seg_groups(aggregation, "objectId"):
        try:
            obj = int(obj) + 1
        except (TypeError, ValueError, OverflowError):
            raise InputError(aggregation, f"segGroups objectId must be an integer, got {obj!r}") from None
        if not 0 <= obj <= np.iinfo(np.int32).max:
            raise InputError(aggregation, f"segGroups objectId {obj - 1} is out of range")
        groups.append((obj, members))
    return _paint_groups(uniq, inv, groups)


def scannet_raw_labels(aggregation: str | Path, segs: str | Path, n_vertices: int) -> np.ndarray:
    """Per-vertex ScanNet raw category ids (int32, "scannet200_raw" space; 0 = unannotated or a
    category missing from scannetv2-labels.combined.tsv), what ScanNet200 evaluates against.

    Each segGroup's `label` (a raw category string) is looked up in the table's raw_category ->
    id columns (geopurify.data.labels.scannet_raw_category_ids) and painted on the vertices of its
    segments; where groups overlap the later group in the file wins, as in ScanNet's
    BenchmarkScripts/ScanNet200 preprocessing. Unlike that script, ids outside the 200 benchmark
    classes are kept (the scannet200 label set maps them to IGNORE, which gives the same scores).
    """
    from geopurify.data.labels import scannet_raw_category_ids

    aggregation, segs = Path(aggregation), Path(segs)
    uniq, inv = _segment_index(segs, n_vertices)
    table = scannet_raw_category_ids()
    groups, unknown = [], set()
    for label, members in _seg_groups(aggregation, "label"):
        if not isinstance(label, str):
            raise InputError(aggregation, f"segGroups label must be a category string, got {label!r}")
        if label not in table:
            unknown.add(label)
        groups.append((table.get(label, 0), members))
    if unknown:
        log.warning(
            "%s: %d segment-group categories are not in ScanNet's raw category table and stay unannotated (e.g. %s)",
            aggregation,
            len(unknown),
            ", ".join(sorted(map(repr, unknown))[:3]),
        )
    return _paint_groups(uniq, inv, groups)

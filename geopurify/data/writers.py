"""Scene writers: the on-disk layout `geopurify.data.readers.load_scene` reads (docs/data.md, geopurify.data.layout).

Every file is written atomically (`geopurify.io`). Poses are given camera-to-world in the scene's
world frame; if the directory already holds an axis alignment A, the pose file stores
inv(A) @ pose so that reading it back (pose_world = A @ pose_file) returns what was written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from geopurify.data import layout as L
from geopurify.data.images import write_color, write_depth, write_label_image
from geopurify.data.normals import NORMAL_SOURCES
from geopurify.io import save_npy, write_json, write_text

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def format_matrix(m: np.ndarray) -> str:
    """Text of a matrix, one row per line, enough digits to round-trip float64 to ~1e-12."""
    return "".join(" ".join(f"{v:.12g}" for v in row) + "\n" for row in np.asarray(m, dtype=np.float64))


def _as_4x4_intrinsic(k: np.ndarray, what: str) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.shape not in ((3, 3), (4, 4)) or not np.isfinite(k).all():
        raise ValueError(f"{what} must be a finite 3x3 or 4x4 matrix, got {k.shape}")
    out = np.eye(4)
    out[:3, :3] = k[:3, :3]
    return out


def _update_meta(scene_dir: Path, updates: dict) -> None:
    path = scene_dir / L.META_FILE
    meta = json.loads(path.read_text()) if path.is_file() else {}
    new = {**meta, **updates}
    if new != meta or not path.is_file():
        write_json(path, new)


def write_scene(
    scene_dir: str | Path,
    xyz: np.ndarray,
    rgb: np.ndarray,
    labels: np.ndarray | None = None,
    instances: np.ndarray | None = None,
    meta: dict | None = None,
    normals: np.ndarray | None = None,
    normals_source: str = "mesh",
) -> Path:
    """Write a scene's points (points_xyzrgb.npy float32 (N, 6)), labels_nyu40.npy / instances.npy
    (int32), normals.npy (float32 (N, 3), world frame) and meta.json (merged into an existing one),
    whose "normals" says where the normals come from: `normals_source` ("mesh", "analytic"; see
    geopurify.data.normals), or "pca" when none are given (the readers estimate them). Label /
    instance / normal files of an earlier write that are not given now are removed, so the
    directory always describes one point set."""
    scene_dir = Path(scene_dir)
    xyz = np.asarray(xyz)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ValueError(f"xyz must be (N, 3) with N > 0, got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz holds NaN/inf")
    n = xyz.shape[0]
    if rgb.shape != (n, 3):
        raise ValueError(f"rgb must be ({n}, 3), got {rgb.shape}")
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError("rgb must be in 0..255")
    scene_dir.mkdir(parents=True, exist_ok=True)
    pts = np.concatenate([xyz.astype(np.float32), rgb.astype(np.float32)], axis=1)
    save_npy(scene_dir / L.POINTS_FILE, pts)
    if normals is not None:
        normals = np.asarray(normals)
        if normals.shape != (n, 3) or normals.dtype.kind != "f" or not np.isfinite(normals).all():
            raise ValueError(f"normals must be finite ({n}, 3) floats, got {normals.shape} {normals.dtype}")
        if normals_source not in NORMAL_SOURCES:
            raise ValueError(f"normals_source must be one of {NORMAL_SOURCES}, got {normals_source!r}")
        save_npy(scene_dir / L.NORMALS_FILE, normals.astype(np.float32))
    elif (scene_dir / L.NORMALS_FILE).exists():
        log.info("%s: removing stale %s", scene_dir, L.NORMALS_FILE)
        (scene_dir / L.NORMALS_FILE).unlink()
    for fname, arr, what in ((L.LABELS_FILE, labels, "labels"), (L.INSTANCES_FILE, instances, "instances")):
        path = scene_dir / fname
        if arr is None:
            if path.exists():
                log.info("%s: removing stale %s", scene_dir, fname)
                path.unlink()
            continue
        arr = np.asarray(arr)
        if arr.shape != (n,) or arr.dtype.kind not in "iu":
            raise ValueError(f"{what} must be ({n},) integers, got {arr.shape} {arr.dtype}")
        save_npy(path, arr.astype(np.int32))
    _update_meta(scene_dir, {**(meta or {}), "normals": "pca" if normals is None else str(normals_source)})
    log.debug("wrote scene %s: %d points", scene_dir, n)
    return scene_dir


def write_frame(
    scene_dir: str | Path,
    key: str | int,
    pose: np.ndarray,
    intrinsic: np.ndarray,
    color: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    depth_scale: float = 1000.0,
    label_image: np.ndarray | None = None,
    depth_intrinsic: np.ndarray | None = None,
    color_ext: str = ".jpg",
) -> None:
    """Write one posed frame in ScanNet's SensReader export layout.

    pose: 4x4 camera-to-world (world frame), OpenCV axes. intrinsic / depth_intrinsic: 3x3 or 4x4,
    stored as 4x4 in intrinsic/intrinsic_{color,depth}.txt; a frame whose intrinsics differ from
    the scene's gets its own intrinsic/<key>.txt (<key>_depth.txt). color: (H, W, 3) uint8 ->
    color/<key><color_ext> (.jpg lossy as ScanNet, .png lossless); depth: (H, W) metres ->
    depth/<key>.png uint16 at `depth_scale` (recorded in meta.json); label_image: (H, W) raw ids
    -> label/<key>.png uint16.
    """
    scene_dir = Path(scene_dir)
    key = str(key)
    if not _KEY_RE.fullmatch(key) or key.startswith("intrinsic"):
        raise ValueError(f"frame key {key!r} must be a plain file stem (letters, digits, _ . -)")
    pose = np.asarray(pose, dtype=np.float64)
    problem = L.pose_problem(pose) if pose.shape == (4, 4) else f"pose must be 4x4, got {pose.shape}"
    if problem:
        raise ValueError(problem)
    if color_ext not in L.COLOR_EXTS:
        raise ValueError(f"color_ext must be one of {L.COLOR_EXTS}")
    meta_path = scene_dir / L.META_FILE
    old_scale = json.loads(meta_path.read_text()).get("depth_scale") if meta_path.is_file() else None
    if depth is not None and old_scale is not None and float(old_scale) != float(depth_scale):
        raise ValueError(f"{meta_path} records depth_scale {old_scale}; cannot write a frame at scale {depth_scale}")
    axis, _ = L.read_axis_alignment(scene_dir) if scene_dir.is_dir() else (None, None)
    if axis is not None:
        pose = np.linalg.inv(axis) @ pose
    write_text(scene_dir / L.POSE_DIR / f"{key}.txt", format_matrix(pose))

    intr = scene_dir / L.INTRINSIC_DIR
    for k, shared, own in (
        (intrinsic, L.COLOR_INTRINSIC, f"{key}.txt"),
        (depth_intrinsic, L.DEPTH_INTRINSIC, f"{key}_depth.txt"),
    ):
        if k is None:
            continue
        k4 = _as_4x4_intrinsic(k, "intrinsic")
        if not (intr / shared).is_file():
            write_text(intr / shared, format_matrix(k4))
        elif not np.allclose(L.read_matrix(intr / shared)[:3, :3], k4[:3, :3], rtol=0, atol=1e-9):
            write_text(intr / own, format_matrix(k4))
        elif (intr / own).is_file():  # now equal to the scene's: drop a stale per-frame file
            (intr / own).unlink()

    if color is not None:
        for ext in L.COLOR_EXTS:  # one colour file per key
            other = scene_dir / L.COLOR_DIR / f"{key}{ext}"
            if ext != color_ext and other.exists():
                other.unlink()
        write_color(scene_dir / L.COLOR_DIR / f"{key}{color_ext}", color)
    if depth is not None:
        write_depth(scene_dir / L.DEPTH_DIR / f"{key}.png", depth, depth_scale)
        if old_scale is None:
            _update_meta(scene_dir, {"depth_scale": float(depth_scale)})
    if label_image is not None:
        write_label_image(scene_dir / L.LABEL_DIR / f"{key}.png", label_image)


def write_axis_alignment(scene_dir: str | Path, matrix: np.ndarray) -> None:
    """Write axis_align_matrix.txt (4x4, original -> world). Write it before any frame: poses
    already on disk are in the frame the earlier alignment (or none) defined."""
    m = np.asarray(matrix, dtype=np.float64)
    problem = L.pose_problem(m) if m.shape == (4, 4) else f"must be 4x4, got {m.shape}"
    if problem:
        raise ValueError("axis alignment " + problem.replace("pose ", ""))
    write_text(Path(scene_dir) / L.AXIS_FILE, format_matrix(m))

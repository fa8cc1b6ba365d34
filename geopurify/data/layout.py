"""The on-disk scene layout: file names, and the small text files every reader and writer shares.

One directory per scene (docs/architecture.md): points and labels as .npy files, frames in ScanNet's
SensReader export layout (`pose/<k>.txt`, `color/<k>.jpg`, `depth/<k>.png`, `intrinsic/...`), an
optional axis alignment and `meta.json`. `geopurify.data.readers` reads it, `geopurify.data.writers`
writes it, `geopurify.data.sens` and `geopurify.data.prepare` convert raw releases into it; all of
them take the names and the matrix / pose / list readers from here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from geopurify.errors import InputError

log = logging.getLogger(__name__)

# file names of the on-disk layout
POINTS_FILE = "points_xyzrgb.npy"
LABELS_FILE = "labels_nyu40.npy"  # raw ids in meta.json's label_space (default nyu40; Matterport: matterport_raw)
SCANNET200_LABELS_FILE = "labels_scannet200.npy"  # ScanNet raw category ids ("scannet200_raw")
INSTANCES_FILE = "instances.npy"
NORMALS_FILE = "normals.npy"  # float32 (N, 3) world-frame normals; meta.json "normals" says their source
AXIS_FILE = "axis_align_matrix.txt"
META_FILE = "meta.json"
POSE_DIR, COLOR_DIR, DEPTH_DIR, LABEL_DIR, INTRINSIC_DIR = "pose", "color", "depth", "label", "intrinsic"
COLOR_INTRINSIC, DEPTH_INTRINSIC = "intrinsic_color.txt", "intrinsic_depth.txt"
COLOR_EXTS = (".jpg", ".jpeg", ".png")
MESH_SUFFIX, MESH_LABEL_SUFFIX = "_vh_clean_2.ply", "_vh_clean_2.labels.ply"
AGGREGATION_SUFFIXES = (".aggregation.json", "_vh_clean.aggregation.json")  # ScanNet segment groups
SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"  # ScanNet over-segmentation of the _vh_clean_2 mesh
DEFAULT_DEPTH_SCALE = 1000.0
_RIGID_TOL = 1e-2  # max |R^T R - I| entry for a camera pose (ScanNet stores 6 decimals)


def natural_key(name: str) -> tuple:
    """Sort key putting "2" before "10" ("frame-2" before "frame-10")."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def read_matrix(path: str | Path) -> np.ndarray:
    """A whitespace-separated numeric text matrix as float64 (2-D); InputError if unreadable."""
    path = Path(path)
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a numeric matrix ({' '.join(str(e).split())[:160]})") from None
    return m


def read_intrinsic(path: str | Path) -> np.ndarray:
    """3x3 pinhole intrinsics from a 4x4 (ScanNet) or 3x3 text file; InputError if malformed."""
    m = read_matrix(path)
    if m.shape not in ((3, 3), (4, 4)):
        raise InputError(path, f"intrinsics must be a 3x3 or 4x4 matrix, got {m.shape[0]}x{m.shape[1]}")
    k = m[:3, :3].copy()
    if not np.isfinite(k).all():
        raise InputError(path, "intrinsics hold NaN/inf")
    if not (k[0, 0] > 0 and k[1, 1] > 0 and abs(k[2, 2] - 1) < 1e-6 and np.allclose(k[2, :2], 0) and k[1, 0] == 0):
        raise InputError(path, "not a pinhole intrinsic matrix [[fx,s,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0")
    return k


def pose_problem(pose: np.ndarray) -> str | None:
    """Why a camera-to-world matrix is unusable (None if it is a finite rigid 4x4 transform)."""
    if pose.shape != (4, 4):
        return f"pose must be 4x4, got {pose.shape[0]}x{pose.shape[1]}"
    if not np.isfinite(pose).all():
        return "pose holds NaN/inf (ScanNet marks lost tracking this way)"
    if not np.allclose(pose[3], (0, 0, 0, 1), atol=1e-6):
        return f"pose bottom row must be 0 0 0 1, got {pose[3].tolist()}"
    r = pose[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > _RIGID_TOL or np.linalg.det(r) <= 0:
        return "pose is singular or not a rigid rotation + translation"
    return None


def read_axis_alignment(scene_dir: Path) -> tuple[np.ndarray | None, Path | None]:
    """(4x4 original -> world matrix, its file) from axis_align_matrix.txt or ScanNet's
    `<scene>.txt` (`axisAlignment = 16 numbers`, row-major); (None, None) when neither exists."""
    path = scene_dir / AXIS_FILE
    if path.is_file():
        m = read_matrix(path)
        if m.size == 16:
            m = m.reshape(4, 4)
    else:
        path = scene_dir / f"{scene_dir.name}.txt"
        if not path.is_file():
            return None, None
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            raise InputError(path, f"unreadable ({e.strerror})") from None
        line = next((ln for ln in text.splitlines() if ln.strip().startswith("axisAlignment")), None)
        if line is None:
            return None, None
        try:
            m = np.array([float(v) for v in line.split("=", 1)[1].split()], dtype=np.float64)
        except ValueError:
            raise InputError(path, "axisAlignment must be 16 numbers") from None
        if m.size != 16:
            raise InputError(path, f"axisAlignment must be 16 numbers, got {m.size}")
        m = m.reshape(4, 4)
    problem = pose_problem(m) if m.shape == (4, 4) else f"must be a 4x4 matrix, got {m.shape}"
    if problem:
        raise InputError(path, "axis alignment " + problem.replace("pose ", ""))
    return m, path


def read_meta(scene_dir: Path) -> dict:
    """meta.json of a scene directory ({} without one), checked: a JSON object, a positive depth_scale."""
    path = scene_dir / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise InputError(path, f"must hold a JSON object, got {type(meta).__name__}")
    if "depth_scale" in meta:
        s = meta["depth_scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not np.isfinite(s) or s <= 0:
            raise InputError(path, f"depth_scale must be a positive number, got {s!r}")
    return meta


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a small text file; missing or unreadable -> InputError naming it as `what`."""
    path = Path(path)
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"unreadable {what} ({type(e).__name__})") from None


def read_scene_list(list_file: str | Path) -> list[str]:
    """Scene names of a list file (one per line; blank lines and '#' comments skipped), in order,
    duplicates dropped with a warning; a missing, unreadable or empty file -> InputError naming it."""
    names = [ln.split("#", 1)[0].strip() for ln in read_text_lines(list_file, "scene list file")]
    names = [n for n in names if n]
    if not names:
        raise InputError(list_file, "scene list is empty (expected one scene name per line)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        log.warning("%s lists %s more than once; keeping the first", list_file, ", ".join(dup[:5]))
    return list(dict.fromkeys(names))

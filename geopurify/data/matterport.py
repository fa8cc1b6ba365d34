"""Matterport3D houses -> one scene directory per annotated region (docs/real_data.md).

Inputs of a house `<house>/` (the parts may also sit one level down, in `<house>/<house>/`, as the
official zips unpack):
- undistorted_camera_parameters/<house>.conf: `intrinsics_matrix fx 0 cx 0 fy cy 0 0 1` lines, each
  followed by the `scan <depth file> <colour file> <16 numbers>` lines of the images it applies to; the
  16 numbers are a row-major camera-to-world matrix of a canonical camera looking down -z with y up
  (Matterport's data_organization.md). We convert it to OpenCV axes (x right, y down, z forward)
  by negating the y and z columns, pose_cv = pose_mp @ diag(1, -1, -1, 1), as OpenScene's
  preprocess_2d_matterport.py does; the intrinsics are used as given (as OpenScene does).
- undistorted_color_images/<pano>_i<cam>_<yaw>.jpg and undistorted_depth_images/<pano>_d<cam>_<yaw>.png
  (uint16, 4000 units per metre, aligned with the colour image).
- region_segmentations/region<k>.ply: a mesh with per-face `category_id` (the `index` column of
  category_mapping.tsv; -1 = unlabelled). Points are the mesh vertices; each vertex takes the most
  frequent category of its faces (ties -> the smaller id, so unlabelled wins ties), the per-vertex
  vote of OpenScene's preprocess_3d_matterport.py but taken on the raw category ids (OpenScene votes
  after mapping to its K classes; the two differ only on vertices between faces of different raw
  categories that share a class). Labels are stored raw with label_space "matterport_raw"; the
  label sets (geopurify.data.labels: matterport21/40/80/160) map them as OpenScene does. Normals
  are the mesh's area-weighted face normals at the vertices (normals.npy, meta "normals": "mesh").

Each region `k` becomes the scene `<house>_region<k>` holding the frames that see it:
- views="visible" (default): a frame is kept when at least `min_fraction` of a seeded sample of the
  region's vertices (at least one point) projects inside the image with a depth reading that agrees
  with its camera depth within `depth_tol` (relative). This reads every depth image of the house once.
- views="bbox": OpenScene's rule (fusion_util.get_matterport_camera_data): cameras whose centre lies
  inside the region's bounding box.
Either way a region that no frame passes takes the `fallback_views` cameras nearest its bounding-box
centre, as OpenScene does for such test regions (logged, and recorded in meta.json). Frames are
hard-linked (copied across file systems) from the house's image directories, unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.errors import InputError
from geopurify.ops.project import in_bounds
from geopurify.ranks import Dist, barrier, shard

log = logging.getLogger(__name__)

DEPTH_SCALE = 4000.0  # Matterport depth PNG units per metre (0.25 mm)
MP_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # Matterport camera axes (y up, looking down -z) -> OpenCV
VIEW_MODES = ("visible", "bbox")
_PARTS = {
    "conf": "undistorted_camera_parameters",
    "color": "undistorted_color_images",
    "depth": "undistorted_depth_images",
    "regions": "region_segmentations",
}
_REGION_RE = re.compile(r"region(\d+)\.ply")


@dataclass
class MPView:
    """One undistorted image of a house: file names, 3x3 intrinsics, OpenCV camera-to-world pose."""

    key: str  # colour file stem, e.g. "<pano>_i1_3"
    color: str
    depth: str
    K: np.ndarray
    pose: np.ndarray


def read_conf(path: str | Path) -> list[MPView]:
    """Parse an undistorted_camera_parameters/<house>.conf file into views (poses in OpenCV axes)."""
    from geopurify.data.layout import pose_problem, read_text_lines

    path = Path(path)
    lines = read_text_lines(path, "camera parameter file")

    views: list[MPView] = []
    K = None
    n_declared = None
    for i, line in enumerate(lines, 1):
        tok = line.split()
        if not tok:
            continue
        try:
            if tok[0] == "intrinsics_matrix":
                if len(tok) != 10:
                    raise ValueError(f"intrinsics_matrix needs 9 numbers, got {len(tok) - 1}")
                K = np.array([float(t) for t in tok[1:]], dtype=np.float64).reshape(3, 3)
                if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], (0, 0, 1))):
                    raise ValueError("intrinsics_matrix is not a pinhole matrix fx 0 cx 0 fy cy 0 0 1")
            elif tok[0] == "scan":
                if len(tok) != 19:
                    raise ValueError(f"scan needs 2 file names and 16 numbers, got {len(tok) - 1} fields")
                if K is None:
                    raise ValueError("scan line before any intrinsics_matrix line")
                pose = np.array([float(t) for t in tok[3:]], dtype=np.float64).reshape(4, 4) @ MP_TO_CV
                problem = pose_problem(pose)
                if problem:
                    raise ValueError(problem)
                views.append(MPView(key=Path(tok[2]).stem, color=tok[2], depth=tok[1], K=K, pose=pose))
            elif tok[0] == "n_images":
                n_declared = int(tok[1])
        except (ValueError, IndexError) as e:
            raise InputError(path, f"line {i}: {e}") from None
    if not views:
        raise InputError(path, "no 'scan' lines (no camera views)")
    if n_declared is not None and n_declared != len(views):
        log.warning("%s: n_images says %d, found %d scan lines", path, n_declared, len(views))
    keys = [v.key for v in views]
    if len(set(keys)) != len(keys):
        raise InputError(path, "several scan lines name the same colour image")
    return views


def conf_source(path: str | Path) -> str:
    """meta.json `source` of a house's regions: "matterport", unless the .conf opens with a comment
    naming a synthetic stand-in (`geopurify synth --format matterport-raw`), which is carried on."""
    from geopurify.data.layout import read_text_lines

    for line in read_text_lines(Path(path), "camera parameter file"):
        text = line.strip()
        if not text.startswith("#"):
            break
        if text[1:].strip().lower().startswith("synthetic"):
            return f"{text[1:].strip()} (Matterport3D release format)"
    return "matterport"


def vertex_labels_from_faces(faces: np.ndarray, face_labels: np.ndarray, n_vertices: int) -> np.ndarray:
    """int32 (n_vertices,): each vertex's most frequent label among its faces (negative labels count
    as 0 = unlabelled; ties -> the smallest label; vertices on no face -> 0)."""
    faces = np.asarray(faces, dtype=np.int64)
    lab = np.maximum(np.asarray(face_labels, dtype=np.int64), 0)
    out = np.zeros(n_vertices, dtype=np.int32)
    if faces.size == 0:
        return out
    v = faces.reshape(-1)
    lv = np.repeat(lab, faces.shape[1])
    order = np.lexsort((lv, v))
    v, lv = v[order], lv[order]
    starts = np.flatnonzero(np.r_[True, (v[1:] != v[:-1]) | (lv[1:] != lv[:-1])])
    counts = np.diff(np.r_[starts, v.shape[0]])
    pv, pl = v[starts], lv[starts]
    best = np.lexsort((pl, -counts, pv))  # per vertex: most votes first, then smallest label
    first = best[np.r_[True, pv[best][1:] != pv[best][:-1]]]
    out[pv[first]] = pl[first]
    return out


def read_region(path: str | Path) -> dict:
    """A region mesh -> {"xyz" float32 (N, 3), "rgb" uint8 (N, 3), "labels" int32 (N,) raw category ids,
    "normals" float32 (N, 3) area-weighted face normals at the vertices}."""
    from plyfile import PlyData

    from geopurify.data.ply import read_ply

    path = Path(path)
    ply = read_ply(path)
    if "rgb" not in ply:
        raise InputError(path, "region vertices have no red/green/blue colours")
    faces = ply.get("faces")
    if faces is None or faces.shape[0] == 0:
        raise InputError(path, "region PLY has no triangle faces (needed for the per-face category_id)")
    try:  # face properties (read_ply returns vertex properties only); binary files are memory-mapped
        face = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})["face"].data
    except Exception as e:  # plyfile raises many types
        raise InputError(path, f"cannot read the face element ({type(e).__name__})") from None
    if "category_id" not in (face.dtype.names or ()):
        raise InputError(path, f"faces have no category_id property (properties: {face.dtype.names})")
    cat = np.asarray(face["category_id"], dtype=np.int64)
    if cat.shape[0] != faces.shape[0]:
        raise InputError(path, f"{cat.shape[0]} face categories for {faces.shape[0]} faces")
    n = ply["xyz"].shape[0]
    if not np.isfinite(ply["xyz"]).all():
        raise InputError(path, "region vertices hold NaN/inf coordinates")
    from geopurify.data.normals import mesh_normals

    return {
        "xyz": ply["xyz"],
        "rgb": ply["rgb"],
        "labels": vertex_labels_from_faces(faces, cat, n),
        "normals": mesh_normals(ply["xyz"], faces),
    }


# ---------------------------------------------------------------------------------------------- houses
def house_part(house_dir: Path, part: str) -> Path | None:
    """Directory of one part of a house (`house/<part>` or `house/<house>/<part>`), or None."""
    sub = _PARTS[part]
    for cand in (house_dir / sub, house_dir / house_dir.name / sub):
        if cand.is_dir():
            return cand
    return None


def is_house(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and house_part(path, "conf") is not None and house_part(path, "regions") is not None


def find_houses(root: str | Path, names: list[str] | None = None) -> list[Path]:
    """`root` when it is a house, else its house sub-directories (restricted to `names`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "Matterport directory not found" if not root.exists() else "not a directory")
    houses = [root] if is_house(root) else sorted((p for p in root.iterdir() if is_house(p)), key=lambda p: p.name)
    if names is not None:
        from geopurify.data.prepare import select_named

        houses = select_named(houses, names, root, "houses")
    if not houses:
        raise InputError(
            root, f"no Matterport house found (a directory with {_PARTS['conf']}/ and {_PARTS['regions']}/)"
        )
    return houses


def _conf_file(house_dir: Path) -> Path:
    d = house_part(house_dir, "conf")
    own = d / f"{house_dir.name}.conf"
    if own.is_file():
        return own
    confs = sorted(d.glob("*.conf"))
    if len(confs) != 1:
        raise InputError(d, f"expected {house_dir.name}.conf (found {len(confs)} .conf files)")
    return confs[0]


def region_files(house_dir: Path) -> list[tuple[int, Path]]:
    """(k, region<k>.ply) of a house in numeric order."""
    d = house_part(house_dir, "regions")
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _REGION_RE.fullmatch(p.name)))
    if not found:
        raise InputError(d, "no region<k>.ply files")
    return found


def visible_counts(
    views: list[MPView], depth_dir: Path, samples: list[np.ndarray], depth_tol: float = 0.05, progress: bool = True
) -> np.ndarray:
    """int64 (V, R): how many of each region's sample points each view sees (inside the image,
    in front of the camera, depth reading within `depth_tol` x reading of the point's depth).
    Reads every view's depth image once."""
    from geopurify.data.images import read_depth

    pts = np.concatenate(samples).astype(np.float64)
    owner = np.repeat(np.arange(len(samples)), [s.shape[0] for s in samples])
    counts = np.zeros((len(views), len(samples)), dtype=np.int64)
    for vi, v in enumerate(tqdm(views, desc="view visibility", unit="view", disable=not progress, leave=False)):
        depth = read_depth(depth_dir / v.depth, DEPTH_SCALE)
        h, w = depth.shape
        cam = (pts - v.pose[:3, 3]) @ v.pose[:3, :3]  # world -> camera: R^T (p - t)
        z = cam[:, 2]
        front = z > 1e-6
        zf = np.where(front, z, 1.0)
        col = np.rint(v.K[0, 0] * cam[:, 0] / zf + v.K[0, 2])
        row = np.rint(v.K[1, 1] * cam[:, 1] / zf + v.K[1, 2])
        ok = front & in_bounds(col, row, (h, w))
        idx = np.flatnonzero(ok)
        d = depth[row[idx].astype(np.int64), col[idx].astype(np.int64)]
        seen = idx[(d > 0) & (np.abs(d - z[idx]) <= depth_tol * d)]
        counts[vi] = np.bincount(owner[seen], minlength=len(samples))
    return counts


def bbox_views(views: list[MPView], regions_xyz: list[np.ndarray]) -> list[list[int]]:
    """OpenScene's rule: per region, the views whose camera centre lies strictly inside its bounding box."""
    centres = np.stack([v.pose[:3, 3] for v in views])
    out = []
    for xyz in regions_xyz:
        lo, hi = xyz.min(0), xyz.max(0)
        out.append(np.flatnonzero(((centres > lo) & (centres < hi)).all(1)).tolist())
    return out


def nearest_views(views: list[MPView], xyz: np.ndarray, k: int) -> list[int]:
    """The k views whose camera centre is nearest the bounding-box centre of `xyz`."""
    centres = np.stack([v.pose[:3, 3] for v in views])
    c = (xyz.min(0) + xyz.max(0)) / 2
    return np.argsort(np.linalg.norm(centres - c, axis=1), kind="stable")[:k].tolist()


def select_views(
    views: list[MPView],
    regions_xyz: list[np.ndarray],
    mode: str = "visible",
    depth_dir: Path | None = None,
    depth_tol: float = 0.05,
    min_fraction: float = 0.01,
    n_sample: int = 4096,
    fallback_views: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[list[int]], list[bool]]:
    """(view indices per region, whether each region fell back to the nearest cameras); see the
    module docstring for the modes."""
    if mode not in VIEW_MODES:
        raise InputError(None, f"view selection must be one of {', '.join(VIEW_MODES)}, got {mode!r}")
    if mode == "bbox":
        chosen = bbox_views(views, regions_xyz)
    else:
        rng = np.random.default_rng(seed)
        samples = [
            x if x.shape[0] <= n_sample else x[rng.choice(x.shape[0], n_sample, replace=False)] for x in regions_xyz
        ]
        counts = visible_counts(views, depth_dir, samples, depth_tol, progress)
        need = np.maximum(1, np.ceil(min_fraction * np.array([s.shape[0] for s in samples])))
        chosen = [np.flatnonzero(counts[:, r] >= need[r]).tolist() for r in range(len(samples))]
    fell_back = [not c for c in chosen]
    chosen = [c if c else nearest_views(views, x, fallback_views) for c, x in zip(chosen, regions_xyz)]
    return chosen, fell_back


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        from geopurify.io import atomic_path

        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def _usable_views(views: list[MPView], color_dir: Path, depth_dir: Path, conf: Path) -> list[MPView]:
    ok = [v for v in views if (color_dir / v.color).is_file() and (depth_dir / v.depth).is_file()]
    if len(ok) < len(views):
        kept = {v.key for v in ok}
        missing = [v.key for v in views if v.key not in kept]
        log.warning(
            "%s: %d of %d views lack their colour or depth image (first: %s); they are left out",
            conf,
            len(missing),
            len(views),
            missing[0],
        )
    if not ok:
        raise InputError(color_dir, f"none of the {len(views)} images listed in {conf.name} was found")
    return ok


def prepare_house(
    house_dir: str | Path,
    out: str | Path,
    views: str = "visible",
    overwrite: bool = False,
    depth_tol: float = 0.05,
    min_fraction: float = 0.01,
    n_sample: int = 4096,
    fallback_views: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write one scene `out/<house>_region<k>/` per region of a house; finished regions are skipped
    (unless `overwrite`). The view selection is cached in `out/.<house>.views.json` so a resumed
    run does not read the depth images again."""
    from geopurify.data.prepare import is_complete, staged_dir
    from geopurify.data.writers import write_frame, write_scene
    from geopurify.io import write_json

    house_dir, out = Path(house_dir), Path(out)
    house = house_dir.name
    conf = _conf_file(house_dir)
    color_dir, depth_dir = house_part(house_dir, "color"), house_part(house_dir, "depth")
    if color_dir is None or depth_dir is None:
        raise InputError(house_dir, f"needs {_PARTS['color']}/ and {_PARTS['depth']}/")
    regions = region_files(house_dir)
    dests = [out / f"{house}_region{k}" for k, _ in regions]
    todo = [i for i, d in enumerate(dests) if overwrite or not is_complete(d)]
    if not todo:
        log.info("%s: all %d regions already prepared", house, len(regions))
        return dests
    all_views = _usable_views(read_conf(conf), color_dir, depth_dir, conf)
    source = conf_source(conf)
    data = [
        read_region(p)
        for _, p in tqdm(regions, desc=f"regions {house}", unit="region", disable=not progress, leave=False)
    ]
    params = {
        "mode": views,
        "depth_tol": depth_tol,
        "min_fraction": min_fraction,
        "n_sample": n_sample,
        "fallback_views": fallback_views,
        "seed": seed,
        "views": [v.key for v in all_views],
        "regions": [p.name for _, p in regions],
        "n_points": [int(d["xyz"].shape[0]) for d in data],
    }
    cache = out / f".{house}.views.json"
    try:
        cached = json.loads(cache.read_text()) if cache.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        cached = None
    if isinstance(cached, dict) and cached.get("params") == params:
        chosen, fell_back = cached["chosen"], cached["fell_back"]
    else:
        chosen, fell_back = select_views(
            all_views,
            [d["xyz"] for d in data],
            views,
            depth_dir,
            depth_tol,
            min_fraction,
            n_sample,
            fallback_views,
            seed,
            progress,
        )
        write_json(cache, {"params": params, "chosen": chosen, "fell_back": fell_back})
    for i in tqdm(todo, desc=f"scenes {house}", unit="scene", disable=not progress, leave=False):
        k, ply = regions[i]
        if fell_back[i]:
            log.warning(
                "%s region%d: no view passes the '%s' test; using the %d cameras nearest its centre",
                house,
                k,
                views,
                len(chosen[i]),
            )
        meta = {
            "source": source,
            "label_space": "matterport_raw",
            "depth_scale": DEPTH_SCALE,
            "house": house,
            "region": k,
            "prepared_from": str(ply.resolve()),
            "view_selection": views,
            "view_fallback_nearest": bool(fell_back[i]),
            "n_views": len(chosen[i]),
        }
        with staged_dir(dests[i]) as tmp:
            write_scene(
                tmp, data[i]["xyz"], data[i]["rgb"], labels=data[i]["labels"], meta=meta, normals=data[i]["normals"]
            )
            for vi in chosen[i]:
                v = all_views[vi]
                write_frame(tmp, v.key, v.pose, v.K)
                _link_or_copy(color_dir / v.color, tmp / "color" / f"{v.key}{Path(v.color).suffix}")
                _link_or_copy(depth_dir / v.depth, tmp / "depth" / f"{v.key}.png")
        log.info(
            "prepared %s region%d -> %s: %d points, %d views",
            house,
            k,
            dests[i],
            data[i]["xyz"].shape[0],
            len(chosen[i]),
        )
    return dests


def prepare_matterport(
    root: str | Path,
    out: str | Path,
    houses: str | Path | None = None,
    views: str = "visible",
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    dist: Dist | None = None,
    **kwargs,
) -> list[Path]:
    """Prepare every house under `root` (or `root` itself), or those of `houses`: a list file or the
    name of an official split (train / val / test). Under torchrun (`dist`) rank r prepares houses
    r, r + W, ..., and rank 0 writes the split lists once every rank is done. Returns this rank's
    region scenes."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a directory")
    if views not in VIEW_MODES:
        raise InputError(None, f"view selection must be one of {', '.join(VIEW_MODES)}, got {views!r}")
    from geopurify.data.prepare import scene_names, write_split_lists

    names = scene_names(houses, dataset="matterport", root=root)
    dist = dist or Dist()
    scenes: list[Path] = []
    mine = shard(find_houses(root, names), dist)
    for h in tqdm(mine, desc="matterport houses", unit="house", disable=not progress):
        scenes += prepare_house(h, out, views=views, overwrite=overwrite, seed=seed, progress=progress, **kwargs)
    barrier(dist)
    if dist.main:
        write_split_lists(out, "matterport", root, member=region_house)
    return scenes


def region_house(scene: str) -> str | None:
    """The house of a region scene `<house>_region<k>` (None for other names)."""
    house, sep, k = scene.rpartition("_region")
    return house if sep and house and k.isdigit() else None

"""Scene readers: one directory per scene -> a validated `Scene` (see docs/data.md for the layout).

A scene directory holds its points in one of two forms:
- `points_xyzrgb.npy` (N, 6) in the world frame, with optional `labels_nyu40.npy`,
  `labels_scannet200.npy` (ScanNet raw category ids), `instances.npy`, `normals.npy` (this
  project's layout and ../shared/data/scannet), or
- ScanNet's mesh `<scene>_vh_clean_2.ply` (vertex x, y, z, red, green, blue, alpha; faces) with optional
  `<scene>_vh_clean_2.labels.ply` (vertex `label` = NYU40 id) and aggregation + segs JSON (raw
  category ids). These vertices are in ScanNet's original scan frame: when an axis alignment is
  known the reader applies it to them (and to the normals of the mesh's faces).
Normals come from normals.npy or the mesh; a scene with neither (a bare point cloud) gets PCA
normals when they are first used (`Scene.normals`, `Scene.normals_source`).
A scene may hold labels in several raw id spaces; `load_scene(..., label_space=...)` picks one and
`load_scene_for(path, label_set)` the one a label set is defined on.
Frames follow ScanNet's SensReader export (`<k>` the raw frame id; `geopurify.data.frames` picks
the views): `pose/<k>.txt` (4x4 camera-to-world, original frame),
`color/<k>.jpg`, `depth/<k>.png`, `intrinsic/intrinsic_{color,depth}.txt` (4x4 or 3x3), plus
`label/<k>.png` (procedural rooms) and optional per-frame `intrinsic/<k>.txt` / `<k>_depth.txt`.
The axis alignment (`axis_align_matrix.txt`, or the `axisAlignment` line of ScanNet's
`<scene>.txt`) maps original -> world; it is folded into every pose: pose_world = A @ pose.

Fatal problems raise InputError naming the offending file. A bad frame (non-finite or non-rigid
pose, missing or unreadable image) is skipped with a warning and counted in
`scene.meta["skipped_frames"]` / `scene.meta["skip_reasons"]`, unless every frame is bad.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.data.frames import select_views
from geopurify.data.images import COLOR_MODES, DEPTH_MODES, LABEL_MODES, image_header
from geopurify.data.layout import (
    AGGREGATION_SUFFIXES,
    COLOR_DIR,
    COLOR_EXTS,
    COLOR_INTRINSIC,
    DEFAULT_DEPTH_SCALE,
    DEPTH_DIR,
    DEPTH_INTRINSIC,
    INSTANCES_FILE,
    INTRINSIC_DIR,
    LABEL_DIR,
    LABELS_FILE,
    MESH_LABEL_SUFFIX,
    MESH_SUFFIX,
    NORMALS_FILE,
    POINTS_FILE,
    POSE_DIR,
    SCANNET200_LABELS_FILE,
    SEGS_SUFFIX,
    natural_key,
    pose_problem,
    read_axis_alignment,
    read_intrinsic,
    read_matrix,
    read_meta,
    read_scene_list,
)
from geopurify.data.ply import read_ply
from geopurify.data.scannet import scannet_raw_labels
from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError

log = logging.getLogger(__name__)

_WARN_FRAMES = 5  # skipped frames logged individually at WARNING; the rest at DEBUG + one summary


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"not a readable .npy array ({' '.join(str(e).split())[:160]})") from None


def _check_labels(arr: np.ndarray, n: int, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 1:
        raise InputError(path, f"{what} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InputError(path, f"{what} must be integers, got {arr.dtype}")
    if arr.shape[0] != n:
        raise InputError(path, f"{arr.shape[0]} {what} for {n} points")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise InputError(path, f"{what} exceed the int32 range")
    return arr.astype(np.int32)


# raw label ids each id space can hold (inclusive; None = unbounded): NYU40 ids are 0..40, ScanNet's
# raw ids are non-negative, Matterport category indices use -1 / 0 for "none"
RAW_ID_RANGE = {"nyu40": (0, 40), "scannet200_raw": (0, None), "matterport_raw": (-1, None)}


def check_label_range(labels: np.ndarray, space: str, path: Path) -> None:
    """InputError naming `path` when a raw label id lies outside what `space` can hold."""
    lo, hi = RAW_ID_RANGE.get(space, (None, None))
    if labels.size == 0:
        return
    bad = np.zeros(labels.shape, dtype=bool)
    if lo is not None:
        bad |= labels < lo
    if hi is not None:
        bad |= labels > hi
    if bad.any():
        rng = f"{lo}..{'' if hi is None else hi}"
        raise InputError(
            path,
            f"{int(bad.sum())} label ids outside the {space} range {rng} "
            f"(e.g. {int(labels[bad][0])}); is meta.json's label_space right?",
        )


def _check_xyz(xyz: np.ndarray, path: Path) -> None:
    if xyz.shape[0] == 0:
        raise InputError(path, "no points")
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} of {xyz.shape[0]} points have NaN/inf coordinates")


def mesh_file(scene_dir: Path) -> Path | None:
    """ScanNet's `<scene>_vh_clean_2.ply` in `scene_dir` (the one named after the directory first)."""
    own = scene_dir / f"{scene_dir.name}{MESH_SUFFIX}"
    if own.is_file():
        return own
    found = sorted(p for p in scene_dir.glob(f"*{MESH_SUFFIX}") if not p.name.endswith(MESH_LABEL_SUFFIX))
    return found[0] if found else None


def is_scene_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding points_xyzrgb.npy or a *_vh_clean_2.ply mesh."""
    path = Path(path)
    return path.is_dir() and ((path / POINTS_FILE).is_file() or mesh_file(path) is not None)


def _scannet_aggregation(mesh: Path) -> tuple[Path, Path] | None:
    """(aggregation, segs) JSON files next to a ScanNet mesh, or None when either is missing."""
    base = mesh.name[: -len(MESH_SUFFIX)]
    agg = next((mesh.with_name(base + s) for s in AGGREGATION_SUFFIXES if mesh.with_name(base + s).is_file()), None)
    segs = mesh.with_name(base + SEGS_SUFFIX)
    return (agg, segs) if agg is not None and segs.is_file() else None


def label_sources(scene_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Raw id space -> the file a scene's per-point labels in that space come from, the default first.

    points_xyzrgb.npy scenes: `labels_nyu40.npy` holds ids in meta.json's `label_space` (default
    "nyu40"; Matterport scenes store "matterport_raw" ids there), `labels_scannet200.npy` ScanNet
    raw category ids ("scannet200_raw"). Mesh scenes: the `.labels.ply` (NYU40, or meta's
    label_space) and, from `<scene>.aggregation.json` + `<scene>_vh_clean_2.0.010000.segs.json`,
    "scannet200_raw" (the path given is the aggregation file).
    """
    scene_dir = Path(scene_dir)
    meta = read_meta(scene_dir) if meta is None else meta
    primary = str(meta.get("label_space", "nyu40"))
    out: dict[str, Path] = {}
    if (scene_dir / POINTS_FILE).is_file():
        if (scene_dir / LABELS_FILE).is_file():
            out[primary] = scene_dir / LABELS_FILE
        if (scene_dir / SCANNET200_LABELS_FILE).is_file():
            out["scannet200_raw"] = scene_dir / SCANNET200_LABELS_FILE
        return out
    mesh = mesh_file(scene_dir)
    if mesh is None:
        return out
    lab_path = mesh.with_name(mesh.name[: -len(MESH_SUFFIX)] + MESH_LABEL_SUFFIX)
    if lab_path.is_file():
        out[primary] = lab_path
    agg = _scannet_aggregation(mesh)
    if agg is not None and "scannet200_raw" not in out:
        out["scannet200_raw"] = agg[0]
    return out


def _mesh_labels(lab_path: Path, mesh: Path, mesh_xyz: np.ndarray) -> np.ndarray:
    """Labels of a `.labels.ply` whose vertices must be those of `mesh`."""
    if lab_path.name.endswith(MESH_LABEL_SUFFIX):
        lab = read_ply(lab_path)
        if "labels" not in lab:
            raise InputError(lab_path, "label PLY has no vertex 'label' property")
        if lab["xyz"].shape[0] != mesh_xyz.shape[0]:
            raise InputError(
                lab_path,
                f"{lab['xyz'].shape[0]} labelled vertices for {mesh_xyz.shape[0]} mesh vertices in {mesh.name}",
            )
        if not np.allclose(lab["xyz"], mesh_xyz, atol=1e-4):
            raise InputError(lab_path, f"vertices differ from those of {mesh.name}")
        return lab["labels"].astype(np.int32)
    agg = _scannet_aggregation(mesh)
    return scannet_raw_labels(agg[0], agg[1], mesh_xyz.shape[0])


def _check_normals(arr: np.ndarray, n: int, path: Path) -> np.ndarray:
    """float32 (n, 3) normals of unit length (or zero: no direction known); InputError otherwise."""
    if arr.shape != (n, 3) or arr.dtype.kind != "f":
        raise InputError(path, f"normals must be a float ({n}, 3) array, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(path, "normals hold NaN/inf")
    length = np.linalg.norm(arr.astype(np.float64), axis=1)
    bad = (np.abs(length - 1) > 1e-3) & (length > 1e-6)
    if bad.any():
        raise InputError(
            path, f"{int(bad.sum())} normals are neither unit length nor zero (e.g. length {length[bad][0]:.4g})"
        )
    return arr.astype(np.float32)


def _scene_normals(scene_dir: Path, n: int, meta: dict | None) -> tuple[np.ndarray | None, str]:
    """(normals, source) of a points_xyzrgb.npy scene: normals.npy with meta.json's "normals" as its
    source, or (None, "pca") when the scene has no normals file (they are estimated on use)."""
    from geopurify.data.normals import NORMAL_SOURCES

    meta = read_meta(scene_dir) if meta is None else meta
    said = meta.get("normals")
    path = scene_dir / NORMALS_FILE
    if not path.is_file():
        if said not in (None, "pca"):
            raise InputError(
                path, f"missing: meta.json says the scene's normals come from {said!r} and are stored in {NORMALS_FILE}"
            )
        return None, "pca"
    return _check_normals(_load_npy(path), n, path), (said if said in NORMAL_SOURCES else "file")


def load_points(
    scene_dir: Path,
    axis: np.ndarray | None,
    label_space: str | None = None,
    meta: dict | None = None,
    with_labels: bool = True,
) -> dict:
    """Points, colours, labels, instances and normals of a scene directory, in the world frame.

    Labels come from the file of `label_space` (see `label_sources`; default: the scene's default
    labels, else whichever it has), none when not `with_labels`; out["label_space"] names the
    space (None without labels). Normals (out["normals"], None when there are none to read, and
    out["normals_source"]) come from normals.npy, or for a mesh scene from the mesh's faces
    (`geopurify.data.normals.mesh_normals`, rotated by the axis alignment).
    """
    sources = label_sources(scene_dir, meta) if with_labels else {}
    if label_space is not None and label_space not in sources:
        raise InputError(
            scene_dir,
            f"no labels in raw id space {label_space!r} (the scene has "
            f"{', '.join(f'{k} ({v.name})' for k, v in sources.items()) or 'no labels'})",
        )
    space = label_space if label_space is not None else next(iter(sources), None)
    pts_path = scene_dir / POINTS_FILE
    out: dict = {"labels": None, "instances": None, "label_space": space}
    if pts_path.is_file():
        arr = _load_npy(pts_path)
        if arr.ndim != 2 or arr.shape[1] != 6:
            raise InputError(pts_path, f"expected a (N, 6) array of xyz + rgb, got shape {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise InputError(pts_path, f"expected numbers, got {arr.dtype}")
        xyz = arr[:, :3].astype(np.float32)
        _check_xyz(xyz, pts_path)
        rgb = arr[:, 3:].astype(np.float64)
        if not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 255:
            raise InputError(pts_path, "colours (columns 3-5) must be finite values in 0..255")
        normals, source = _scene_normals(scene_dir, xyz.shape[0], meta)
        out.update(
            xyz=xyz,
            rgb=np.rint(rgb).astype(np.uint8),
            points_file=pts_path,
            in_world=True,
            normals=normals,
            normals_source=source,
        )
        if space is not None:
            lab_path = sources[space]
            out["labels"] = _check_labels(_load_npy(lab_path), xyz.shape[0], lab_path, "labels")
            out["labels_file"] = lab_path
    else:
        mesh = mesh_file(scene_dir)
        if mesh is None:
            raise InputError(scene_dir, f"not a scene directory: no {POINTS_FILE} and no *{MESH_SUFFIX}")
        ply = read_ply(mesh)
        xyz = ply["xyz"]
        _check_xyz(xyz, mesh)
        rgb = ply.get("rgb")
        if rgb is None:
            raise InputError(mesh, "mesh vertices have no red/green/blue colours")
        if space is not None:
            out["labels"] = _mesh_labels(sources[space], mesh, xyz)
            out["labels_file"] = sources[space]
        normals = None
        if ply.get("faces") is not None and len(ply["faces"]):
            from geopurify.data.normals import mesh_normals

            normals = mesh_normals(xyz, ply["faces"])
        else:
            log.info("%s: no triangle faces; normals will be estimated from the points (PCA)", mesh)
        if axis is not None:  # ScanNet meshes are in the original scan frame
            xyz = (xyz.astype(np.float64) @ axis[:3, :3].T + axis[:3, 3]).astype(np.float32)
            if normals is not None:
                normals = (normals.astype(np.float64) @ axis[:3, :3].T).astype(np.float32)
        out.update(
            xyz=xyz,
            rgb=rgb,
            points_file=mesh,
            in_world=axis is not None,
            normals=normals,
            normals_source="pca" if normals is None else "mesh",
        )
    inst_path = scene_dir / INSTANCES_FILE
    if inst_path.is_file():
        out["instances"] = _check_labels(_load_npy(inst_path), out["xyz"].shape[0], inst_path, "instance ids")
    return out


def _image(dirpath: Path, key: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        p = dirpath / f"{key}{ext}"
        if p.is_file():
            return p
    return None


def _frame(
    scene_dir: Path,
    key: str,
    axis: np.ndarray | None,
    k_color: np.ndarray | None,
    k_depth: np.ndarray | None,
    depth_scale: float,
    dirs: dict[str, bool],
) -> Frame:
    """One frame, or InputError(file, problem) saying why it must be skipped."""
    pose_path = scene_dir / POSE_DIR / f"{key}.txt"
    pose = read_matrix(pose_path)
    if pose.size == 16:  # also accept the 16 numbers on one line
        pose = pose.reshape(4, 4)
    problem = pose_problem(pose)
    if problem:
        raise InputError(pose_path, problem)
    if axis is not None:
        pose = axis @ pose
    intr = scene_dir / INTRINSIC_DIR
    own_k = intr / f"{key}.txt"
    k_c = read_intrinsic(own_k) if own_k.is_file() else k_color
    own_kd = intr / f"{key}_depth.txt"
    k_d = read_intrinsic(own_kd) if own_kd.is_file() else k_depth
    if k_c is None:
        raise InputError(intr / COLOR_INTRINSIC, f"colour intrinsics missing (needed by frame {key})")

    paths: dict[str, Path | None] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for kind, sub, exts, modes in (
        ("color", COLOR_DIR, COLOR_EXTS, COLOR_MODES),
        ("depth", DEPTH_DIR, (".png",), DEPTH_MODES),
        ("label", LABEL_DIR, (".png",), LABEL_MODES),
    ):
        p = _image(scene_dir / sub, key, exts) if dirs[kind] else None
        if dirs[kind] and p is None:
            raise InputError(scene_dir / sub / f"{key}{exts[0]}", f"{kind} image missing")
        if p is not None:
            mode, (h, w) = image_header(p)
            if mode not in modes:
                raise InputError(p, f"{kind} image has unexpected PIL mode {mode} (expected one of {', '.join(modes)})")
            sizes[kind] = (w, h)
        paths[kind] = p
    if not any(paths.values()):
        raise InputError(pose_path, "frame has no colour, depth or label image")
    # depth of another size than colour is normal (ScanNet: 640x480 vs 1296x968) given its own intrinsics
    ref = sizes.get("color") or sizes.get("label")
    if k_d is None and "depth" in sizes and ref is not None and sizes["depth"] != ref:
        (wd, hd), (wc, hc) = sizes["depth"], ref
        raise InputError(
            paths["depth"],
            f"depth image is {wd}x{hd} but the colour image is {wc}x{hc}, and there are no "
            f"depth intrinsics ({INTRINSIC_DIR}/{DEPTH_INTRINSIC}) to place its pixels",
        )
    for kind, (w, h) in sizes.items():
        kk = k_d if kind == "depth" and k_d is not None else k_c
        if not (0 < kk[0, 2] < w and 0 < kk[1, 2] < h):
            raise InputError(
                paths[kind],
                f"principal point ({kk[0, 2]:.1f}, {kk[1, 2]:.1f}) lies outside this {w}x{h} "
                f"{kind} image: intrinsics do not match it",
            )
    return Frame(
        name=key,
        pose=pose,
        intrinsic=k_c,
        color_path=paths["color"],
        depth_path=paths["depth"],
        depth_intrinsic=k_d,
        depth_scale=depth_scale,
        label_path=paths["label"],
    )


def load_frames(
    scene_dir: Path, axis: np.ndarray | None, depth_scale: float, frame_step: int = 1, meta: dict | None = None
) -> tuple[list[Frame], list[str], int]:
    """(frames, skip reasons, number of pose files) of the pose keys that are views
    (`geopurify.data.frames.select_views`: raw frame id a multiple of `frame_step`)."""
    pose_dir = scene_dir / POSE_DIR
    if not pose_dir.is_dir():
        return [], [], 0
    keys = sorted((p.stem for p in pose_dir.glob("*.txt")), key=natural_key)
    if not keys:
        return [], [], 0
    chosen = select_views(keys, frame_step, meta, where=scene_dir)
    intr = scene_dir / INTRINSIC_DIR
    k_color = read_intrinsic(intr / COLOR_INTRINSIC) if (intr / COLOR_INTRINSIC).is_file() else None
    k_depth = read_intrinsic(intr / DEPTH_INTRINSIC) if (intr / DEPTH_INTRINSIC).is_file() else None
    if k_color is None and not all((intr / f"{k}.txt").is_file() for k in chosen):
        raise InputError(intr / COLOR_INTRINSIC, f"colour intrinsics missing; {pose_dir} holds {len(keys)} poses")
    dirs = {
        "color": (scene_dir / COLOR_DIR).is_dir(),
        "depth": (scene_dir / DEPTH_DIR).is_dir(),
        "label": (scene_dir / LABEL_DIR).is_dir(),
    }
    frames: list[Frame] = []
    errors: list[InputError] = []
    for key in tqdm(chosen, desc=f"frames {scene_dir.name}", unit="frame", disable=len(chosen) < 200):
        try:
            frames.append(_frame(scene_dir, key, axis, k_color, k_depth, depth_scale, dirs))
        except InputError as e:
            errors.append(e)
            (log.warning if len(errors) <= _WARN_FRAMES else log.debug)("%s; frame %s skipped", e, key)
    if errors and not frames:
        raise InputError(errors[0].path, f"{errors[0].problem} (all {len(chosen)} frames of the scene are unusable)")
    reasons = [str(e) for e in errors]
    if len(reasons) > _WARN_FRAMES:
        log.warning(
            "%s: %d of %d frames skipped (see scene.meta['skip_reasons'])", scene_dir, len(reasons), len(chosen)
        )
    return frames, reasons, len(keys)


def load_scene(path: str | Path, frame_step: int = 1, label_space: str | None = None) -> Scene:
    """Read and validate one scene directory (layout in the module docstring / docs/data.md).

    Frames are the pose/ keys that are views (`geopurify.data.frames`: on ScanNet and procedural
    rooms the raw frame ids that are multiples of `frame_step`; other keys every `frame_step`-th in
    natural order). The depth scale comes from meta.json ("depth_scale") else 1000 (ScanNet
    millimetres). Normals: see `load_points`; `Scene.normals_source` says which.
    `label_space` picks which labels to load when a scene has several (`label_sources`):
    "nyu40" (labels_nyu40.npy), "scannet200_raw" (labels_scannet200.npy), ...; asking for one the
    scene lacks is an InputError. Default: labels_nyu40.npy in meta.json's label_space as always,
    else the scene's only other label file. `Scene.label_space` says which was loaded.
    """
    scene_dir = Path(path)
    if not scene_dir.exists():
        raise InputError(scene_dir, "scene directory not found")
    if not scene_dir.is_dir():
        raise InputError(scene_dir, "expected a scene directory")
    if isinstance(frame_step, bool) or not isinstance(frame_step, (int, np.integer)) or frame_step < 1:
        raise InputError(scene_dir, f"frame_step must be a positive integer, got {frame_step!r}")
    meta = read_meta(scene_dir)
    axis, axis_path = read_axis_alignment(scene_dir)
    pts = load_points(scene_dir, axis, label_space=label_space, meta=meta)
    depth_scale = float(meta.get("depth_scale", DEFAULT_DEPTH_SCALE))
    label_space = pts["label_space"] or str(meta.get("label_space", "nyu40"))
    if pts["labels"] is not None:
        check_label_range(pts["labels"], label_space, pts["labels_file"])
    frames, reasons, n_pose = load_frames(scene_dir, axis, depth_scale, int(frame_step), meta)
    source = meta.get("source") or ("scannet" if re.fullmatch(r"scene\d{4}_\d{2}", scene_dir.name) else "unknown")
    notes = {
        "points_file": str(pts["points_file"]),
        "depth_scale": depth_scale,
        "frame_step": int(frame_step),
        "n_pose_files": n_pose,
        "skipped_frames": len(reasons),
        "skip_reasons": reasons,
        "axis_alignment": None if axis_path is None else str(axis_path),
        "labels_file": str(pts["labels_file"]) if pts["labels"] is not None else None,
        "normals": pts["normals_source"],
    }
    scene = Scene(
        name=scene_dir.name,
        xyz=pts["xyz"],
        rgb=pts["rgb"],
        labels=pts["labels"],
        instances=pts["instances"],
        frames=frames,
        label_space=label_space,
        source=str(source),
        path=scene_dir,
        meta={**meta, **notes},
    )
    if pts["normals"] is not None:
        scene.set_normals(pts["normals"], pts["normals_source"])
    scene.validate()
    log.info(
        "loaded %s: %d points, %d frames%s%s, %s normals",
        scene_dir,
        scene.n_points,
        len(frames),
        f" ({len(reasons)} skipped)" if reasons else "",
        "" if scene.labels is not None else ", no labels",
        scene.normals_source,
    )
    return scene


def scene_label_space(path: str | Path, label_set) -> str | None:
    """The first of `label_set.spaces` (its raw id spaces, primary first) that the scene directory
    has labels in, or None when it has none of them."""
    sources = label_sources(Path(path)) if Path(path).is_dir() else {}
    return next((sp for sp in label_set.spaces if sp in sources), None)


def load_labels(path: str | Path, label_space: str, n_points: int) -> np.ndarray:
    """(N,) int32 raw ids of one scene directory's labels in `label_space` (see `label_sources`),
    validated like `load_scene`'s; InputError when the scene has none in that space."""
    scene_dir = Path(path)
    meta = read_meta(scene_dir)
    sources = label_sources(scene_dir, meta)
    if label_space not in sources:
        raise InputError(scene_dir, f"no labels in raw id space {label_space!r}")
    src = sources[label_space]
    if src.suffix == ".npy":
        labels = _check_labels(_load_npy(src), n_points, src, "labels")
    else:  # mesh scene: the .labels.ply (checked against the mesh) or the aggregation
        labels = load_points(scene_dir, None, label_space=label_space, meta=meta)["labels"]
        if labels.shape[0] != n_points:
            raise InputError(src, f"{labels.shape[0]} labels for {n_points} points")
    check_label_range(labels, label_space, src)
    return labels


def load_scene_for(path: str | Path, label_set, frame_step: int = 1) -> Scene:
    """`load_scene` with the labels a label set is defined on: e.g. labels_scannet200.npy for
    scannet200 even though labels_nyu40.npy is the default. A scene with no labels in any of the
    set's spaces loads as `load_scene` would (callers then report the mismatch or skip scoring)."""
    return load_scene(path, frame_step=frame_step, label_space=scene_label_space(path, label_set))


def list_scenes(root: str | Path, list_file: str | Path | None = None) -> list[Path]:
    """Scene directories under `root`: all of them in natural order, or those named in
    `list_file` (one name per line; blank lines and '#' comments skipped) in the file's order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "data root not found" if not root.exists() else "data root is not a directory")
    if list_file is None:
        found = sorted((p for p in root.iterdir() if is_scene_dir(p)), key=lambda p: natural_key(p.name))
        if not found:
            raise InputError(root, f"no scene directories ({POINTS_FILE} or *{MESH_SUFFIX}) found")
        return found
    out: list[Path] = []
    for name in read_scene_list(list_file):
        p = root / name
        if not is_scene_dir(p):
            raise InputError(list_file, f"scene {name!r} not found under {root}")
        out.append(p)
    return out

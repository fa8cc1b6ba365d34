"""Raw dataset downloads -> this project's on-disk scene layout (docs/architecture.md), resumably.

ScanNet: one raw scan directory (`scans/sceneXXXX_XX/` with `<scene>.sens`,
`<scene>_vh_clean_2.ply`, `<scene>_vh_clean_2.labels.ply`, `<scene>.txt`, and optionally
`<scene>.aggregation.json` + `<scene>_vh_clean_2.0.010000.segs.json`) becomes one scene directory:
`points_xyzrgb.npy` (mesh vertices in the axis-aligned frame), `normals.npy` (area-weighted face
normals of the mesh at its vertices, same frame; meta.json "normals": "mesh"), `labels_nyu40.npy` (from the
.labels.ply), `labels_scannet200.npy` (ScanNet raw category ids from the aggregation, for
ScanNet200), `instances.npy`, `axis_align_matrix.txt`, every k-th frame of the .sens under its raw
frame id (geopurify.data.sens; k recorded as meta.json `sens.frame_step`) and `meta.json`.

Every output scene is built in a staging directory (`<out>/.geopurify-partial/`) and renamed into
place when complete, so a scene directory under `<out>` is always whole: a re-run skips finished
scenes and redoes only the one a kill interrupted. Matterport3D lives in geopurify.data.matterport
and uses the same staging.

The official ScanNet v2 and Matterport3D split lists ship in geopurify/resources/splits/ (`read_split`).
A download may bring its own (`split_lists`: `scannetv2_<split>.txt` / `matterport_<split>.txt` in
--root or up to three directories above it, where `geopurify synth --format *-raw` writes its
stand-ins' splits); they then take the shipped lists' place. After every run `write_split_lists`
writes `<out>/scannetv2_<split>.txt` (Matterport: `matterport_<split>.txt`): the prepared scenes of
each split, the files the configs' `data.val_list` and `select-subset --list` read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.data import readers as R
from geopurify.data.layout import read_scene_list
from geopurify.data.scannet import scannet_instances, scannet_raw_labels
from geopurify.errors import InputError
from geopurify.io import save_npy
from geopurify.ranks import Dist, barrier, shard

log = logging.getLogger(__name__)

STAGING_DIR = ".geopurify-partial"  # under the output root; not a scene directory, so list_scenes ignores it
SPLITS = ("train", "val", "test")  # shipped official split lists (ScanNet v2 scans, Matterport3D houses)
_SCENE_RE = re.compile(r"scene\d{4}_\d{2}")


# ---------------------------------------------------------------------------------------------- staging
def is_complete(out_dir: str | Path) -> bool:
    """True when `out_dir` is a finished scene directory (staged scenes only appear once whole)."""
    out_dir = Path(out_dir)
    return out_dir.is_dir() and (out_dir / "points_xyzrgb.npy").is_file()


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds, rename it onto `final`
    (replacing an existing one). On an exception it is removed; after a kill it stays in the
    staging area and the next `staged_dir` for the same name deletes it."""
    final = Path(final)
    stage_root = final.parent / STAGING_DIR
    stage_root.mkdir(parents=True, exist_ok=True)
    for stale in stage_root.glob(f"{final.name}.*"):
        log.info("removing an interrupted earlier attempt: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=stage_root))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=stage_root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        stage_root.rmdir()  # only when empty


# ---------------------------------------------------------------------------------------------- splits
SPLIT_FILES = {"scannet": "scannetv2_{}.txt", "matterport": "matterport_{}.txt"}  # .format(split)
_SPLIT_SEARCH_UP = 3  # directories above --root searched for a download's own split lists


def read_split(dataset: str, name: str) -> list[str]:
    """Names of a shipped official split: ScanNet v2 scans (train 1201, val 312, test 100) or
    Matterport3D houses (train 61, val 11, test 18); provenance in resources/splits/README.md."""
    if dataset not in SPLIT_FILES:
        raise ValueError(f"dataset must be one of {sorted(SPLIT_FILES)}, got {dataset!r}")
    if name not in SPLITS:
        raise InputError(None, f"unknown {dataset} split {name!r} (expected one of {', '.join(SPLITS)})")
    text = resources.files("geopurify").joinpath("resources/splits/" + SPLIT_FILES[dataset].format(name)).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def scannet_split(name: str) -> list[str]:
    """Scene names of the official ScanNet v2 split `name` (train / val / test)."""
    return read_split("scannet", name)


def split_lists(dataset: str, root: str | Path | None = None) -> tuple[dict[str, list[str]], str]:
    """(split -> scan / house names, where the lists came from) for the download at `root`.

    The first directory among `root` and the three above it that holds any `scannetv2_<split>.txt`
    (Matterport: `matterport_<split>.txt`) supplies all the splits, from its files alone: the lists
    a download brings (`geopurify synth --format scannet-raw / matterport-raw` writes its stand-ins'
    there, beside `scans/` / `v1/`; real downloads carry none, but a user may put custom ones there).
    Otherwise the official lists shipped with the package."""
    if root is not None:
        here = Path(root).resolve()
        for d in [here, *here.parents][: _SPLIT_SEARCH_UP + 1]:
            files = {s: d / SPLIT_FILES[dataset].format(s) for s in SPLITS}
            files = {s: f for s, f in files.items() if f.is_file()}
            if files:
                return {s: read_scene_list(f) for s, f in files.items()}, f"the download's lists in {d}"
    return {s: read_split(dataset, s) for s in SPLITS}, "the official lists shipped with geopurify"


def scene_names(spec: str | Path | None, dataset: str = "scannet", root: str | Path | None = None) -> list[str] | None:
    """`--scenes` / `--houses` value -> names: None (all), a split name (train / val / test: the
    download's list when `split_lists(dataset, root)` finds one, else the shipped official one)
    or a list file (one name per line, '#' comments)."""
    if spec is None:
        return None
    if str(spec) in SPLITS and not Path(spec).is_file():
        lists, source = split_lists(dataset, root)
        if str(spec) not in lists:
            raise InputError(None, f"split {spec!r} has no list in {source}")
        log.info("--scenes %s: %d names from %s", spec, len(lists[str(spec)]), source)
        return lists[str(spec)]
    return read_scene_list(spec)


def write_split_lists(out: str | Path, dataset: str, root: str | Path, member=lambda scene: scene) -> dict[str, Path]:
    """Write `<out>/scannetv2_<split>.txt` (Matterport: `matterport_<split>.txt`) for every split with
    a prepared scene in `out`: those scenes' names, one per line after a '#' header saying where the
    split came from (`split_lists(dataset, root)`). `member(scene name)` is the name the split lists
    hold (ScanNet: the scan itself; Matterport: the region's house; None = no split). A split only
    partly prepared gets a warning; one with no prepared scene gets no file. Returns split -> path."""
    from geopurify.io import write_text

    out = Path(out)
    lists, source = split_lists(dataset, root)
    scenes = sorted(p.name for p in out.iterdir() if is_complete(p)) if out.is_dir() else []
    written = {}
    for split, names in lists.items():
        wanted = set(names)
        mine = [s for s in scenes if member(s) in wanted]
        if not mine:
            continue
        have = {member(s) for s in mine}
        if len(have) < len(wanted):
            log.warning(
                "%s split: %d of its %d %s are prepared in %s (%s); %s lists only those",
                split,
                len(have),
                len(wanted),
                "scans" if dataset == "scannet" else "houses",
                out,
                source,
                SPLIT_FILES[dataset].format(split),
            )
        path = out / SPLIT_FILES[dataset].format(split)
        header = f"# geopurify prepare: the {len(mine)} prepared scenes of the {split} split ({source})\n"
        write_text(path, header + "".join(s + "\n" for s in mine))
        log.info("wrote %s: %d %s scenes", path, len(mine), split)
        written[split] = path
    return written


# ---------------------------------------------------------------------------------------------- ScanNet
def _scan_files(scan_dir: Path) -> dict[str, Path | None]:
    name = scan_dir.name

    def first(*cands: str) -> Path | None:
        return next((scan_dir / c for c in cands if (scan_dir / c).is_file()), None)

    return {
        "sens": first(f"{name}.sens"),
        "mesh": first(f"{name}_vh_clean_2.ply"),
        "labels": first(f"{name}_vh_clean_2.labels.ply"),
        "txt": first(f"{name}.txt"),
        "aggregation": first(f"{name}.aggregation.json", f"{name}_vh_clean.aggregation.json"),
        "segs": first(f"{name}_vh_clean_2.0.010000.segs.json"),
    }


def is_scannet_scan(path: str | Path) -> bool:
    """A raw ScanNet scan directory: named sceneXXXX_XX and holding its mesh or its .sens."""
    path = Path(path)
    if not (path.is_dir() and _SCENE_RE.fullmatch(path.name)):
        return False
    files = _scan_files(path)
    return files["mesh"] is not None or files["sens"] is not None


def find_scannet_scans(root: str | Path, names: list[str] | None = None) -> list[Path]:
    """Raw scan directories under `root` (or `root` itself when it is one), in name order,
    restricted to `names` when given (every named scan must exist)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "raw ScanNet directory not found" if not root.exists() else "not a directory")
    scans = (
        [root]
        if is_scannet_scan(root)
        else sorted((p for p in root.iterdir() if is_scannet_scan(p)), key=lambda p: p.name)
    )
    if names is not None:
        scans = select_named(scans, names, root, "scans", "; expected <root>/sceneXXXX_XX/ directories")
    if not scans:
        raise InputError(
            root, "no ScanNet scan directories (sceneXXXX_XX/ with <scene>_vh_clean_2.ply or <scene>.sens) found"
        )
    return scans


def select_named(found: list[Path], names: list[str], root: Path, what: str, hint: str = "") -> list[Path]:
    """The directories of `found` named in `names`, in the names' order; every name must exist."""
    by_name = {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(
            root, f"{len(missing)} of {len(names)} listed {what} not found (first: {', '.join(missing[:3])}){hint}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def scannet_source(txt: Path | None) -> str:
    """meta.json `source` of a prepared scan: "scannet", unless its `<scene>.txt` has a sceneType
    starting with "synthetic" (the stand-in scans of `geopurify synth --format scannet-raw`), which
    is then carried on so every later output says where its data came from."""
    if txt is None:
        return "scannet"
    try:
        lines = txt.read_text(errors="replace").splitlines()
    except OSError as e:
        raise InputError(txt, f"unreadable ({e.strerror})") from None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "sceneType" and value.strip().lower().startswith("synthetic"):
            return f"{value.strip()} (ScanNet release format)"
    return "scannet"


def prepare_scannet_scan(
    scan_dir: str | Path, out_dir: str | Path, frame_step: int = 20, progress: bool = True
) -> Path:
    """Build the scene directory `out_dir` from one raw ScanNet scan (see the module docstring).

    Points are the vertices of `<scene>_vh_clean_2.ply` mapped by the axisAlignment of
    `<scene>.txt` (identity, with a warning, when the scan has none); poses stay in the original
    frame with the alignment in axis_align_matrix.txt, as the readers expect.
    """
    from geopurify.data.sens import export_sens
    from geopurify.data.writers import write_axis_alignment, write_scene

    scan_dir, out_dir = Path(scan_dir), Path(out_dir)
    files = _scan_files(scan_dir)
    if files["mesh"] is None:
        raise InputError(scan_dir / f"{scan_dir.name}{R.MESH_SUFFIX}", "scan mesh not found")
    axis, axis_path = R.read_axis_alignment(scan_dir)
    if axis is None:
        log.warning(
            "%s: no axisAlignment in %s.txt; points and poses stay in the scan's original frame",
            scan_dir,
            scan_dir.name,
        )
    # NYU40 labels from the .labels.ply only (load_points would fall back to the aggregation's raw ids)
    pts = R.load_points(
        scan_dir,
        axis,
        label_space="nyu40" if files["labels"] is not None else None,
        meta={},
        with_labels=files["labels"] is not None,
    )
    instances = raw_labels = None
    if files["aggregation"] is not None and files["segs"] is not None:
        raw_labels = scannet_raw_labels(files["aggregation"], files["segs"], pts["xyz"].shape[0])
        if files["labels"] is not None:
            instances = scannet_instances(files["aggregation"], files["segs"], pts["xyz"].shape[0])
    meta = {
        "source": scannet_source(files["txt"]),
        "label_space": "nyu40",
        "depth_scale": 1000.0,
        "prepared_from": str(scan_dir.resolve()),
        "axis_aligned": axis is not None,
        "axis_alignment_file": None if axis_path is None else axis_path.name,
    }
    with staged_dir(out_dir) as tmp:
        if files["sens"] is not None:
            # frames first: write_frame stores poses as given only while no axis_align_matrix.txt exists
            summary = export_sens(files["sens"], tmp, frame_step=frame_step, progress=progress)
            meta.update(depth_scale=summary["depth_shift"], sens=summary)
        else:
            log.warning("%s: no %s.sens; the scene gets points only (no frames)", scan_dir, scan_dir.name)
        write_scene(
            tmp, pts["xyz"], pts["rgb"], labels=pts["labels"], instances=instances, meta=meta, normals=pts["normals"]
        )  # the mesh's vertex normals, rotated with the points
        if raw_labels is not None:  # ScanNet200 ground truth, read with label_space "scannet200_raw"
            save_npy(tmp / R.SCANNET200_LABELS_FILE, raw_labels)
        if axis is not None:
            write_axis_alignment(tmp, axis)
    kinds = [k for k, a in (("NYU40", pts["labels"]), ("ScanNet200 raw", raw_labels)) if a is not None]
    log.info(
        "prepared %s -> %s (%d points, %s)",
        scan_dir.name,
        out_dir,
        pts["xyz"].shape[0],
        " + ".join(kinds) + " labels" if kinds else "unlabelled",
    )
    return out_dir


def prepare_scannet(
    root: str | Path,
    out: str | Path,
    frame_step: int = 20,
    scenes: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: Dist | None = None,
) -> list[Path]:
    """Prepare every raw scan under `root` (or those named by `scenes`: a list file or a shipped
    split name) into `out/<scene>/`. Finished scenes are skipped unless `overwrite`. Under torchrun
    (`dist`) rank r prepares scans r, r + W, ... (each scene is staged and renamed on its own), and
    rank 0 writes the split lists once every rank is done. Returns this rank's scenes."""
    if isinstance(frame_step, bool) or not isinstance(frame_step, (int, np.integer)) or frame_step < 1:
        raise InputError(None, f"frame step must be a positive integer, got {frame_step!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a directory")
    dist = dist or Dist()
    scans = shard(find_scannet_scans(root, scene_names(scenes, root=root)), dist)
    done = []
    n_skip = 0
    for scan in tqdm(scans, desc="scannet scenes", unit="scene", disable=not progress):
        dest = out / scan.name
        if is_complete(dest) and not overwrite:
            n_skip += 1
            log.debug("skip %s: %s is complete", scan.name, dest)
        else:
            prepare_scannet_scan(scan, dest, frame_step=frame_step, progress=progress)
        done.append(dest)
    if n_skip:
        log.info("%d of %d scenes were already prepared in %s (skipped)", n_skip, len(scans), out)
    barrier(dist)
    if dist.main:
        write_split_lists(out, "scannet", root)
    return done

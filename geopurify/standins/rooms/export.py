"""Procedural rooms written in the project's scene layout (offline stand-ins for ScanNet scans).

`write_room` writes one room (points, labels, instances, analytic normals, rendered frames, label
images, meta.json naming it a synthetic stand-in); `synthesize(out, n, seed)` writes rooms
synth_0000 .. synth_{n-1}, scene i a function of (seed, i) alone, each renamed into place when
complete so a killed run resumes; `split_rooms(cfg, split)` is the data-source registry's entry for
`data.dataset: synthetic` (geopurify.data.splits).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from geopurify.errors import InputError
from geopurify.schema import check
from geopurify.standins.rooms.layout import Room, make_room
from geopurify.standins.rooms.primitives import DEPTH_SCALE, SOURCE

logger = logging.getLogger(__name__)


def room_meta(room: Room) -> dict:
    """meta.json of a written room: names it as the synthetic stand-in it is."""
    return {
        "source": SOURCE,
        "note": "procedural room generated offline; a stand-in for a ScanNet scan, not real data",
        "depth_scale": DEPTH_SCALE,
        "generator": "geopurify.standins.rooms",
        "seed": room.seed,
        "room_type": room.room_type,
        "room_size_m": [round(float(v), 4) for v in room.size],
        "n_points": int(len(room.xyz)),
        "n_frames": room.n_frames,
        "image_hw": list(room.image_hw),
        "label_space": "nyu40",
        "objects": room.objects,
    }


def write_room(room: Room, scene_dir: str | Path, progress: bool = False) -> Path:
    """Write `room` in the on-disk scene layout (points, labels, instances, normals, frames, label images, meta)."""
    from tqdm import tqdm

    from geopurify.data.writers import write_frame, write_scene

    scene_dir = Path(scene_dir)
    write_scene(
        scene_dir,
        room.xyz,
        room.rgb,
        labels=room.labels,
        instances=room.instances,
        meta=room_meta(room),
        normals=room.normals,
        normals_source="analytic",
    )
    for i in tqdm(range(room.n_frames), desc=f"render {room.name}", unit="frame", disable=not progress, leave=False):
        v = room.render(i)
        write_frame(
            scene_dir,
            i,
            room.poses[i],
            room.intrinsic,
            color=v.color,
            depth=v.depth,
            depth_scale=DEPTH_SCALE,
            label_image=v.label,
        )
    return scene_dir


def scene_seed(seed: int, index: int) -> int:
    """The room seed of scene `index` of a data set seeded with `seed` (independent of the scene count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def synthesize(
    out_dir: str | Path,
    n_scenes: int,
    seed: int,
    n_points: int = 100_000,
    n_frames: int = 50,
    image_hw: tuple[int, int] = (480, 640),
    progress: bool = True,
) -> list[Path]:
    """Write procedural rooms out_dir/synth_0000 .. synth_{n-1} (offline stand-ins for ScanNet scans).

    Scene i depends only on (seed, i). A scene is written to a hidden temporary directory and
    renamed when complete, so existing scene directories are complete and are skipped; one written
    with other parameters raises InputError rather than being silently mixed in.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if n_scenes < 0:
        raise InputError(None, f"number of scenes must be >= 0, got {n_scenes}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, made = [], 0
    t0 = time.perf_counter()
    for i in tqdm(range(n_scenes), desc="procedural rooms (synthetic stand-in)", unit="scene", disable=not progress):
        name = f"synth_{i:04d}"
        final = out_dir / name
        rs = scene_seed(seed, i)
        want = {
            "seed": rs,
            "n_points": int(n_points),
            "n_frames": int(n_frames),
            "image_hw": [int(v) for v in image_hw],
        }
        if final.exists():
            _check_existing(final, want)
            paths.append(final)
            continue
        _remove_stale_partials(out_dir, name)
        tmp = out_dir / f".{name}.partial-{os.getpid()}"
        try:
            room = make_room(rs, n_points=n_points, n_frames=n_frames, image_hw=image_hw, name=name)
            write_room(room, tmp, progress=progress)
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                _check_existing(final, want)  # another process finished this scene first

        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        made += 1
        paths.append(final)
    logger.info(
        "%d procedural rooms (SYNTHETIC stand-in for ScanNet) in %s: %d generated, %d already there (%.1fs)",
        n_scenes,
        out_dir,
        made,
        n_scenes - made,
        time.perf_counter() - t0,
    )
    return paths


def synthetic_rooms(cfg: dict) -> list[Path]:
    """Paths of all `synthetic.n_train` + `n_val` procedural rooms under data.root, generating missing
    ones (the registry entry of `data.dataset: synthetic`, geopurify.data.splits)."""
    check(cfg, "synthetic.n_train", "synthetic.n_val")
    s = cfg["synthetic"]
    root = Path(cfg["data"]["root"])
    n = int(s["n_train"]) + int(s["n_val"])
    logger.info("data: %d PROCEDURAL STAND-IN rooms (synthetic, not ScanNet) under %s, seed %d", n, root, s["seed"])
    return synthesize(root, n, s["seed"], n_points=s["points"], n_frames=s["frames"])


def _remove_stale_partials(out_dir: Path, name: str) -> None:
    """Delete temporary directories of `name` left by killed runs (their process is gone) or by this one."""
    for p in out_dir.glob(f".{name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            if pid != os.getpid():
                os.kill(pid, 0)
                continue  # a live process is writing it
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        logger.info("removing unfinished %s", p)
        shutil.rmtree(p, ignore_errors=True)


def _check_existing(path: Path, want: dict) -> None:
    import json

    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        raise InputError(
            path, "exists but has no readable meta.json; remove it or choose another output directory"
        ) from None
    if meta.get("source") != SOURCE:
        raise InputError(path, f"exists and is not a procedural room (source {meta.get('source')!r})")
    have = {k: meta.get(k) for k in want}
    if have != want:
        diff = ", ".join(f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k])
        raise InputError(
            path, f"exists with other generator parameters ({diff}); remove it or choose another output directory"
        )

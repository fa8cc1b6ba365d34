"""Procedural rooms written in ScanNet v2's release layout: an OFFLINE STAND-IN for a ScanNet download.

`geopurify synth --format scannet-raw` writes, per room (geopurify.standins.rooms), what a ScanNet v2
download holds for a scan, so the whole recipe (`geopurify prepare scannet` onwards) can be rehearsed
on real formats at real scale before the download finishes:

    DIR/scans/<scene>/<scene>.sens                          SensorData v4 (geopurify.data.sens.write_sens)
    DIR/scans/<scene>/<scene>_vh_clean_2.ply                mesh: x y z red green blue alpha + faces
    DIR/scans/<scene>/<scene>_vh_clean_2.labels.ply         the same + ushort `label` (NYU40)
    DIR/scans/<scene>/<scene>.aggregation.json              segGroups: objectId, raw category label, segments
    DIR/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json segIndices, one per vertex
    DIR/scans/<scene>/<scene>.txt                           axisAlignment, image sizes, intrinsics, counts
    DIR/scannetv2_train.txt, DIR/scannetv2_val.txt          the scenes split (at least one in each from 2 scenes)
    DIR/SYNTHETIC_STAND-IN.json                             what wrote the directory, with its parameters

Scenes are named scene9000_00, scene9001_00, ... (ScanNet's own ids stop at 0806, so the names never
clash with real scans). The mesh is `mesh.room_mesh`; everything the scan stores is in its
ORIGINAL frame, the room frame moved by the inverse of a seeded axis alignment A (a rotation about
z by 10..80 degrees plus k x 90, and a translation), and `<scene>.txt` carries A as `axisAlignment`,
so the alignment step of `prepare` really matters. `sceneType` says the scan is a synthetic
stand-in; `prepare scannet` carries that into the prepared scene's meta.json `source`.

Frames follow a smooth hand-held loop around the room (walking, panning, pitching, a little
shake), about 1.5 m above the floor, at ScanNet's two cameras, which share a centre:
- depth 640 x 480 (fx = fy = 577.87), uint16 millimetres (depth_shift 1000), zlib-compressed;
- colour 1296 x 968 (fx = fy = 1170.19), JPEG. Colour is shaded by ray casting at the depth
  camera's pixels (`Room.render`, with its sensor noise) and resampled (bilinear) to the colour
  camera through the exact pixel mapping between the two co-located pinhole cameras; it therefore
  carries depth-resolution detail. This keeps a real-scale scan at one ray cast per frame.
A few frames per scan (bursts of 1-3) carry a camera_to_world of -inf, as ScanNet marks lost
tracking; their images are still stored. Everything is a function of (seed, scene index).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.data.cameras import EYE_HEIGHT, intrinsic_matrix, look_at
from geopurify.errors import InputError
from geopurify.standins.rooms.export import scene_seed
from geopurify.standins.rooms.layout import Room, camera_free, room_layout

log = logging.getLogger(__name__)

SCENE_TYPE = "synthetic stand-in: geopurify procedural room"  # <scene>.txt sceneType (prepare reads it)
MARKER = "SYNTHETIC_STAND-IN.json"
DEPTH_HW, COLOR_HW = (480, 640), (968, 1296)
K_DEPTH = intrinsic_matrix(DEPTH_HW)  # fx = fy = 577.87, principal point at the image centre
K_COLOR = intrinsic_matrix(COLOR_HW, fx=1170.187988)  # ScanNet's colour focal length (scene0000_00)
DEPTH_SHIFT = 1000.0
JPEG_QUALITY = 90
DEFAULT_FRAMES = 300
DEFAULT_VERTICES = 120_000
FIRST_SCENE_ID = 9000
SENSOR_NAME = "StructureSensor (geopurify synthetic stand-in)"
_SCANNET_ALIASES = {"sofa": "couch"}  # object names whose common ScanNet raw category differs


# ------------------------------------------------------------------------------- shared by formats


def check_marker(out_dir: Path, params: dict) -> None:
    """Write DIR/SYNTHETIC_STAND-IN.json, or check that the one there has the same parameters
    (so a re-run resumes a directory instead of mixing two data sets)."""
    from geopurify.io import write_json

    path = out_dir / MARKER
    if path.is_file():
        try:
            have = json.loads(path.read_text()).get("parameters")
        except (OSError, ValueError, AttributeError):
            raise InputError(path, "unreadable; remove it or choose another output directory") from None
        if have != params:
            raise InputError(
                path,
                f"the directory was written with other parameters ({have} != {params}); "
                "remove it or choose another output directory",
            )
        return
    if out_dir.is_dir() and any(p.name != MARKER for p in out_dir.iterdir()):
        raise InputError(out_dir, "is not empty and holds no synthetic stand-in data set; choose an empty directory")
    write_json(
        path,
        {
            "note": "SYNTHETIC STAND-IN data: procedural scenes written by `geopurify synth` in a "
            "dataset's release layout; not real scans",
            "parameters": params,
        },
    )


def write_splits(out_dir: Path, names: list[str], pattern: str, splits: tuple[str, ...], seed: int) -> dict:
    """Split `names` into `splits` (pattern.format(split) files in out_dir, one name per line): a
    seeded shuffle, one name per split in order (train first) while names last, then the later
    splits filled up to about 15 % each (train / val / test) or 20 % (train / val), the rest train.
    A split left empty gets no file (an earlier one is removed)."""
    from geopurify.io import write_text

    n = len(names)
    order = [names[i] for i in np.random.default_rng([int(seed), 99]).permutation(n)]
    share = {2: 0.2, 3: 0.15}[len(splits)]
    sizes = [1 if k < n else 0 for k in range(len(splits))]
    for k in range(1, len(splits)):
        sizes[k] += min(max(0, round(share * n) - 1), n - sum(sizes))
    sizes[0] += n - sum(sizes)
    out, start = {}, 0
    for split, size in zip(splits, sizes):
        path = out_dir / pattern.format(split)
        part = sorted(order[start : start + size])
        start += size
        if part:
            write_text(path, "".join(name + "\n" for name in part))
            out[split] = part
        else:
            path.unlink(missing_ok=True)
            log.warning("%s not written: %d scene(s) are too few for every split", path.name, n)
    return out


# ------------------------------------------------------------------------------------ geometry


def axis_alignment(rng: np.random.Generator) -> np.ndarray:
    """A ScanNet-like axisAlignment (original -> aligned): rotation about z (never a multiple of 90
    degrees: 10..80 plus k x 90) and a translation of a few metres; rounded to the 6 decimals of
    `<scene>.txt`, so the matrix written is the one used."""
    phi = np.deg2rad(rng.uniform(10.0, 80.0) + 90.0 * rng.integers(4))
    c, s = np.cos(phi), np.sin(phi)
    A = np.array(
        [[c, -s, 0, rng.uniform(-5, 5)], [s, c, 0, rng.uniform(-5, 5)], [0, 0, 1, rng.uniform(-0.1, 0.1)], [0, 0, 0, 1]]
    )
    return np.round(A, 6)


def _smooth_circular(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Gaussian smoothing of a closed-loop sequence (axis 0), kernel truncated at +-radius."""
    if radius < 1 or len(x) < 3:
        return x
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    return sum(w * np.roll(x, -d, axis=0) for w, d in zip(k, range(-radius, radius + 1)))


def handheld_trajectory(room: Room, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses (room frame, OpenCV axes) of a hand-held scan: one smooth
    loop around the room centre at about eye height, looking across the room, with low-frequency
    walking, panning, pitching and rolling plus a little high-frequency shake. Where a camera would
    come within 0.35 m of furniture or walls, the loop is pulled towards the centre (smoothly)."""
    size = room.size
    s = np.arange(n) / max(n, 1)
    ph = rng.uniform(0, 2 * np.pi, 8)
    sense = 1.0 if rng.random() < 0.5 else -1.0
    theta = rng.uniform(0, 2 * np.pi) + sense * 2 * np.pi * s + 0.25 * np.sin(4 * np.pi * s + ph[0])
    radial = 1.0 + 0.12 * np.sin(6 * np.pi * s + ph[1])
    ring = np.stack([np.cos(theta), np.sin(theta)], 1) * (0.3 * size[:2]) * radial[:, None]
    eye_z = min(EYE_HEIGHT, float(size[2]) - 0.6)
    z = eye_z + 0.08 * np.sin(4 * np.pi * s + ph[2]) + 0.03 * np.sin(10 * np.pi * s + ph[3])
    centre = size[:2] / 2

    def eye(k: int, scale: float) -> np.ndarray:
        return np.array([*(centre + scale * ring[k]), z[k]])

    scales = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
    need = np.array([next((c for c in scales if camera_free(room, eye(k, c))), 0.0) for k in range(n)])
    w = max(2, n // 40)
    need = np.min([np.roll(need, d) for d in range(-w, w + 1)], axis=0)  # then smoothing stays below it
    scale = _smooth_circular(need, w / 2, w)
    shake = _smooth_circular(rng.standard_normal((n, 6)), 1.5, 3) * [0.004, 0.004, 0.004, 0.006, 0.006, 0.006]
    pan = 0.45 * np.sin(6 * np.pi * s + ph[4]) + 0.15 * np.sin(14 * np.pi * s + ph[5])
    yaw = theta + np.pi + pan + shake[:, 3]
    pitch = np.deg2rad(-20.0 + 9.0 * np.sin(8 * np.pi * s + ph[6])) + shake[:, 4]
    roll = np.deg2rad(2.0 * np.sin(10 * np.pi * s + ph[7])) + shake[:, 5]
    poses = np.empty((n, 4, 4))
    for k in range(n):
        e = eye(k, scale[k]) + shake[k, :3]
        fwd = np.array([np.cos(pitch[k]) * np.cos(yaw[k]), np.cos(pitch[k]) * np.sin(yaw[k]), np.sin(pitch[k])])
        poses[k] = look_at(e, e + fwd, roll=roll[k])
    return poses


def lost_tracking(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted frame indices whose pose a scan stores as -inf: one burst of 1-3 frames (at most a
    tenth of the scan), two from 100 frames on; never frame 0, and none in scans of fewer than 3 frames."""
    if n < 3:
        return np.zeros(0, np.int64)
    bad = set()
    for _ in range(1 if n < 100 else 2):
        length = min(int(rng.integers(1, 4)), max(1, n // 10))
        start = int(rng.integers(1, max(2, n - length)))
        bad.update(range(start, min(start + length, n)))
    return np.array(sorted(bad), np.int64)


def color_from_depth_view(rgb: np.ndarray) -> np.ndarray:
    """A colour image shaded at the depth camera's pixels (DEPTH_HW) -> the colour camera's image
    (COLOR_HW): bilinear resampling through the exact pixel map of the two co-located cameras,
    u_depth = cx_d + fx_d / fx_c * (u_colour - cx_c) (pixel centres at integer coordinates)."""
    from PIL import Image

    sx, sy = K_DEPTH[0, 0] / K_COLOR[0, 0], K_DEPTH[1, 1] / K_COLOR[1, 1]
    x0 = K_DEPTH[0, 2] + 0.5 - sx * (K_COLOR[0, 2] + 0.5)  # PIL's box is in pixel-edge coordinates
    y0 = K_DEPTH[1, 2] + 0.5 - sy * (K_COLOR[1, 2] + 0.5)
    h, w = DEPTH_HW
    box = (max(x0, 0.0), max(y0, 0.0), min(x0 + sx * COLOR_HW[1], w), min(y0 + sy * COLOR_HW[0], h))
    img = Image.fromarray(np.ascontiguousarray(rgb)).resize((COLOR_HW[1], COLOR_HW[0]), Image.BILINEAR, box=box)
    return np.asarray(img)


# ------------------------------------------------------------------------------------ one scan


def scannet_raw_category(name: str) -> str:
    """The ScanNet raw category (a `raw_category` of scannetv2-labels.combined.tsv) of a procedural object."""
    from geopurify.data.labels import scannet_raw_category_ids

    raw = _SCANNET_ALIASES.get(name, name)
    if raw not in scannet_raw_category_ids():
        raise ValueError(f"procedural object {name!r} has no ScanNet raw category")
    return raw


def _scene_txt(A: np.ndarray, n_frames: int) -> str:
    f6 = lambda m: " ".join(f"{v:.6f}" for v in np.asarray(m).ravel())  # noqa: E731
    keys = {
        "axisAlignment": f6(A),
        "colorHeight": COLOR_HW[0],
        "colorToDepthExtrinsics": f6(np.eye(4)),
        "colorWidth": COLOR_HW[1],
        "depthHeight": DEPTH_HW[0],
        "depthWidth": DEPTH_HW[1],
        "fx_color": f"{K_COLOR[0, 0]:.6f}",
        "fx_depth": f"{K_DEPTH[0, 0]:.6f}",
        "fy_color": f"{K_COLOR[1, 1]:.6f}",
        "fy_depth": f"{K_DEPTH[1, 1]:.6f}",
        "mx_color": f"{K_COLOR[0, 2]:.6f}",
        "mx_depth": f"{K_DEPTH[0, 2]:.6f}",
        "my_color": f"{K_COLOR[1, 2]:.6f}",
        "my_depth": f"{K_DEPTH[1, 2]:.6f}",
        "numColorFrames": n_frames,
        "numDepthFrames": n_frames,
        "numIMUmeasurements": 0,
        "sceneType": SCENE_TYPE,
    }
    return "".join(f"{k} = {v}\n" for k, v in keys.items())


def _write_mesh_files(scan: Path, name: str, room: Room, mesh, A_inv: np.ndarray) -> None:
    """vh_clean_2.ply, .labels.ply, segs.json and aggregation.json of a scan (vertices in the original frame)."""
    from geopurify.data.ply import write_mesh_ply
    from geopurify.io import write_text

    xyz = (mesh.xyz @ A_inv[:3, :3].T + A_inv[:3, 3]).astype(np.float32)
    vert = {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "red": mesh.rgb[:, 0],
        "green": mesh.rgb[:, 1],
        "blue": mesh.rgb[:, 2],
        "alpha": np.full(len(xyz), 255, np.uint8),
    }
    write_mesh_ply(scan / f"{name}_vh_clean_2.ply", vert, mesh.faces, comment="geopurify synthetic stand-in")
    write_mesh_ply(
        scan / f"{name}_vh_clean_2.labels.ply",
        {**vert, "label": mesh.labels.astype(np.uint16)},
        mesh.faces,
        comment="geopurify synthetic stand-in",
    )
    segs_file = f"{name}_vh_clean_2.0.010000.segs.json"
    write_text(
        scan / segs_file,
        json.dumps(
            {
                "params": {
                    "generator": "geopurify synthetic stand-in: square patches of one surface",
                    "patchSize": 0.4,
                },
                "sceneId": name,
                "segIndices": mesh.segments.tolist(),
            }
        ),
    )
    by_name = {o["instance"]: o["name"] for o in room.objects}
    groups = []
    for inst in np.unique(mesh.instances):
        segs = np.unique(mesh.segments[mesh.instances == inst])
        groups.append(
            {
                "id": int(inst) - 1,
                "objectId": int(inst) - 1,
                "segments": segs.tolist(),
                "label": scannet_raw_category(by_name[int(inst)]),
            }
        )
    write_text(
        scan / f"{name}.aggregation.json",
        json.dumps(
            {
                "sceneId": f"scannet.{name}",
                "appId": "geopurify.synth (synthetic stand-in)",
                "segGroups": groups,
                "segmentsFile": f"scannet.{segs_file}",
            }
        ),
    )


def _frames(room: Room, poses_orig: np.ndarray, progress: bool):
    """SensFrame per pose: depth and colour rendered from room.poses, pose as given (-inf kept)."""
    from geopurify.data.images import depth_to_uint16
    from geopurify.data.sens import SensFrame, encode_color, encode_depth

    for i in tqdm(range(room.n_frames), desc=f"frames {room.name}", unit="frame", disable=not progress, leave=False):
        view = room.render(i)
        yield SensFrame(
            index=i,
            camera_to_world=poses_orig[i],
            timestamp_color=33_333 * i,
            timestamp_depth=33_333 * i,
            color_data=encode_color(color_from_depth_view(view.color), "jpeg", JPEG_QUALITY),
            depth_data=encode_depth(depth_to_uint16(view.depth, DEPTH_SHIFT), level=1),
        )


def write_scannet_scan(
    scan: str | Path,
    seed: int,
    n_vertices: int = DEFAULT_VERTICES,
    n_frames: int = DEFAULT_FRAMES,
    name: str | None = None,
    progress: bool = False,
) -> dict:
    """Write procedural room `seed` as the ScanNet scan `name` (default: the directory's name, which
    must look like scene####_##) into directory `scan`; returns a summary (counts, lost-tracking
    frames, seconds)."""
    from geopurify.data.sens import write_sens
    from geopurify.io import write_text
    from geopurify.standins.rooms.mesh import room_mesh

    t0 = time.perf_counter()
    scan = Path(scan)
    name = name or scan.name
    room, _ = room_layout(seed, image_hw=DEPTH_HW, name=name)
    rng = np.random.default_rng([int(seed), 2])
    A = axis_alignment(rng)
    A_inv = np.linalg.inv(A)
    room.poses = handheld_trajectory(room, n_frames, rng)
    room.intrinsic = K_DEPTH.copy()
    lost = lost_tracking(n_frames, rng)
    poses_orig = A_inv @ room.poses
    poses_orig[lost] = -np.inf
    mesh = room_mesh(room, n_vertices)
    _write_mesh_files(scan, name, room, mesh, A_inv)
    write_text(scan / f"{name}.txt", _scene_txt(A, n_frames))
    write_sens(
        scan / f"{name}.sens",
        _frames(room, poses_orig, progress),
        intrinsic_color=K_COLOR,
        intrinsic_depth=K_DEPTH,
        color_width=COLOR_HW[1],
        color_height=COLOR_HW[0],
        depth_width=DEPTH_HW[1],
        depth_height=DEPTH_HW[0],
        depth_shift=DEPTH_SHIFT,
        sensor_name=SENSOR_NAME,
    )
    return {
        "scene": name,
        "room_type": room.room_type,
        "n_vertices": mesh.n_vertices,
        "n_faces": int(len(mesh.faces)),
        "n_frames": n_frames,
        "lost_tracking": lost.tolist(),
        "seconds": time.perf_counter() - t0,
    }


def synthesize_scannet_raw(
    out_dir: str | Path,
    n_scenes: int,
    seed: int,
    n_vertices: int = DEFAULT_VERTICES,
    n_frames: int = DEFAULT_FRAMES,
    progress: bool = True,
) -> list[Path]:
    """Write `n_scenes` procedural rooms as ScanNet v2 scans under out_dir/scans/ plus the split lists
    (see the module docstring). Scene i depends only on (seed, i); finished scans are kept, so a
    killed run resumes (each scan is staged and renamed into place when complete)."""
    from geopurify.data.prepare import staged_dir

    out_dir = Path(out_dir)
    if not 1 <= n_scenes <= 10_000 - FIRST_SCENE_ID:
        raise InputError(None, f"number of scenes must be in 1..{10_000 - FIRST_SCENE_ID}, got {n_scenes}")
    if n_frames < 1 or n_vertices < 1:
        raise InputError(None, f"need frames >= 1 and a vertex budget >= 1, got {n_frames} / {n_vertices}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_marker(
        out_dir, {"format": "scannet-raw", "seed": int(seed), "n_vertices": int(n_vertices), "n_frames": int(n_frames)}
    )
    names = [f"scene{FIRST_SCENE_ID + i:04d}_00" for i in range(n_scenes)]
    paths = []
    for i, name in enumerate(
        tqdm(names, desc="ScanNet-format rooms (synthetic stand-in)", unit="scene", disable=not progress)
    ):
        final = out_dir / "scans" / name
        if not final.is_dir():
            with staged_dir(final) as tmp:
                info = write_scannet_scan(tmp, scene_seed(seed, i), n_vertices, n_frames, name, progress)
            log.info(
                "%s (%s): %d vertices, %d frames (%d lost tracking) in %.1fs",
                name,
                info["room_type"],
                info["n_vertices"],
                n_frames,
                len(info["lost_tracking"]),
                info["seconds"],
            )
        paths.append(final)
    write_splits(out_dir, names, "scannetv2_{}.txt", ("train", "val"), seed)
    return paths

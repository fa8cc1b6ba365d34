"""Procedural houses written in Matterport3D's release layout: an OFFLINE STAND-IN for a download.

`geopurify synth --format matterport-raw` writes, per house, what `geopurify prepare matterport`
reads from a Matterport3D download (layout and conventions from Matterport's data_organization.md
and a real `.conf`; see docs/real_data.md):

    DIR/v1/scans/<house>/undistorted_camera_parameters/<house>.conf
    DIR/v1/scans/<house>/undistorted_color_images/<pano>_i<cam>_<yaw>.jpg    1280 x 1024 (or image_hw)
    DIR/v1/scans/<house>/undistorted_depth_images/<pano>_d<cam>_<yaw>.png    uint16, 0.25 mm units (4000 / m)
    DIR/v1/scans/<house>/region_segmentations/region<k>.ply (+ .fsegs.json, .semseg.json)
    DIR/v1/scans/<house>/house_segmentations/<house>.ply
    DIR/matterport_{train,val,test}.txt, DIR/SYNTHETIC_STAND-IN.json

A house is `rooms` procedural rooms (geopurify.standins.rooms) side by side, each one region, in a
house frame moved by a seeded rotation about z and translation. Region meshes are
`mesh.room_mesh` with vertex x y z nx ny nz tx ty red green blue and per-face material_id
(over-segmentation patch), segment_id (object instance) and category_id (row `index` of
Matterport's category_mapping.tsv: the object's own raw category when its nyu40id matches the
room's NYU40 label, else the most frequent category of that NYU40 class). The house PLY is the
regions together. (The `.house` text file is not written; prepare does not read it.)

Cameras: tripod panoramas at free spots of each room (about one per 8 m^2 of floor, 1..4, or
`panoramas`), each 18 images as the Matterport Pro takes them: cameras 0, 1, 2 tilted up 42
degrees, level and down 42 degrees (as in a real .conf), yaw index k turning -60 degrees each,
per-camera intrinsics near fx 1076, cx 632, cy 510 (at 1280 x 1024; scaled with a smaller
`image_hw`, which tests use to render less). The .conf stores camera-to-world in
Matterport's canonical camera axes (looking down -z, y up): pose_cv @ diag(1, -1, -1, 1). Depth and
colour share one ray cast per image (`Room.render`, with its sensor noise). The .conf starts with a
comment naming the data a synthetic stand-in; `prepare matterport` carries it into meta.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.data.cameras import look_at
from geopurify.data.matterport import DEPTH_SCALE, MP_TO_CV
from geopurify.errors import InputError
from geopurify.standins.rooms.export import scene_seed
from geopurify.standins.rooms.layout import Room, camera_free, room_layout
from geopurify.standins.rooms.scannet_raw import DEFAULT_VERTICES, check_marker, write_splits

log = logging.getLogger(__name__)

STAND_IN = "synthetic stand-in: geopurify procedural house"  # the .conf's first comment (prepare reads it)
IMAGE_HW = (1024, 1280)  # (height, width) of Matterport3D's undistorted images: the default
TILT_DEG = (42.0, 0.0, -42.0)  # cameras 0, 1, 2
YAW_STEP_DEG = -60.0
DEFAULT_ROOMS = 3
WALL_GAP = 0.2  # metres between neighbouring rooms
_MP_ALIASES = {"kitchen cabinets": "kitchen cabinet"}


def mp_category(name: str, nyu40: int) -> int:
    """Matterport category index of a procedural object (see the module docstring)."""
    from geopurify.data.labels import matterport_categories

    index, nyu, _, raw = matterport_categories()
    want = _MP_ALIASES.get(name, name)
    own = [i for i, r, n in zip(index, raw, nyu) if r == want and n == nyu40]
    if own:
        return int(own[0])
    same_class = index[nyu == nyu40]
    if not len(same_class):
        raise ValueError(f"no Matterport category has nyu40id {nyu40} ({name!r})")
    return int(same_class.min())


def house_rooms(seed: int, n_rooms: int, image_hw: tuple[int, int] = IMAGE_HW) -> tuple[list[Room], list[np.ndarray]]:
    """The rooms of house `seed` and each room's room -> house 4x4 transform (rooms in a row along
    x, WALL_GAP apart, the whole row turned about z and moved)."""
    rooms = [room_layout(scene_seed(seed, k), image_hw=image_hw, name=f"region{k}")[0] for k in range(n_rooms)]
    rng = np.random.default_rng([int(seed), 3])
    psi = rng.uniform(0, 2 * np.pi)
    house = np.eye(4)
    house[:2, :2] = [[np.cos(psi), -np.sin(psi)], [np.sin(psi), np.cos(psi)]]
    house[:3, 3] = [rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-1, 1)]
    transforms, x = [], 0.0
    for r in rooms:
        shift = np.eye(4)
        shift[0, 3] = x
        transforms.append(house @ shift)
        x += float(r.size[0]) + WALL_GAP
    return rooms, transforms


def panorama_centres(room: Room, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """(P, 3) tripod camera centres (room frame) at free spots, spread out (farthest-point order
    from the freest spot near the centre); P = `n` or about one per 8 m^2 of floor (1..4)."""
    if n is None:
        n = int(np.clip(round(room.size[0] * room.size[1] / 8.0), 1, 4))
    height = rng.uniform(1.35, 1.55)
    gx, gy = (np.linspace(0.5, s - 0.5, max(2, int(s / 0.25))) for s in room.size[:2])
    cand = np.array([[x, y, height] for x in gx for y in gy])
    free = cand[[camera_free(room, c) for c in cand]]
    if not len(free):
        log.warning("%s: no spot 0.35 m clear of furniture; panoramas stand at the room centre", room.name)
        free = np.array([[*(room.size[:2] / 2), height]])
    picked = [int(np.argmin(np.linalg.norm(free[:, :2] - room.size[:2] / 2, axis=1)))]
    while len(picked) < min(n, len(free)):
        d = np.min(np.linalg.norm(free[:, None, :2] - free[picked][None, :, :2], axis=2), axis=1)
        picked.append(int(np.argmax(d)))
    return free[picked]


def rig_poses(eye: np.ndarray, yaw0: float) -> np.ndarray:
    """(18, 4, 4) OpenCV camera-to-world poses of one panorama, camera index outer, yaw index inner."""
    out = []
    for tilt in np.deg2rad(TILT_DEG):
        for k in range(6):
            yaw = yaw0 + np.deg2rad(YAW_STEP_DEG) * k
            fwd = np.array([np.cos(tilt) * np.cos(yaw), np.cos(tilt) * np.sin(yaw), np.sin(tilt)])
            out.append(look_at(eye, eye + fwd))
    return np.stack(out)


def _intrinsics(rng: np.random.Generator, image_hw: tuple[int, int] = IMAGE_HW) -> list[np.ndarray]:
    """Per-camera undistorted intrinsics of one house, near those of real .conf files (1280 x 1024),
    scaled to `image_hw` (the same draws at any size)."""
    scale = np.diag([image_hw[1] / IMAGE_HW[1], image_hw[0] / IMAGE_HW[0], 1.0])
    out = []
    for _ in range(3):
        fx = rng.uniform(1072.0, 1080.0)
        cx, fy, cy = rng.uniform(626.0, 638.0), fx + rng.uniform(-1, 1), rng.uniform(505.0, 515.0)
        out.append(scale @ np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]))
    return out


def _fmt(values) -> str:
    return " ".join(f"{v:g}" for v in np.asarray(values, np.float64).ravel())


def _region_tables(mesh, room: Room, T: np.ndarray, inst_offset: int) -> tuple[dict, dict]:
    """Vertex and face property tables (PLY properties) of one region in the house frame."""
    cat = np.zeros(max(o["instance"] for o in room.objects) + 1, np.int32)
    for o in room.objects:
        cat[o["instance"]] = mp_category(o["name"], o["label"])
    xyz = mesh.xyz @ T[:3, :3].T + T[:3, 3]
    nrm = mesh.normals @ T[:3, :3].T
    v0 = mesh.faces[:, 0]
    face_inst = mesh.instances[v0]
    zero = np.zeros(len(xyz), np.float32)
    vert = {
        "x": xyz[:, 0].astype(np.float32),
        "y": xyz[:, 1].astype(np.float32),
        "z": xyz[:, 2].astype(np.float32),
        "nx": nrm[:, 0].astype(np.float32),
        "ny": nrm[:, 1].astype(np.float32),
        "nz": nrm[:, 2].astype(np.float32),
        "tx": zero,
        "ty": zero,
        "red": mesh.rgb[:, 0],
        "green": mesh.rgb[:, 1],
        "blue": mesh.rgb[:, 2],
    }
    face = {
        "material_id": mesh.segments[v0].astype(np.int32),
        "segment_id": (face_inst + inst_offset).astype(np.int32),
        "category_id": cat[face_inst],
    }
    return vert, face


def _write_region(d: Path, k: int, mesh, vert: dict, face: dict) -> None:
    """region<k>.ply with its .fsegs.json (face -> segment patch) and .semseg.json (objects)."""
    from geopurify.data.labels import matterport_categories
    from geopurify.data.ply import write_mesh_ply
    from geopurify.io import write_text

    write_mesh_ply(d / f"region{k}.ply", vert, mesh.faces, face, comment="geopurify synthetic stand-in")
    write_text(d / f"region{k}.fsegs.json", json.dumps({"segIndices": face["material_id"].tolist()}))
    index, _, _, raw = matterport_categories()
    raw_of = dict(zip(index.tolist(), raw))
    groups = []
    for j, inst in enumerate(np.unique(face["segment_id"])):
        mine = face["segment_id"] == inst
        groups.append(
            {
                "id": j,
                "objectId": j,
                "label": raw_of[int(face["category_id"][mine][0])],
                "segments": np.unique(face["material_id"][mine]).tolist(),
            }
        )
    write_text(d / f"region{k}.semseg.json", json.dumps({"segGroups": groups}))


def write_house(
    house_dir: str | Path,
    seed: int,
    n_rooms: int = DEFAULT_ROOMS,
    n_vertices: int = DEFAULT_VERTICES,
    panoramas: int | None = None,
    name: str | None = None,
    progress: bool = False,
    image_hw: tuple[int, int] = IMAGE_HW,
) -> dict:
    """Write procedural house `seed` into `house_dir` in Matterport3D's layout (module docstring);
    returns a summary (regions, vertices, images, seconds)."""
    from geopurify.data.images import write_color, write_depth
    from geopurify.data.ply import write_mesh_ply
    from geopurify.io import write_text
    from geopurify.standins.rooms.mesh import room_mesh

    t0 = time.perf_counter()
    house_dir = Path(house_dir)
    name = name or house_dir.name
    rng = np.random.default_rng([int(seed), 4])
    rooms, transforms = house_rooms(seed, n_rooms, image_hw)
    Ks = _intrinsics(rng, image_hw)
    conf = [
        f"# {STAND_IN}",
        "# written by geopurify synth: not Matterport3D data",
        "dataset matterport",
        "n_images",
        "depth_directory undistorted_depth_images",
        "color_directory undistorted_color_images",
        "",
    ]
    regions = house_dir / "region_segmentations"
    all_vert, all_face, all_faces, n_images, n_verts, offset = [], [], [], 0, [], 0
    for k, (room, T) in enumerate(
        tqdm(list(zip(rooms, transforms)), desc=f"regions {name}", unit="region", disable=not progress, leave=False)
    ):
        mesh = room_mesh(room, n_vertices)
        vert, face = _region_tables(mesh, room, T, 1000 * k)
        _write_region(regions, k, mesh, vert, face)
        all_vert.append(vert), all_face.append(face), all_faces.append(mesh.faces + offset)
        offset += mesh.n_vertices
        n_verts.append(mesh.n_vertices)
        centres = panorama_centres(room, panoramas, rng)
        panos = ["".join(rng.choice(list("0123456789abcdef"), 32)) for _ in centres]
        room.poses = np.concatenate([rig_poses(eye, rng.uniform(0, 2 * np.pi)) for eye in centres])
        for i in tqdm(
            range(room.n_frames), desc=f"images {name} region{k}", unit="image", disable=not progress, leave=False
        ):
            pano, (cam, yaw) = panos[i // 18], divmod(i % 18, 6)
            if yaw == 0:  # as in real .conf files: each camera's intrinsics, then its six images
                conf += [f"intrinsics_matrix {_fmt(Ks[cam][0])}  {_fmt(Ks[cam][1])}  {_fmt(Ks[cam][2])}"]
            room.intrinsic = Ks[cam]
            view = room.render(i)
            color, depth = f"{pano}_i{cam}_{yaw}.jpg", f"{pano}_d{cam}_{yaw}.png"
            write_color(house_dir / "undistorted_color_images" / color, view.color)
            write_depth(house_dir / "undistorted_depth_images" / depth, view.depth, DEPTH_SCALE)
            conf.append(f"scan {depth} {color} {_fmt(T @ room.poses[i] @ MP_TO_CV)}")
            if yaw == 5:
                conf.append("")
            n_images += 1
    conf[3] = f"n_images {n_images}"
    write_text(house_dir / "undistorted_camera_parameters" / f"{name}.conf", "\n".join(conf) + "\n")
    write_mesh_ply(
        house_dir / "house_segmentations" / f"{name}.ply",
        {p: np.concatenate([v[p] for v in all_vert]) for p in all_vert[0]},
        np.concatenate(all_faces),
        {p: np.concatenate([f[p] for f in all_face]) for p in all_face[0]},
        comment="geopurify synthetic stand-in",
    )
    return {
        "house": name,
        "regions": n_rooms,
        "n_vertices": n_verts,
        "n_images": n_images,
        "seconds": time.perf_counter() - t0,
    }


def synthesize_matterport_raw(
    out_dir: str | Path,
    n_houses: int,
    seed: int,
    n_rooms: int = DEFAULT_ROOMS,
    n_vertices: int = DEFAULT_VERTICES,
    panoramas: int | None = None,
    progress: bool = True,
    image_hw: tuple[int, int] = IMAGE_HW,
) -> list[Path]:
    """Write `n_houses` procedural houses under out_dir/v1/scans/ (named SYNTH000000, ...) plus the
    house split lists. House i depends only on (seed, i); finished houses are kept (staged, renamed
    into place when complete), so a killed run resumes."""
    from geopurify.data.prepare import staged_dir

    out_dir = Path(out_dir)
    if n_houses < 1 or n_rooms < 1 or n_vertices < 1 or (panoramas is not None and panoramas < 1):
        raise InputError(
            None,
            f"need houses, rooms, a vertex budget and panoramas >= 1, got {n_houses}, {n_rooms}, "
            f"{n_vertices}, {panoramas}",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_marker(
        out_dir,
        {
            "format": "matterport-raw",
            "seed": int(seed),
            "n_rooms": int(n_rooms),
            "n_vertices": int(n_vertices),
            "panoramas": panoramas,
            **({} if tuple(image_hw) == IMAGE_HW else {"image_hw": [int(v) for v in image_hw]}),
        },
    )
    names = [f"SYNTH{i:06d}" for i in range(n_houses)]
    paths = []
    for i, name in enumerate(
        tqdm(names, desc="Matterport-format houses (synthetic stand-in)", unit="house", disable=not progress)
    ):
        final = out_dir / "v1" / "scans" / name
        if not final.is_dir():
            with staged_dir(final) as tmp:
                info = write_house(
                    tmp, scene_seed(seed, i), n_rooms, n_vertices, panoramas, name, progress, tuple(image_hw)
                )
            log.info(
                "%s: %d regions (%s vertices), %d images in %.1fs",
                name,
                n_rooms,
                info["n_vertices"],
                info["n_images"],
                info["seconds"],
            )
        paths.append(final)
    write_splits(out_dir, names, "matterport_{}.txt", ("train", "val", "test"), seed)
    return paths

"""The procedural room (offline stand-in for a ScanNet scan): its layout, points and cameras.

`room_layout(seed)` builds the shell (walls, floor, ceiling), places furniture against the walls or
free-standing without intersections, and sets a light; `make_room(seed, ...)` adds points sampled
on the visible surfaces and a camera orbit; `Room.render(i)` ray-casts frame i on demand. Every
array is a pure function of the seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from geopurify.data.cameras import EYE_HEIGHT, intrinsic_matrix, orbit_poses
from geopurify.errors import InputError
from geopurify.standins.rooms.fixtures import (
    _bathtub_group,
    _door,
    _kitchen_group,
    _picture,
    _refrigerator,
    _toilet,
    _vanity_group,
    _window_group,
)
from geopurify.standins.rooms.furniture import (
    FILLERS,
    _armchair,
    _bed_group,
    _bookshelf,
    _cabinet,
    _desk_group,
    _dining_group,
    _otherfurniture,
    _sofa_group,
    _tv_group,
)
from geopurify.standins.rooms.primitives import (
    _ROOM_TYPE_P,
    CABINET,
    CEILING,
    FABRIC,
    FLOOR,
    FLOORING,
    N_SHELL,
    OTHERFURNITURE,
    PAINT,
    ROOM_TYPES,
    TOWEL,
    VIVID,
    WALL,
    WALL_PAINT,
    _box,
    _jitter,
    _obj,
    _parts_aabb,
    _transform,
)
from geopurify.standins.rooms.render import backproject, render_surfaces, sensor_noise, shade
from geopurify.standins.rooms.surfaces import sample_points

logger = logging.getLogger(__name__)


@dataclass
class RenderedView:
    """One rendered frame: colour uint8 (H, W, 3), depth float32 metres (H, W; 0 = no return),
    NYU40 label image int32 (H, W), instance image int32 (H, W)."""

    color: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    instance: np.ndarray


@dataclass
class Room:
    """A procedural room (offline stand-in for a ScanNet scan): primitives, points, cameras.

    Surfaces are indexed by a surface id: 0..5 the room shell faces, 6 + i primitive i.
    `prim_kind` BOX / CYL; a cylinder is vertical, inscribed in its box `prim_lo`..`prim_hi`.
    """

    name: str
    seed: int
    room_type: str
    size: np.ndarray  # (3,) Lx, Ly, H metres; the room is [0, Lx] x [0, Ly] x [0, H]
    prim_kind: np.ndarray  # (P,) int8
    prim_lo: np.ndarray  # (P, 3) float64
    prim_hi: np.ndarray  # (P, 3) float64
    surf_label: np.ndarray  # (S,) int32 NYU40
    surf_instance: np.ndarray  # (S,) int32
    surf_albedo: np.ndarray  # (S, 3) float64 in 0..1
    objects: list[dict]  # {"instance", "label", "name"} per instance
    xyz: np.ndarray = field(repr=False, default=None)  # (N, 3) float32
    normals: np.ndarray = field(repr=False, default=None)  # (N, 3) float32 (exact, outward)
    rgb: np.ndarray = field(repr=False, default=None)  # (N, 3) uint8
    labels: np.ndarray = field(repr=False, default=None)  # (N,) int32 NYU40
    instances: np.ndarray = field(repr=False, default=None)  # (N,) int32
    poses: np.ndarray = field(repr=False, default=None)  # (F, 4, 4) camera-to-world, OpenCV axes
    intrinsic: np.ndarray = field(repr=False, default=None)  # (3, 3)
    image_hw: tuple[int, int] = (480, 640)
    light: np.ndarray = field(repr=False, default=None)  # (3,) point light position

    @property
    def n_frames(self) -> int:
        return 0 if self.poses is None else int(len(self.poses))

    def render(self, i: int, noise: bool = True) -> RenderedView:
        """Ray-cast frame `i`; with `noise`, add the (seeded, per-frame) depth and colour sensor noise."""
        t, sid, normal = render_surfaces(self, self.poses[i], self.intrinsic, self.image_hw)
        valid = sid >= 0
        color = np.zeros((*t.shape, 3), np.float64)
        if valid.all():
            color = shade(
                self, backproject(self.poses[i], self.intrinsic, t).reshape(-1, 3), normal.reshape(-1, 3), sid.ravel()
            ).reshape(*t.shape, 3)
        elif valid.any():
            color[valid] = shade(self, backproject(self.poses[i], self.intrinsic, t)[valid], normal[valid], sid[valid])
        label = np.where(valid, self.surf_label[np.maximum(sid, 0)], 0).astype(np.int32)
        inst = np.where(valid, self.surf_instance[np.maximum(sid, 0)], 0).astype(np.int32)
        depth = t
        if noise:
            rng = np.random.default_rng([self.seed, int(i), 7])
            depth, color = sensor_noise(depth, color, rng)
        return RenderedView(
            color=np.clip(np.rint(color * 255), 0, 255).astype(np.uint8),
            depth=depth.astype(np.float32),
            label=label,
            instance=inst,
        )


class _Placer:
    """Places groups of objects in the room without intersections (part AABBs + keep-out boxes)."""

    def __init__(self, size: np.ndarray, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.boxes: list[tuple[np.ndarray, np.ndarray]] = []
        self.objects: list[dict] = []

    def _fits(self, objs: list[dict], keepout=None, margin: float = 0.03) -> bool:
        lo, hi = _parts_aabb(objs)
        if (lo < -1e-9).any() or (hi > self.size + 1e-9).any():
            return False
        cand = [(p[1], p[2]) for o in objs for p in o["parts"]] + ([keepout] if keepout is not None else [])
        for clo, chi in cand:
            for blo, bhi in self.boxes:
                if (clo < bhi + margin).all() and (blo < chi + margin).all():
                    return False
        return True

    def _commit(self, objs: list[dict], keepout=None) -> list[dict]:
        self.boxes += [(p[1], p[2]) for o in objs for p in o["parts"]]
        if keepout is not None:
            self.boxes.append(keepout)
        self.objects += objs
        return objs

    def wall(
        self,
        objs: list[dict],
        keepout=None,
        corner: bool = False,
        walls=None,
        tries: int = 40,
        end_margin: float = 0.05,
    ) -> list[dict] | None:
        """Back of the group against a wall (random wall and position); None when nothing fits."""
        lo, hi = _parts_aabb(objs)
        xc = (lo[0] + hi[0]) / 2
        objs = _transform(objs, 0, (-xc, 0.0))
        if keepout is not None:
            keepout = (np.array(keepout[0], np.float64) - [xc, 0, 0], np.array(keepout[1], np.float64) - [xc, 0, 0])
        half = (hi[0] - lo[0]) / 2
        Lx, Ly = self.size[:2]
        for _ in range(tries):
            k = int(self.rng.integers(4)) if walls is None else int(self.rng.choice(walls))
            L = Lx if k in (0, 2) else Ly
            if L < 2 * (half + end_margin):
                continue
            if corner:
                s = half if self.rng.random() < 0.5 else L - half
            else:
                s = self.rng.uniform(half + end_margin, L - half - end_margin)
            anchor = [(s, 0.0), (Lx, s), (s, Ly), (0.0, s)][k]
            placed = _transform(objs, k, anchor)
            ko = None
            if keepout is not None:
                ko_obj = _transform([_obj(0, "", [_box(keepout[0], keepout[1], None)])], k, anchor)[0]["parts"][0]
                ko = (ko_obj[1], ko_obj[2])
            if self._fits(placed, ko):
                return self._commit(placed, ko)
        return None

    def free(self, objs: list[dict], tries: int = 30) -> list[dict] | None:
        """A free-standing group near the room centre (random quarter turn and offset)."""
        lo, hi = _parts_aabb(objs)
        objs = _transform(objs, 0, (-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2))
        for _ in range(tries):
            k = int(self.rng.integers(2))
            c = self.size[:2] / 2 + self.rng.uniform(-0.25, 0.25, 2) * self.size[:2] / 2
            placed = _transform(objs, k, tuple(c))
            if self._fits(placed, margin=0.25):
                return self._commit(placed)
        return None


def _furnish(rng: np.random.Generator, size: np.ndarray, room_type: str) -> list[dict]:
    """Objects (world frame) of one room: door, windows, type-specific furniture, pictures."""
    H = float(size[2])
    pl = _Placer(size, rng)
    door, keep = _door(rng)
    pl.wall(door, keepout=keep, end_margin=0.15, tries=100)
    n_win = int(rng.integers(0, 2)) if room_type == "bathroom" else int(rng.integers(1, 3))
    for _ in range(n_win):
        pl.wall(_window_group(rng, H, curtains=room_type != "bathroom" and rng.random() < 0.6), end_margin=0.4)
    some = lambda p: rng.random() < p  # noqa: E731

    if room_type == "bedroom":
        pl.wall(_bed_group(rng), tries=80)
        if some(0.6):
            wardrobe = some(0.4)
            pl.wall(
                [
                    _cabinet(
                        rng,
                        tall=True,
                        name="wardrobe" if wardrobe else "cabinet",
                        label=OTHERFURNITURE if wardrobe else CABINET,
                    )
                ]
            )
        if some(0.5):
            pl.wall(_desk_group(rng))
        if some(0.4):
            pl.wall(_bookshelf(rng))
        if some(0.4):
            pl.wall([_cabinet(rng, name="dresser", label=17)])
        if some(0.3):
            pl.wall([_otherfurniture(rng)])
    elif room_type == "living room":
        pl.wall(_sofa_group(rng), tries=80)
        if some(0.6):
            pl.wall(_tv_group(rng))
        for _ in range(int(rng.integers(0, 3))):
            pl.wall([_armchair(rng)])
        if some(0.6):
            pl.wall(_bookshelf(rng))
        if some(0.4):
            pl.wall([_cabinet(rng)])
        if some(0.3):
            pl.free(_dining_group(rng))
        if some(0.4):
            pl.wall([_otherfurniture(rng)])
    elif room_type == "office":
        for _ in range(int(rng.integers(1, 4))):
            pl.wall(_desk_group(rng))
        for _ in range(int(rng.integers(0, 3))):
            pl.wall(_bookshelf(rng))
        for _ in range(int(rng.integers(0, 3))):
            pl.wall([_cabinet(rng, tall=some(0.5), name="file cabinet" if some(0.5) else "cabinet")])
        if some(0.4):
            pl.free(_dining_group(rng))
        if some(0.4):
            pl.wall([_otherfurniture(rng)])
    elif room_type == "kitchen":
        pl.wall(_kitchen_group(rng, float(max(size[0], size[1]) - 0.3)), tries=80)
        pl.wall([_refrigerator(rng)], tries=60)
        if some(0.7):
            pl.free(_dining_group(rng))
        if some(0.4):
            pl.wall([_cabinet(rng, tall=some(0.5))])
        if some(0.6):
            pl.wall([_otherfurniture(rng)])
    else:  # bathroom
        pl.wall(_bathtub_group(rng, H), corner=True, tries=60)
        pl.wall([_toilet(rng)], tries=60)
        pl.wall(_vanity_group(rng), tries=60)
        if some(0.5):
            pl.wall([_cabinet(rng)])
        if some(0.5):
            pl.wall([_obj(TOWEL, "towel", [_box((-0.25, 0, 0.9), (0.25, 0.04, 1.5), _jitter(rng, FABRIC + VIVID))])])
    fillers = FILLERS[room_type]
    for _ in range(int(rng.integers(1, 3)) if room_type == "bathroom" else int(rng.integers(2, 6))):
        pl.wall(fillers[int(rng.integers(len(fillers)))](rng), tries=20)
    for _ in range(int(rng.integers(0, 4)) if room_type != "bathroom" else int(rng.integers(0, 2))):
        pl.wall([_picture(rng, H)], end_margin=0.2)
    return pl.objects


def camera_free(room: Room, eye: np.ndarray, clearance: float = 0.35) -> bool:
    """True when `eye` is inside the room, `clearance` from walls, floor, ceiling and every primitive."""
    if ((eye < clearance) | (eye > room.size - clearance)).any():
        return False
    gap = np.maximum(np.maximum(room.prim_lo - eye, eye - room.prim_hi), 0.0)
    return bool((np.linalg.norm(gap, axis=1) >= clearance).all()) if len(gap) else True


def room_layout(
    seed: int, image_hw: tuple[int, int] = (480, 640), room_type: str | None = None, name: str | None = None
) -> tuple[Room, np.random.Generator]:
    """The layout of procedural room `seed` (shell, furniture, light; no points, no cameras) and the
    generator that `make_room` goes on drawing from. The release-format writers
    (geopurify.standins.rooms.scannet_raw, matterport_raw) start from here."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(None, f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0])
    room_type = room_type or str(rng.choice(ROOM_TYPES, p=_ROOM_TYPE_P))
    if room_type not in ROOM_TYPES:
        raise InputError(None, f"room type must be one of {ROOM_TYPES}, got {room_type!r}")
    if room_type == "bathroom":
        size = np.array([rng.uniform(2.6, 3.6), rng.uniform(2.4, 3.2), rng.uniform(2.4, 2.7)])
    else:
        size = np.array([rng.uniform(3.8, 7.0), rng.uniform(3.4, 6.0), rng.uniform(2.5, 2.9)])
    objects = _furnish(rng, size, room_type)

    # surface table: 6 shell faces (4 walls, floor, ceiling; one instance each), then primitives
    wall_col = _jitter(rng, WALL_PAINT, 0.03)
    labels = [WALL] * 4 + [FLOOR, CEILING]
    insts = [1, 2, 3, 4, 5, 6]
    albedo = [wall_col] * 4 + [_jitter(rng, FLOORING, 0.04), _jitter(rng, PAINT[:3], 0.02)]
    kind, lo, hi, meta = [], [], [], []
    meta += [{"instance": j + 1, "label": WALL, "name": "wall"} for j in range(4)]
    meta += [{"instance": 5, "label": FLOOR, "name": "floor"}, {"instance": 6, "label": CEILING, "name": "ceiling"}]
    for j, o in enumerate(objects):
        inst = 7 + j
        meta.append({"instance": inst, "label": int(o["label"]), "name": o["name"]})
        for pk, plo, phi, col in o["parts"]:
            kind.append(pk), lo.append(plo), hi.append(phi)
            labels.append(o["label"]), insts.append(inst), albedo.append(col)
    room = Room(
        name=name or f"synth_seed{seed}",
        seed=int(seed),
        room_type=room_type,
        size=size,
        prim_kind=np.array(kind, np.int8),
        prim_lo=np.array(lo, np.float64).reshape(-1, 3),
        prim_hi=np.array(hi, np.float64).reshape(-1, 3),
        surf_label=np.array(labels, np.int32),
        surf_instance=np.array(insts, np.int32),
        surf_albedo=np.array(albedo, np.float64),
        objects=meta,
        image_hw=(int(image_hw[0]), int(image_hw[1])),
    )
    room.light = np.array([size[0] * rng.uniform(0.35, 0.65), size[1] * rng.uniform(0.35, 0.65), size[2] - 0.3])
    return room, rng


def make_room(
    seed: int,
    n_points: int = 100_000,
    n_frames: int = 50,
    image_hw: tuple[int, int] = (480, 640),
    room_type: str | None = None,
    name: str | None = None,
) -> Room:
    """A procedural room (offline stand-in for a ScanNet scan) from `seed`: layout, points, cameras.

    Frames are not rendered here; `Room.render(i)` ray-casts frame i on demand (deterministic).
    """
    if n_points < 1 or n_frames < 0:
        raise InputError(None, f"need n_points >= 1 and n_frames >= 0, got {n_points} / {n_frames}")
    t0 = time.perf_counter()
    room, rng = room_layout(seed, image_hw, room_type, name)
    size = room.size

    xyz, nor, sid = sample_points(room, int(n_points), rng)
    room.xyz, room.normals = xyz.astype(np.float32), nor.astype(np.float32)
    room.rgb = np.clip(np.rint(shade(room, xyz, nor, sid) * 255), 0, 255).astype(np.uint8)
    room.labels, room.instances = room.surf_label[sid], room.surf_instance[sid]

    room.intrinsic = intrinsic_matrix(room.image_hw)
    eye_z = min(EYE_HEIGHT, float(size[2]) - 0.6)
    room.poses = (
        orbit_poses(size[:2] / 2, 0.3 * size[:2], eye_z, int(n_frames), rng, is_free=lambda e: camera_free(room, e))
        if n_frames
        else np.zeros((0, 4, 4))
    )
    logger.debug(
        "procedural room %s (%s, %.1fx%.1fx%.1f m, %d objects, %d primitives) in %.2fs",
        room.name,
        room.room_type,
        *size,
        len(room.objects) - N_SHELL,
        len(room.prim_kind),
        time.perf_counter() - t0,
    )
    return room

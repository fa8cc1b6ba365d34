"""Procedural indoor rooms: the embedded default data set, an OFFLINE STAND-IN for ScanNet.

Real scans cannot be downloaded here, so the default data set is generated: a closed box room
(walls, floor, ceiling; NYU40 ids 1, 2, 22) with a door and windows in the walls and furniture of
the ScanNet-20 classes built from analytic primitives (axis-aligned boxes and vertical
cylinders: a chair is a seat, a back and four legs; a table a top and legs), at plausible sizes,
against the walls or free-standing, never intersecting, chosen at random from a seed. Every
object is one instance with a plausible, varied colour.

From the primitives:
- a point cloud sampled uniformly by area on the visible surfaces (what a mesh's vertices are),
  with rgb (albedo x texture x Lambert shading), NYU40 labels and instance ids;
- a camera trajectory walking around the room centre and looking across it, with ScanNet's
  640 x 480 depth-camera intrinsics (fx ~ 577.9);
- per frame, images by vectorised ray casting against the primitives: exact z-depth, shaded
  colour, NYU40 label image (`Room.render`); then sensor noise (depth-proportional noise and
  0.5% dropped pixels on depth, exposure gain and per-pixel noise on colour).

Everything is a pure function of the seed: the same seed gives byte-identical arrays and images.
`write_room` writes the on-disk scene layout (docs/architecture.md) with
meta.json {"source": "synthetic (procedural room)"}, and the exact surface normals (the side a
camera inside the room sees, as a scan mesh's) as normals.npy with meta.json "normals": "analytic".
The same rooms in ScanNet's and Matterport3D's release layouts (meshes, .sens, annotations):
geopurify.data.synth_mesh / synth_raw / synth_matterport, which start from `room_layout`.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geopurify.data.cameras import EYE_HEIGHT, intrinsic_matrix, orbit_poses
from geopurify.errors import InputError

logger = logging.getLogger(__name__)

SOURCE = "synthetic (procedural room)"
DEPTH_SCALE = 1000.0
BOX, CYL = 0, 1
N_SHELL = 6  # surface ids 0..5: walls x=0, x=Lx, y=0, y=Ly, floor z=0, ceiling z=H; then one per primitive
NEAR = 0.05  # metres: nothing closer to a camera is rendered
EPS = 1e-3  # metres: a surface point this close to (or inside) another solid is hidden

# NYU40 ids used by the generator (ScanNet-20 classes and a few ignored ones for realism)
WALL, FLOOR, CEILING = 1, 2, 22
CABINET, BED, CHAIR, SOFA, TABLE, DOOR, WINDOW, BOOKSHELF, PICTURE, COUNTER = 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
DESK, CURTAIN, PILLOW, MIRROR, BOOKS, REFRIGERATOR, TELEVISION, TOWEL = 14, 16, 18, 19, 23, 24, 25, 27
SHOWER_CURTAIN, NIGHT_STAND, TOILET, SINK, LAMP, BATHTUB, OTHERFURNITURE, OTHERPROP = 28, 32, 33, 34, 35, 36, 39, 40

ROOM_TYPES = ("bedroom", "living room", "office", "kitchen", "bathroom")
_ROOM_TYPE_P = (0.25, 0.25, 0.2, 0.15, 0.15)

# base colours (linear 0..1 albedo); every object jitters its own
WOOD = [(0.55, 0.38, 0.22), (0.68, 0.50, 0.32), (0.40, 0.27, 0.16), (0.78, 0.64, 0.46), (0.30, 0.20, 0.13)]
FABRIC = [(0.45, 0.47, 0.50), (0.25, 0.32, 0.50), (0.30, 0.45, 0.32), (0.55, 0.25, 0.22), (0.72, 0.66, 0.55),
          (0.18, 0.18, 0.20), (0.60, 0.52, 0.70), (0.80, 0.55, 0.30)]
PAINT = [(0.90, 0.90, 0.88), (0.85, 0.86, 0.82), (0.92, 0.92, 0.92), (0.75, 0.78, 0.80), (0.30, 0.30, 0.32)]
METAL = [(0.62, 0.62, 0.64), (0.25, 0.25, 0.27), (0.80, 0.80, 0.82)]
WALL_PAINT = [(0.88, 0.87, 0.82), (0.86, 0.80, 0.70), (0.80, 0.82, 0.84), (0.75, 0.82, 0.88), (0.80, 0.86, 0.76),
              (0.90, 0.86, 0.70)]
FLOORING = [(0.58, 0.42, 0.28), (0.45, 0.45, 0.47), (0.78, 0.74, 0.66), (0.38, 0.26, 0.17), (0.60, 0.58, 0.52)]
CERAMIC = [(0.95, 0.95, 0.95), (0.92, 0.92, 0.88)]
VIVID = [(0.80, 0.20, 0.15), (0.20, 0.40, 0.75), (0.95, 0.75, 0.20), (0.20, 0.60, 0.40), (0.60, 0.30, 0.60),
         (0.95, 0.55, 0.45), (0.15, 0.15, 0.18), (0.90, 0.90, 0.90)]


# ----------------------------------------------------------------------------------------- data

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
            color = shade(self, backproject(self.poses[i], self.intrinsic, t).reshape(-1, 3),
                          normal.reshape(-1, 3), sid.ravel()).reshape(*t.shape, 3)
        elif valid.any():
            color[valid] = shade(self, backproject(self.poses[i], self.intrinsic, t)[valid], normal[valid], sid[valid])
        label = np.where(valid, self.surf_label[np.maximum(sid, 0)], 0).astype(np.int32)
        inst = np.where(valid, self.surf_instance[np.maximum(sid, 0)], 0).astype(np.int32)
        depth = t
        if noise:
            rng = np.random.default_rng([self.seed, int(i), 7])
            depth, color = sensor_noise(depth, color, rng)
        return RenderedView(color=np.clip(np.rint(color * 255), 0, 255).astype(np.uint8),
                            depth=depth.astype(np.float32), label=label, instance=inst)


# ----------------------------------------------------------------------------- layout building

def _jitter(rng: np.random.Generator, palette, amount: float = 0.06) -> tuple:
    """A palette colour with a small per-object brightness and hue jitter."""
    c = np.asarray(palette[rng.integers(len(palette))], np.float64)
    c = c * rng.uniform(1 - amount, 1 + amount) + rng.uniform(-amount / 2, amount / 2, 3)
    return tuple(np.clip(c, 0.02, 0.98))


def _box(lo, hi, col) -> tuple:
    return (BOX, np.array(lo, np.float64), np.array(hi, np.float64), col)


def _cyl(cx, cy, r, z0, z1, col) -> tuple:
    return (CYL, np.array([cx - r, cy - r, z0], np.float64), np.array([cx + r, cy + r, z1], np.float64), col)


def _obj(label: int, name: str, parts: list) -> dict:
    return {"label": label, "name": name, "parts": parts}


def _rotate_parts(parts: list, k: int, t=(0.0, 0.0)) -> list:
    """Rotate parts by k * 90 degrees about z (counter-clockwise), then translate by t (x, y)."""
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    out = []
    for kind, lo, hi, col in parts:
        xs = np.array([lo[0], hi[0], lo[0], hi[0]])
        ys = np.array([lo[1], lo[1], hi[1], hi[1]])
        rx, ry = c * xs - s * ys + t[0], s * xs + c * ys + t[1]
        out.append((kind, np.array([rx.min(), ry.min(), lo[2]]), np.array([rx.max(), ry.max(), hi[2]]), col))
    return out


def _transform(objs: list[dict], k: int, t=(0.0, 0.0)) -> list[dict]:
    return [{**o, "parts": _rotate_parts(o["parts"], k, t)} for o in objs]


def _parts_aabb(objs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.min([p[1] for o in objs for p in o["parts"]], axis=0)
    hi = np.max([p[2] for o in objs for p in o["parts"]], axis=0)
    return lo, hi


# --- furniture builders: local frame, back against a wall at y = 0, facing +y, x centred, z up

def _chair(rng) -> dict:
    w, d = rng.uniform(0.42, 0.52), rng.uniform(0.42, 0.50)
    sh, st, bh = rng.uniform(0.43, 0.48), 0.04, rng.uniform(0.35, 0.50)
    seat = _jitter(rng, FABRIC + WOOD)
    frame = _jitter(rng, WOOD + METAL)
    parts = [_box((-w / 2, 0, sh - st), (w / 2, d, sh), seat), _box((-w / 2, 0, sh), (w / 2, 0.04, sh + bh), seat)]
    if rng.random() < 0.35:  # office chair: pedestal and round base
        r = rng.uniform(0.26, 0.31)
        parts += [_cyl(0, d / 2, 0.03, 0.08, sh - st, frame), _cyl(0, d / 2, r, 0.03, 0.08, frame),
                  _cyl(0, d / 2, 0.06, 0.0, 0.03, frame)]
        return _obj(CHAIR, "office chair", parts)
    lw = 0.035
    for x0 in (-w / 2, w / 2 - lw):
        for y0 in (0.0, d - lw):
            parts.append(_box((x0, y0, 0), (x0 + lw, y0 + lw, sh - st), frame))
    return _obj(CHAIR, "chair", parts)


def _armchair(rng) -> dict:
    w, d, sh = rng.uniform(0.75, 0.9), rng.uniform(0.75, 0.85), rng.uniform(0.40, 0.45)
    col = _jitter(rng, FABRIC)
    a = 0.16
    return _obj(CHAIR, "armchair", [
        _box((-w / 2, 0, 0), (w / 2, d, sh - 0.1), col),
        _box((-w / 2 + a, 0.2, sh - 0.1), (w / 2 - a, d, sh), _jitter(rng, [col], 0.03)),
        _box((-w / 2, 0, sh - 0.1), (w / 2, 0.2, sh + rng.uniform(0.35, 0.5)), col),
        _box((-w / 2, 0.2, sh - 0.1), (-w / 2 + a, d, sh + 0.2), col),
        _box((w / 2 - a, 0.2, sh - 0.1), (w / 2, d, sh + 0.2), col)])


def _table(rng, w, d, h, name="table", centred=True) -> dict:
    """Top + 4 legs (or a round top on a pedestal); centred on the origin or with its back at y = 0."""
    top = _jitter(rng, WOOD + PAINT)
    legc = _jitter(rng, [top] + METAL, 0.03)
    y0 = -d / 2 if centred else 0.0
    if centred and rng.random() < 0.25 and name == "table":  # round table
        r = min(w, d) / 2
        return _obj(TABLE, "round table", [_cyl(0, 0, r, h - 0.04, h, top), _cyl(0, 0, 0.05, 0.03, h - 0.04, legc),
                                           _cyl(0, 0, 0.25, 0.0, 0.03, legc)])
    lw, inset = 0.05, 0.04
    parts = [_box((-w / 2, y0, h - 0.04), (w / 2, y0 + d, h), top)]
    for x in (-w / 2 + inset, w / 2 - inset - lw):
        for y in (y0 + inset, y0 + d - inset - lw):
            parts.append(_box((x, y, 0), (x + lw, y + lw, h - 0.04), legc))
    return _obj(TABLE, name, parts)


def _dining_group(rng) -> list[dict]:
    """A free-standing table (centred on the origin) with chairs around it, facing it."""
    w, d = rng.uniform(1.0, 1.8), rng.uniform(0.75, 1.0)
    objs = [_table(rng, w, d, rng.uniform(0.72, 0.77))]
    gap = rng.uniform(0.05, 0.2)
    n_side = 1 if w < 1.3 else 2
    for side in (+1, -1):
        if rng.random() > 0.85:
            continue
        for i in range(n_side):
            ch = _chair(rng)
            cd = _parts_aabb([ch])[1][1]
            x = ((i + 0.5) / n_side - 0.5) * w + rng.uniform(-0.04, 0.04)
            if side > 0:
                objs += _transform([ch], 2, (x, d / 2 + gap + cd))
            else:
                objs += _transform([ch], 0, (x, -d / 2 - gap - cd))
    if w >= 1.4 and rng.random() < 0.4:
        ch = _chair(rng)
        cd = _parts_aabb([ch])[1][1]
        objs += _transform([ch], 1, (w / 2 + gap + cd, 0.0))
    return objs


def _desk_group(rng) -> list[dict]:
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.75), rng.uniform(0.72, 0.76)
    top = _jitter(rng, WOOD + PAINT)
    parts = [_box((-w / 2, 0, h - 0.03), (w / 2, d, h), top)]
    if rng.random() < 0.5:  # panel sides
        parts += [_box((-w / 2, 0, 0), (-w / 2 + 0.03, d, h - 0.03), top),
                  _box((w / 2 - 0.03, 0, 0), (w / 2, d, h - 0.03), top)]
    else:
        parts += [_box((x, y, 0), (x + 0.045, y + 0.045, h - 0.03), _jitter(rng, METAL))
                  for x in (-w / 2 + 0.02, w / 2 - 0.065) for y in (0.02, d - 0.065)]
    if rng.random() < 0.5:  # drawer unit under one side
        x0 = w / 2 - 0.45 if rng.random() < 0.5 else -w / 2 + 0.07
        parts.append(_box((x0, 0.05, 0.05), (x0 + 0.38, d - 0.05, h - 0.03), _jitter(rng, [top], 0.04)))
    objs = [_obj(DESK, "desk", parts)]
    if rng.random() < 0.7:  # monitor (otherprop in ScanNet)
        mw = rng.uniform(0.45, 0.65)
        mx = rng.uniform(-w / 2 + mw / 2 + 0.05, w / 2 - mw / 2 - 0.05)
        dark = _jitter(rng, [(0.08, 0.08, 0.09)], 0.02)
        objs.append(_obj(OTHERPROP, "monitor", [_box((mx - 0.1, 0.08, h), (mx + 0.1, 0.25, h + 0.02), dark),
                                               _box((mx - 0.03, 0.12, h + 0.02), (mx + 0.03, 0.16, h + 0.12), dark),
                                               _box((mx - mw / 2, 0.16, h + 0.12),
                                                    (mx + mw / 2, 0.19, h + 0.12 + 0.6 * mw), dark)]))
    ch = _chair(rng)
    cd = _parts_aabb([ch])[1][1]
    objs += _transform([ch], 2, (rng.uniform(-0.2, 0.2) * w, d + rng.uniform(0.03, 0.2) + cd))
    return objs


def _cabinet(rng, tall: bool = False, name: str = "cabinet", label: int = CABINET) -> dict:
    if tall:
        w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.6), rng.uniform(1.8, 2.1)
    else:
        w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.6, 1.0)
    body = _jitter(rng, WOOD + PAINT)
    handle = _jitter(rng, METAL)
    parts = [_box((-w / 2, 0, 0.06), (w / 2, d, h), body), _box((-w / 2 + 0.03, 0, 0), (w / 2 - 0.03, d - 0.04, 0.06), body)]
    n_doors = 1 if w < 0.7 else 2
    for i in range(n_doors):
        x = -w / 2 + (i + 0.5) * w / n_doors + (0.06 if i == 0 and n_doors == 2 else -0.06 if n_doors == 2 else 0.1)
        parts.append(_box((x - 0.012, d, h * 0.45), (x + 0.012, d + 0.025, h * 0.45 + min(0.3, h * 0.3)), handle))
    return _obj(label, name, parts)


def _bookshelf(rng) -> list[dict]:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.1, 2.0)
    col = _jitter(rng, WOOD + PAINT)
    t = 0.02
    parts = [_box((-w / 2, 0, 0), (-w / 2 + t, d, h), col), _box((w / 2 - t, 0, 0), (w / 2, d, h), col),
             _box((-w / 2 + t, 0, h - t), (w / 2 - t, d, h), col), _box((-w / 2 + t, 0, 0), (w / 2 - t, d, 0.07), col),
             _box((-w / 2 + t, 0, 0.07), (w / 2 - t, 0.012, h - t), col)]
    n_shelf = max(2, int((h - 0.1) / 0.34))
    levels = 0.07 + (h - t - 0.07) * np.arange(1, n_shelf) / n_shelf
    parts += [_box((-w / 2 + t, 0.012, z - t), (w / 2 - t, d, z), col) for z in levels]
    objs = [_obj(BOOKSHELF, "bookshelf", parts)]
    bottoms = np.concatenate([[0.07], levels])
    tops = np.concatenate([levels - t, [h - t]])
    for zb, zt in zip(bottoms, tops):  # a few blocks of books per shelf (one "books" instance each)
        if rng.random() < 0.3:
            continue
        x = -w / 2 + t + rng.uniform(0.0, 0.1)
        books = []
        while True:
            bw = rng.uniform(0.08, 0.25)
            if x + bw > w / 2 - t - 0.01:
                break
            bh = min(zt - zb - 0.02, rng.uniform(0.15, 0.28))
            books.append(_box((x, 0.02, zb), (x + bw, d - rng.uniform(0.02, 0.06), zb + bh), _jitter(rng, VIVID, 0.1)))
            x += bw + rng.uniform(0.0, 0.12)
        if books:
            objs.append(_obj(BOOKS, "books", books))
    return objs


def _bed_group(rng) -> list[dict]:
    w, L, fh = rng.choice([rng.uniform(0.95, 1.1), rng.uniform(1.4, 1.8)]), rng.uniform(1.95, 2.15), rng.uniform(0.25, 0.4)
    frame = _jitter(rng, WOOD + FABRIC)
    sheet = _jitter(rng, PAINT[:3] + FABRIC)
    cover = _jitter(rng, FABRIC + VIVID)
    bed = [_box((-w / 2 - 0.03, 0, 0), (w / 2 + 0.03, 0.06, rng.uniform(0.85, 1.2)), frame),
           _box((-w / 2, 0.06, 0), (w / 2, 0.06 + L, fh), frame),
           _box((-w / 2 + 0.02, 0.08, fh), (w / 2 - 0.02, 0.04 + L, fh + 0.2), sheet),
           _box((-w / 2 + 0.01, 0.06 + 0.35 * L, fh + 0.2), (w / 2 - 0.01, 0.05 + L, fh + 0.23), cover)]
    objs = [_obj(BED, "bed", bed)]
    n_pillow = 1 if w < 1.2 else 2
    pw = (w - 0.1) / n_pillow - 0.04
    for i in range(n_pillow):
        x0 = -w / 2 + 0.05 + i * (pw + 0.04) + 0.02
        objs.append(_obj(PILLOW, "pillow", [_box((x0, 0.1, fh + 0.2), (x0 + pw, 0.1 + rng.uniform(0.32, 0.4), fh + 0.32),
                                                 _jitter(rng, PAINT[:3] + FABRIC))]))
    for side in (-1, 1):  # night stands beside the head of the bed
        if rng.random() < 0.6:
            nw, nd, nh = rng.uniform(0.4, 0.5), rng.uniform(0.35, 0.45), rng.uniform(0.45, 0.6)
            xc = side * (w / 2 + 0.03 + rng.uniform(0.03, 0.1) + nw / 2)
            col = _jitter(rng, WOOD + PAINT)
            objs.append(_obj(NIGHT_STAND, "nightstand", [_box((xc - nw / 2, 0, 0), (xc + nw / 2, nd, nh), col)]))
            if rng.random() < 0.5:
                objs.append(_obj(LAMP, "lamp", [_cyl(xc, nd / 2, 0.07, nh, nh + 0.03, _jitter(rng, METAL)),
                                                _cyl(xc, nd / 2, 0.012, nh + 0.03, nh + 0.3, _jitter(rng, METAL)),
                                                _cyl(xc, nd / 2, 0.13, nh + 0.3, nh + 0.5,
                                                     _jitter(rng, PAINT[:3] + VIVID))]))
    return objs


def _sofa_group(rng) -> list[dict]:
    w, d = rng.uniform(1.6, 2.4), rng.uniform(0.8, 0.95)
    col = _jitter(rng, FABRIC)
    cush = _jitter(rng, [col], 0.04)
    a, back_h = rng.uniform(0.15, 0.22), rng.uniform(0.78, 0.9)
    parts = [_box((x, y, 0), (x + 0.04, y + 0.04, 0.08), _jitter(rng, WOOD + METAL))
             for x in (-w / 2 + 0.04, w / 2 - 0.08) for y in (0.04, d - 0.08)]
    parts += [_box((-w / 2, 0, 0.08), (w / 2, d, 0.32), col), _box((-w / 2, 0, 0.32), (w / 2, 0.22, back_h), col),
              _box((-w / 2, 0.22, 0.32), (-w / 2 + a, d, 0.6), col), _box((w / 2 - a, 0.22, 0.32), (w / 2, d, 0.6), col)]
    n_c = 2 if w < 2.0 else 3
    cw = (w - 2 * a) / n_c
    parts += [_box((-w / 2 + a + i * cw + 0.005, 0.22, 0.32), (-w / 2 + a + (i + 1) * cw - 0.005, d - 0.02, 0.43), cush)
              for i in range(n_c)]
    objs = [_obj(SOFA, "sofa", parts)]
    if rng.random() < 0.8:  # coffee table in front of the sofa
        tw, td = rng.uniform(0.8, 1.2), rng.uniform(0.45, 0.6)
        ct = _table(rng, tw, td, rng.uniform(0.4, 0.48), name="coffee table", centred=True)
        objs += _transform([ct], 0, (rng.uniform(-0.1, 0.1), d + rng.uniform(0.35, 0.5) + td / 2))
    return objs


def _tv_group(rng) -> list[dict]:
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.38, 0.48), rng.uniform(0.42, 0.6)
    objs = [_obj(OTHERFURNITURE, "tv stand", [_box((-w / 2, 0, 0), (w / 2, d, h), _jitter(rng, WOOD + PAINT))])]
    tw = min(w - 0.1, rng.uniform(0.9, 1.3))
    dark = _jitter(rng, [(0.07, 0.07, 0.08)], 0.02)
    objs.append(_obj(TELEVISION, "tv", [_box((-0.15, 0.1, h), (0.15, 0.3, h + 0.02), dark),
                                        _box((-0.03, 0.17, h + 0.02), (0.03, 0.21, h + 0.08), dark),
                                        _box((-tw / 2, 0.16, h + 0.08), (tw / 2, 0.22, h + 0.08 + 0.58 * tw), dark)]))
    return objs


def _kitchen_group(rng, max_w: float) -> list[dict]:
    """Counter run: base cabinets under a counter top with a sink, optional wall cabinets above."""
    w = rng.uniform(1.6, max(1.7, min(3.2, max_w)))
    body = _jitter(rng, WOOD + PAINT)
    top = _jitter(rng, [(0.2, 0.2, 0.22), (0.85, 0.84, 0.8), (0.5, 0.45, 0.4), (0.35, 0.3, 0.28)])
    handle = _jitter(rng, METAL)
    n_doors = max(2, int(w / 0.5))
    base = [_box((-w / 2, 0, 0.1), (w / 2, 0.58, 0.86), body), _box((-w / 2, 0, 0), (w / 2, 0.52, 0.1), body)]
    xh = -w / 2 + (np.arange(n_doors) + 0.5) * w / n_doors
    base += [_box((x - 0.05, 0.58, 0.74), (x + 0.05, 0.6, 0.76), handle) for x in xh]
    objs = [_obj(CABINET, "kitchen cabinets", base),
            _obj(COUNTER, "kitchen counter", [_box((-w / 2, 0, 0.86), (w / 2, 0.62, 0.9), top)])]
    xs = rng.uniform(-w / 2 + 0.4, w / 2 - 0.4)
    steel = _jitter(rng, METAL)
    objs.append(_obj(SINK, "sink", [_box((xs - 0.3, 0.12, 0.9), (xs + 0.3, 0.52, 0.94), steel),
                                    _box((xs - 0.25, 0.16, 0.94), (xs + 0.25, 0.48, 0.945), _jitter(rng, METAL)),
                                    _cyl(xs, 0.07, 0.02, 0.9, 1.18, steel),
                                    _box((xs - 0.015, 0.07, 1.14), (xs + 0.015, 0.22, 1.17), steel)]))
    if rng.random() < 0.7:
        objs.append(_obj(CABINET, "kitchen cabinets",
                         [_box((-w / 2, 0, 1.45), (w / 2, 0.35, 2.1), _jitter(rng, [body], 0.03))]))
    return objs


def _refrigerator(rng) -> dict:
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.65, 0.75), rng.uniform(1.6, 1.9)
    col = _jitter(rng, [(0.92, 0.92, 0.92), (0.75, 0.76, 0.78), (0.2, 0.2, 0.22)])
    hd = _jitter(rng, METAL)
    split = h * rng.uniform(0.3, 0.4)
    return _obj(REFRIGERATOR, "refrigerator", [
        _box((-w / 2, 0, 0), (w / 2, d, h), col),
        _box((w / 2 - 0.09, d, split - 0.35), (w / 2 - 0.06, d + 0.04, split - 0.08), hd),
        _box((w / 2 - 0.09, d, split + 0.08), (w / 2 - 0.06, d + 0.04, split + 0.5), hd)])


def _toilet(rng) -> dict:
    c = _jitter(rng, CERAMIC, 0.02)
    return _obj(TOILET, "toilet", [
        _box((-0.2, 0, 0.35), (0.2, 0.2, 0.78), c), _box((-0.21, 0, 0.78), (0.21, 0.21, 0.8), c),
        _cyl(0, 0.44, 0.12, 0.0, 0.25, c), _cyl(0, 0.44, 0.2, 0.25, 0.39, c),
        _cyl(0, 0.44, 0.21, 0.39, 0.42, _jitter(rng, CERAMIC + PAINT[:2], 0.02))])


def _vanity_group(rng) -> list[dict]:
    c = _jitter(rng, CERAMIC, 0.02)
    steel = _jitter(rng, METAL)
    if rng.random() < 0.5:  # pedestal sink
        objs = [_obj(SINK, "sink", [_cyl(0, 0.22, 0.09, 0, 0.72, c), _box((-0.28, 0, 0.72), (0.28, 0.46, 0.86), c),
                                    _cyl(0, 0.06, 0.015, 0.86, 1.0, steel)])]
        top = 0.86
    else:  # sink on a vanity cabinet
        w = rng.uniform(0.6, 1.0)
        objs = [_obj(CABINET, "bathroom vanity", [_box((-w / 2, 0, 0), (w / 2, 0.5, 0.8), _jitter(rng, WOOD + PAINT))]),
                _obj(SINK, "sink", [_box((-0.25, 0.08, 0.8), (0.25, 0.45, 0.88), c),
                                    _cyl(0, 0.05, 0.015, 0.8, 0.98, steel)])]
        top = 0.88
    if rng.random() < 0.8:
        objs.append(_obj(MIRROR, "mirror", [_box((-0.3, 0, top + 0.25), (0.3, 0.02, top + 0.95),
                                                 _jitter(rng, [(0.7, 0.75, 0.78)], 0.03))]))
    return objs


def _bathtub_group(rng, H: float) -> list[dict]:
    w, d, h = rng.uniform(1.5, 1.7), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    c = _jitter(rng, CERAMIC, 0.02)
    t = 0.08
    objs = [_obj(BATHTUB, "bathtub", [_box((-w / 2, 0, 0), (w / 2, d, 0.1), c), _box((-w / 2, 0, 0.1), (w / 2, t, h), c),
                                      _box((-w / 2, d - t, 0.1), (w / 2, d, h), c),
                                      _box((-w / 2, t, 0.1), (-w / 2 + t, d - t, h), c),
                                      _box((w / 2 - t, t, 0.1), (w / 2, d - t, h), c)])]
    if rng.random() < 0.75:
        top = min(2.0, H - 0.15)
        span = w * rng.uniform(0.35, 1.0)
        col = _jitter(rng, PAINT[:3] + VIVID)
        objs.append(_obj(SHOWER_CURTAIN, "shower curtain", [
            _box((-w / 2, d - 0.05, h + 0.03), (-w / 2 + span, d - 0.03, top - 0.03), col),
            _box((-w / 2, d - 0.05, top - 0.03), (w / 2, d - 0.03, top), _jitter(rng, METAL))]))
    return objs


def _door(rng) -> tuple[list[dict], tuple]:
    """Door panel, casing and knob; plus a keep-out box in front (its swing), local frame."""
    w, h = rng.uniform(0.8, 0.95), rng.uniform(2.0, 2.1)
    panel = _jitter(rng, WOOD + PAINT)
    casing = _jitter(rng, PAINT[:3] + WOOD)
    c = 0.07
    parts = [_box((-w / 2, 0, 0), (w / 2, 0.035, h), panel),
             _box((-w / 2 - c, 0, 0), (-w / 2, 0.02, h + c), casing), _box((w / 2, 0, 0), (w / 2 + c, 0.02, h + c), casing),
             _box((-w / 2, 0, h), (w / 2, 0.02, h + c), casing),
             _box((w / 2 - 0.11, 0.035, 0.95), (w / 2 - 0.07, 0.09, 0.99), _jitter(rng, METAL))]
    return [_obj(DOOR, "door", parts)], ((-w / 2 - 0.1, 0, 0), (w / 2 + 0.1, w + 0.1, h))


def _window_group(rng, H: float, curtains: bool) -> list[dict]:
    w, h = rng.uniform(0.7, 1.6), rng.uniform(0.9, 1.4)
    z0 = rng.uniform(0.75, 1.0)
    h = min(h, H - 0.3 - z0)
    f = 0.05
    frame = _jitter(rng, PAINT[:3] + WOOD)
    glass = _jitter(rng, [(0.72, 0.80, 0.88), (0.60, 0.70, 0.78)], 0.04)
    parts = [_box((-w / 2 + f, 0, z0 + f), (w / 2 - f, 0.01, z0 + h - f), glass),
             _box((-w / 2, 0, z0), (-w / 2 + f, 0.05, z0 + h), frame),
             _box((w / 2 - f, 0, z0), (w / 2, 0.05, z0 + h), frame),
             _box((-w / 2 + f, 0, z0 + h - f), (w / 2 - f, 0.05, z0 + h), frame),
             _box((-w / 2 - 0.03, 0, z0 - 0.03), (w / 2 + 0.03, 0.08, z0 + f), frame)]
    if w > 1.1:
        parts.append(_box((-f / 2, 0, z0 + f), (f / 2, 0.05, z0 + h - f), frame))
    objs = [_obj(WINDOW, "window", parts)]
    if curtains:
        cw = rng.uniform(0.25, 0.45)
        zt = min(z0 + h + 0.15, H - 0.1)
        zb = 0.02 if rng.random() < 0.5 else z0 - 0.15
        ov = rng.uniform(0.0, 0.12)
        col = _jitter(rng, FABRIC + PAINT[:3])
        objs.append(_obj(CURTAIN, "curtain", [
            _box((-w / 2 - cw + ov, 0.09, zb), (-w / 2 + ov, 0.13, zt - 0.03), col),
            _box((w / 2 - ov, 0.09, zb), (w / 2 + cw - ov, 0.13, zt - 0.03), col),
            _box((-w / 2 - cw + ov - 0.05, 0.1, zt - 0.03), (w / 2 + cw - ov + 0.05, 0.12, zt),
                 _jitter(rng, METAL + WOOD))]))
    return objs


def _picture(rng, H: float) -> dict:
    w, h = rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
    zc = min(rng.uniform(1.35, 1.7), H - 0.2 - h / 2)
    fr = _jitter(rng, WOOD + [(0.1, 0.1, 0.1), (0.75, 0.6, 0.3)])
    f = 0.04
    z0, z1 = zc - h / 2, zc + h / 2
    return _obj(PICTURE, "picture", [
        _box((-w / 2 + f, 0, z0 + f), (w / 2 - f, 0.015, z1 - f), _jitter(rng, VIVID, 0.15)),
        _box((-w / 2, 0, z0), (-w / 2 + f, 0.03, z1), fr), _box((w / 2 - f, 0, z0), (w / 2, 0.03, z1), fr),
        _box((-w / 2 + f, 0, z0), (w / 2 - f, 0.03, z0 + f), fr), _box((-w / 2 + f, 0, z1 - f), (w / 2 - f, 0.03, z1), fr)])


def _otherfurniture(rng) -> dict:
    c = rng.random()
    if c < 0.4:
        r, h = rng.uniform(0.13, 0.2), rng.uniform(0.4, 0.7)
        return _obj(OTHERFURNITURE, "trash can", [_cyl(0, r, r, 0, h, _jitter(rng, METAL + VIVID))])
    if c < 0.7:
        w, d = rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.6)
        h = rng.uniform(0.38, 0.45)
        return _obj(OTHERFURNITURE, "ottoman", [_box((-w / 2, 0, 0), (w / 2, d, h), _jitter(rng, FABRIC))])
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.08, 0.12), rng.uniform(0.5, 0.7)
    return _obj(OTHERFURNITURE, "radiator", [
        _box((-w / 2, 0.03, 0.12), (w / 2, 0.03 + d, 0.12 + h), _jitter(rng, PAINT[:3])),
        _box((-w / 2 + 0.05, 0, 0.3), (-w / 2 + 0.08, 0.03, 0.35), _jitter(rng, METAL))])


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

    def wall(self, objs: list[dict], keepout=None, corner: bool = False, walls=None, tries: int = 40,
             end_margin: float = 0.05) -> list[dict] | None:
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
            pl.wall([_cabinet(rng, tall=True, name="wardrobe" if wardrobe else "cabinet",
                              label=OTHERFURNITURE if wardrobe else CABINET)])
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
    fillers = _FILLERS[room_type]
    for _ in range(int(rng.integers(1, 3)) if room_type == "bathroom" else int(rng.integers(2, 6))):
        pl.wall(fillers[int(rng.integers(len(fillers)))](rng), tries=20)
    for _ in range(int(rng.integers(0, 4)) if room_type != "bathroom" else int(rng.integers(0, 2))):
        pl.wall([_picture(rng, H)], end_margin=0.2)
    return pl.objects


def _end_table(rng) -> dict:
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    return _table(rng, w, d, rng.uniform(0.5, 0.65), name="end table", centred=False)


# extra furniture against the walls, per room type (each a builder returning a list of objects)
_FILLERS = {
    "bedroom": [lambda r: [_cabinet(r)], lambda r: [_chair(r)], lambda r: [_otherfurniture(r)], _bookshelf,
                lambda r: [_end_table(r)]],
    "living room": [lambda r: [_armchair(r)], lambda r: [_cabinet(r)], _bookshelf, lambda r: [_end_table(r)],
                    lambda r: [_otherfurniture(r)], lambda r: [_chair(r)]],
    "office": [lambda r: [_chair(r)], lambda r: [_cabinet(r, tall=r.random() < 0.5)], _bookshelf, _desk_group,
               lambda r: [_otherfurniture(r)], lambda r: [_end_table(r)]],
    "kitchen": [lambda r: [_cabinet(r)], lambda r: [_chair(r)], lambda r: [_otherfurniture(r)], lambda r: [_end_table(r)]],
    "bathroom": [lambda r: [_cabinet(r)], lambda r: [_otherfurniture(r)]],
}


# ------------------------------------------------------------------------------ ray casting
# Rays are o + t * d with d = R K^-1 (u, v, 1): t is then the camera z-depth. Direction components
# are separate (H, W) float32 arrays so a pixel rectangle is a cheap view. Intersections return
# the entry distance (inf where missed) and a hit code: 0/1/2 the slab axis a box (or the room
# shell) was entered (left) through, 3 a cylinder's side, 4 its cap; normals follow from the code.

def _safe_inv(d: np.ndarray) -> np.ndarray:
    d = np.where(np.abs(d) < 1e-12, np.where(d < 0, -1e-12, 1e-12), d)
    return (1.0 / d).astype(d.dtype)


def intersect_box(o, d, inv, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance along rays o + t d (d, inv: 3 arrays) into the box lo..hi, and the entry axis.

    Distance is inf where the ray misses or enters at t <= NEAR (behind or too close).
    """
    tn, tf = [], []
    for a in range(3):
        t1, t2 = (lo[a] - o[a]) * inv[a], (hi[a] - o[a]) * inv[a]
        tn.append(np.minimum(t1, t2))
        tf.append(np.maximum(t1, t2))
    t_in = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
    t_out = np.minimum(np.minimum(tf[0], tf[1]), tf[2])
    code = np.where((tn[0] >= tn[1]) & (tn[0] >= tn[2]), 0, np.where(tn[1] >= tn[2], 1, 2)).astype(np.int8)
    return np.where((t_in <= t_out) & (t_in > NEAR), t_in, np.inf), code


def intersect_cylinder(o, d, inv, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance into the vertical cylinder inscribed in the box lo..hi (inf where missed), and
    the hit code (3 side, 4 cap). Computed in float64: the quadratic loses digits in float32."""
    d = [np.asarray(c, np.float64) for c in d]
    inv = [np.asarray(c, np.float64) for c in inv]
    cx, cy, r = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (hi[0] - lo[0]) / 2
    px, py = o[0] - cx, o[1] - cy
    a = np.maximum(d[0] * d[0] + d[1] * d[1], 1e-18)
    b = 2 * (px * d[0] + py * d[1])
    c = px * px + py * py - r * r
    disc = b * b - 4 * a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    ts_in, ts_out = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
    tz1, tz2 = (lo[2] - o[2]) * inv[2], (hi[2] - o[2]) * inv[2]
    tz_in, tz_out = np.minimum(tz1, tz2), np.maximum(tz1, tz2)
    t_in = np.maximum(ts_in, tz_in)
    hit = (disc >= 0) & (t_in <= np.minimum(ts_out, tz_out)) & (t_in > NEAR)
    code = np.where(ts_in >= tz_in, 3, 4).astype(np.int8)
    return np.where(hit, t_in, np.inf), code


def _shell(o, d, inv, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit distance from the room box (camera inside), shell face id (0..5) and exit axis."""
    t = [np.maximum((0.0 - o[a]) * inv[a], (size[a] - o[a]) * inv[a]) for a in range(3)]
    axis = np.where((t[0] <= t[1]) & (t[0] <= t[2]), 0, np.where(t[1] <= t[2], 1, 2)).astype(np.int8)
    t_exit = np.minimum(np.minimum(t[0], t[1]), t[2])
    positive = np.choose(axis, d) > 0
    return t_exit, 2 * axis.astype(np.int64) + positive, axis


def _ray_dirs(pose: np.ndarray, K: np.ndarray, hw: tuple[int, int], dtype=np.float64) -> list[np.ndarray]:
    """World ray directions through integer pixel centres, as 3 (H, W) arrays; t along them is z-depth."""
    h, w = hw
    x = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
    y = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
    R = pose[:3, :3]
    return [(R[a, 0] * x[None, :] + R[a, 1] * y[:, None] + R[a, 2]).astype(dtype) for a in range(3)]


def backproject(pose: np.ndarray, K: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) world points of a z-depth image (pixel centres at integer coordinates)."""
    d = _ray_dirs(pose, K, depth.shape)
    return np.stack([pose[a, 3] + d[a] * depth for a in range(3)], -1)


_EDGES = [(i, i ^ b) for i in range(8) for b in (1, 2, 4) if i < i ^ b]


def _screen_rect(pose: np.ndarray, K: np.ndarray, hw, lo, hi):
    """Pixel rectangle (r0, r1, c0, c1) covering a box's projection after clipping it at z = NEAR;
    None when nothing of it is in front of the camera or inside the image."""
    corners = np.array([[(lo, hi)[(i >> a) & 1][a] for a in range(3)] for i in range(8)])
    cam = (corners - pose[:3, 3]) @ pose[:3, :3]
    z = cam[:, 2]
    front = z > NEAR
    if not front.any():
        return None
    pts = [cam[front]]
    for i, j in _EDGES:  # edges crossing the near plane contribute their crossing point
        if front[i] != front[j]:
            s = (NEAR - z[i]) / (z[j] - z[i])
            pts.append((cam[i] + s * (cam[j] - cam[i]))[None])
    pts = np.concatenate(pts)
    u = K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2]
    v = K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2]
    c0, c1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, hw[1])
    r0, r1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, hw[0])
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def render_surfaces(room: Room, pose: np.ndarray, K: np.ndarray, hw: tuple[int, int], cull: bool = True):
    """Ray-cast one view: z-depth (H, W) float64 (0 = none), surface id (H, W) int64 (-1 = none),
    unit normals (H, W, 3) float64 facing the camera's side of the surface.

    Rays go through integer pixel centres; the room shell first, then each primitive over the
    pixel rectangle its (near-clipped) box projects to, keeping the nearest hit. `cull=False`
    tests every primitive on every pixel (the plain definition, for checking the cull).
    """
    o = pose[:3, 3].astype(np.float64)
    ol = o.tolist()  # Python floats keep the float32 arrays float32 (NumPy 2 promotion rules)
    d = _ray_dirs(pose, K, hw, np.float32)
    inv = [_safe_inv(c) for c in d]
    t, sid, code = _shell(ol, d, inv, room.size.tolist())
    for i in range(len(room.prim_kind)):
        rect = _screen_rect(pose, K, hw, room.prim_lo[i], room.prim_hi[i]) if cull else (0, hw[0], 0, hw[1])
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        fn = intersect_box if room.prim_kind[i] == BOX else intersect_cylinder
        ti, ci = fn(ol, [c[r0:r1, c0:c1] for c in d], [c[r0:r1, c0:c1] for c in inv],
                    room.prim_lo[i].tolist(), room.prim_hi[i].tolist())
        closer = ti < t[r0:r1, c0:c1]
        if closer.any():
            t[r0:r1, c0:c1][closer] = ti[closer]
            sid[r0:r1, c0:c1][closer] = N_SHELL + i
            code[r0:r1, c0:c1][closer] = ci[closer]
    t = t.astype(np.float64)
    miss = ~np.isfinite(t) | (t <= NEAR)
    t[miss], sid[miss] = 0.0, -1
    return t, sid, _normals(room, o, d, t, sid, code)


def _normals(room: Room, o, d, t, sid, code) -> np.ndarray:
    """Unit normals of ray hits from their hit codes (the side of the surface the ray came from)."""
    n = np.zeros((*t.shape, 3))
    for a in range(3):
        m = code == a
        n[..., a][m] = -np.sign(d[a][m])
    cap = code == 4
    n[..., 2][cap] = -np.sign(d[2][cap])
    side = np.nonzero(code == 3)
    if len(side[0]):
        p = sid[side] - N_SHELL
        c = (room.prim_lo[p] + room.prim_hi[p]) / 2
        r = (room.prim_hi[p, 0] - room.prim_lo[p, 0]) / 2
        for a in range(2):
            n[..., a][side] = (o[a] + t[side] * d[a][side] - c[:, a]) / r
    return n


# ---------------------------------------------------------------------------------- shading

def _hash01(q: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (M, 3) and salt (M,)."""
    q = q.astype(np.int64).astype(np.uint32)
    h = (q[:, 0] * np.uint32(73856093)) ^ (q[:, 1] * np.uint32(19349663)) ^ (q[:, 2] * np.uint32(83492791))
    h ^= salt * np.uint32(2654435761)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(2.0 ** -32)


def shade(room: Room, p: np.ndarray, n: np.ndarray, sid: np.ndarray) -> np.ndarray:
    """Colour (M, 3) in 0..1 of surface points p with normals n: albedo x texture x (ambient +
    Lambert from a point light under the ceiling).

    The texture is value noise fixed in world space (3 cm and 15 cm cells, salted per surface),
    so a point has the same colour in the point cloud and in every view that sees it.
    """
    salt = (sid + 1).astype(np.uint32)
    fine = _hash01(np.floor(p / 0.03), salt)
    coarse = _hash01(np.floor(p / 0.15), salt + np.uint32(7919))
    tex = 1.0 + 0.16 * (fine - 0.5) + 0.12 * (coarse - 0.5)
    to_light = room.light - p
    lambert = np.clip((n * to_light).sum(1) / np.sqrt((to_light * to_light).sum(1) + 1e-12), 0.0, 1.0)
    return room.surf_albedo[sid] * (tex * (0.55 + 0.5 * lambert))[:, None]


def sensor_noise(depth: np.ndarray, color: np.ndarray, rng: np.random.Generator, depth_rel_std: float = 0.003,
                 dropout: float = 0.005, gain_range: float = 0.06, color_std: float = 0.012):
    """Depth x (1 + N(0, depth_rel_std^2)) (noise grows with depth, as in a structured-light sensor)
    and a `dropout` share of pixels with no return (0, as ScanNet's holes); colour x one exposure
    gain per frame + per-pixel Gaussian noise."""
    noise = rng.standard_normal(depth.shape, dtype=np.float32)
    depth = depth * (1.0 + depth_rel_std * noise)
    depth[rng.random(depth.shape, dtype=np.float32) < dropout] = 0.0
    gain = 1.0 + rng.uniform(-gain_range, gain_range)
    color = color * gain + color_std * rng.standard_normal(color.shape, dtype=np.float32)
    return depth, color


# -------------------------------------------------------------------------- point sampling

def _surface_patches(room: Room):
    """Planar rectangles (sid, origin, e1, e2, normal) and cylinder sides (sid, lo, hi) of all surfaces."""
    Lx, Ly, H = room.size
    rects = []
    z3 = np.zeros(3)
    ex, ey, ez = np.eye(3)
    # shell faces, inward normals
    rects += [(0, z3, ey * Ly, ez * H, ex), (1, ex * Lx, ey * Ly, ez * H, -ex),
              (2, z3, ex * Lx, ez * H, ey), (3, ey * Ly, ex * Lx, ez * H, -ey),
              (4, z3, ex * Lx, ey * Ly, ez), (5, ez * H, ex * Lx, ey * Ly, -ez)]
    cyls = []
    for i, (kind, lo, hi) in enumerate(zip(room.prim_kind, room.prim_lo, room.prim_hi)):
        s = N_SHELL + i
        ext = hi - lo
        if kind == BOX:
            for a in range(3):
                b, c = [(1, 2), (0, 2), (0, 1)][a]
                e1, e2 = np.eye(3)[b] * ext[b], np.eye(3)[c] * ext[c]
                o_lo = lo.copy()
                o_hi = lo.copy()
                o_hi[a] = hi[a]
                rects.append((s, o_lo, e1, e2, -np.eye(3)[a]))
                rects.append((s, o_hi, e1, e2, np.eye(3)[a]))
        else:
            cyls.append((s, lo, hi))
    return rects, cyls


def _sample_candidates(room: Room, m: int, rng: np.random.Generator):
    """m points uniform by area over all surfaces (visible or not): xyz, normals, surface id."""
    rects, cyls = _surface_patches(room)
    r_area = np.array([np.linalg.norm(np.cross(e1, e2)) for _, _, e1, e2, _ in rects])
    radius = np.array([(hi[0] - lo[0]) / 2 for _, lo, hi in cyls])
    height = np.array([hi[2] - lo[2] for _, lo, hi in cyls])
    c_side, c_cap = 2 * np.pi * radius * height, np.pi * radius ** 2
    areas = np.concatenate([r_area, c_side, c_cap, c_cap])
    counts = rng.multinomial(m, areas / areas.sum())
    nr, nc = len(rects), len(cyls)
    xyz, nor, sid = [], [], []
    # rectangles
    idx = np.repeat(np.arange(nr), counts[:nr])
    if len(idx):
        org = np.array([r[1] for r in rects])[idx]
        E1 = np.array([r[2] for r in rects])[idx]
        E2 = np.array([r[3] for r in rects])[idx]
        uv = rng.random((len(idx), 2))
        xyz.append(org + uv[:, :1] * E1 + uv[:, 1:] * E2)
        nor.append(np.array([r[4] for r in rects])[idx])
        sid.append(np.array([r[0] for r in rects])[idx])
    if nc:
        cs = np.array([c[0] for c in cyls])
        clo = np.array([c[1] for c in cyls])
        chi = np.array([c[2] for c in cyls])
        ctr = (clo + chi) / 2
        for part, cnt in enumerate((counts[nr:nr + nc], counts[nr + nc:nr + 2 * nc], counts[nr + 2 * nc:])):
            idx = np.repeat(np.arange(nc), cnt)
            if not len(idx):
                continue
            ang = rng.uniform(0, 2 * np.pi, len(idx))
            u = rng.random(len(idx))
            rad = radius[idx] if part == 0 else radius[idx] * np.sqrt(u)
            dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
            pts = np.empty((len(idx), 3))
            pts[:, :2] = ctr[idx, :2] + rad[:, None] * dirs
            if part == 0:
                pts[:, 2] = clo[idx, 2] + u * height[idx]
                nn = np.concatenate([dirs, np.zeros((len(idx), 1))], 1)
            else:
                pts[:, 2] = clo[idx, 2] if part == 1 else chi[idx, 2]
                nn = np.zeros((len(idx), 3))
                nn[:, 2] = -1.0 if part == 1 else 1.0
            xyz.append(pts)
            nor.append(nn)
            sid.append(cs[idx])
    return np.concatenate(xyz), np.concatenate(nor), np.concatenate(sid).astype(np.int64)


def visible_mask(room: Room, xyz: np.ndarray, sid: np.ndarray) -> np.ndarray:
    """True for surface points not buried in another solid (or outside the room); loops over primitives."""
    keep = np.ones(len(xyz), bool)
    on_prim = sid >= N_SHELL
    inside_room = ((xyz > EPS) & (xyz < room.size - EPS)).all(1)
    keep &= ~on_prim | inside_room
    for i, (kind, lo, hi) in enumerate(zip(room.prim_kind, room.prim_lo, room.prim_hi)):
        inside = ((xyz > lo - EPS) & (xyz < hi + EPS)).all(1)
        if kind == CYL:
            c = (lo[:2] + hi[:2]) / 2
            r = (hi[0] - lo[0]) / 2 + EPS
            inside &= ((xyz[:, :2] - c) ** 2).sum(1) < r * r
        keep &= ~(inside & (sid != N_SHELL + i))
    return keep


def sample_points(room: Room, n_points: int, rng: np.random.Generator):
    """n_points uniform by area on the visible surfaces: xyz float64 (N, 3), normals (N, 3), surface ids (N,)."""
    got_x, got_n, got_s, have = [], [], [], 0
    m, rounds = int(1.5 * n_points) + 64, 0
    while have < n_points:
        x, n, s = _sample_candidates(room, m, rng)
        k = visible_mask(room, x, s)
        got_x.append(x[k]), got_n.append(n[k]), got_s.append(s[k])
        have += int(k.sum())
        frac = max(k.mean(), 0.05)
        m = int(1.2 * (n_points - have) / frac) + 64
        rounds += 1
        if rounds > 50:
            raise RuntimeError("could not sample visible surface points")
    x, n, s = np.concatenate(got_x), np.concatenate(got_n), np.concatenate(got_s)
    pick = np.sort(rng.choice(len(x), n_points, replace=False))
    return x[pick], n[pick], s[pick]


# ----------------------------------------------------------------------------------- rooms

def _camera_free(room: Room, eye: np.ndarray, clearance: float = 0.35) -> bool:
    """True when `eye` is inside the room, `clearance` from walls, floor, ceiling and every primitive."""
    if ((eye < clearance) | (eye > room.size - clearance)).any():
        return False
    gap = np.maximum(np.maximum(room.prim_lo - eye, eye - room.prim_hi), 0.0)
    return bool((np.linalg.norm(gap, axis=1) >= clearance).all()) if len(gap) else True


def room_layout(seed: int, image_hw: tuple[int, int] = (480, 640), room_type: str | None = None,
                name: str | None = None) -> tuple[Room, np.random.Generator]:
    """The layout of procedural room `seed` (shell, furniture, light; no points, no cameras) and the
    generator that `make_room` goes on drawing from. The release-format writers
    (geopurify.data.synth_raw) start from here."""
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
    room = Room(name=name or f"synth_seed{seed}", seed=int(seed), room_type=room_type, size=size,
                prim_kind=np.array(kind, np.int8), prim_lo=np.array(lo, np.float64).reshape(-1, 3),
                prim_hi=np.array(hi, np.float64).reshape(-1, 3), surf_label=np.array(labels, np.int32),
                surf_instance=np.array(insts, np.int32), surf_albedo=np.array(albedo, np.float64), objects=meta,
                image_hw=(int(image_hw[0]), int(image_hw[1])))
    room.light = np.array([size[0] * rng.uniform(0.35, 0.65), size[1] * rng.uniform(0.35, 0.65), size[2] - 0.3])
    return room, rng


def make_room(seed: int, n_points: int = 100_000, n_frames: int = 50, image_hw: tuple[int, int] = (480, 640),
              room_type: str | None = None, name: str | None = None) -> Room:
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
    room.poses = orbit_poses(size[:2] / 2, 0.3 * size[:2], eye_z, int(n_frames), rng,
                             is_free=lambda e: _camera_free(room, e)) if n_frames else np.zeros((0, 4, 4))
    logger.debug("procedural room %s (%s, %.1fx%.1fx%.1f m, %d objects, %d primitives) in %.2fs", room.name,
                 room.room_type, *size, len(room.objects) - N_SHELL, len(room.prim_kind), time.perf_counter() - t0)
    return room


def room_meta(room: Room) -> dict:
    """meta.json of a written room: names it as the synthetic stand-in it is."""
    return {"source": SOURCE, "note": "procedural room generated offline; a stand-in for a ScanNet scan, not real data",
            "depth_scale": DEPTH_SCALE, "generator": "geopurify.data.synth", "seed": room.seed,
            "room_type": room.room_type, "room_size_m": [round(float(v), 4) for v in room.size],
            "n_points": int(len(room.xyz)), "n_frames": room.n_frames, "image_hw": list(room.image_hw),
            "label_space": "nyu40", "objects": room.objects}


def write_room(room: Room, scene_dir: str | Path, progress: bool = False) -> Path:
    """Write `room` in the on-disk scene layout (points, labels, instances, normals, frames, label images, meta)."""
    from tqdm import tqdm

    from geopurify.data.writers import write_frame, write_scene

    scene_dir = Path(scene_dir)
    write_scene(scene_dir, room.xyz, room.rgb, labels=room.labels, instances=room.instances, meta=room_meta(room),
                normals=room.normals, normals_source="analytic")
    for i in tqdm(range(room.n_frames), desc=f"render {room.name}", unit="frame", disable=not progress, leave=False):
        v = room.render(i)
        write_frame(scene_dir, i, room.poses[i], room.intrinsic, color=v.color, depth=v.depth,
                    depth_scale=DEPTH_SCALE, label_image=v.label)
    return scene_dir


def scene_seed(seed: int, index: int) -> int:
    """The room seed of scene `index` of a data set seeded with `seed` (independent of the scene count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def synthesize(out_dir: str | Path, n_scenes: int, seed: int, n_points: int = 100_000, n_frames: int = 50,
               image_hw: tuple[int, int] = (480, 640), progress: bool = True) -> list[Path]:
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
        want = {"seed": rs, "n_points": int(n_points), "n_frames": int(n_frames), "image_hw": [int(v) for v in image_hw]}
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
    logger.info("%d procedural rooms (SYNTHETIC stand-in for ScanNet) in %s: %d generated, %d already there (%.1fs)",
                n_scenes, out_dir, made, n_scenes - made, time.perf_counter() - t0)
    return paths


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
        raise InputError(path, "exists but has no readable meta.json; remove it or choose another output "
                               "directory") from None
    if meta.get("source") != SOURCE:
        raise InputError(path, f"exists and is not a procedural room (source {meta.get('source')!r})")
    have = {k: meta.get(k) for k in want}
    if have != want:
        diff = ", ".join(f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k])
        raise InputError(path, f"exists with other generator parameters ({diff}); remove it or choose another "
                               "output directory")

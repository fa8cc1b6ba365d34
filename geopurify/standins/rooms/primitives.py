"""The procedural rooms' building blocks: NYU40 ids, palettes, and primitives (boxes, vertical
cylinders) grouped into objects, moved and rotated as one. Part of the offline stand-in rooms
(geopurify.standins.rooms); every later module builds on these.
"""

from __future__ import annotations

import numpy as np

SOURCE = "synthetic (procedural room)"  # meta.json source of every written room
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
FABRIC = [
    (0.45, 0.47, 0.50),
    (0.25, 0.32, 0.50),
    (0.30, 0.45, 0.32),
    (0.55, 0.25, 0.22),
    (0.72, 0.66, 0.55),
    (0.18, 0.18, 0.20),
    (0.60, 0.52, 0.70),
    (0.80, 0.55, 0.30),
]
PAINT = [(0.90, 0.90, 0.88), (0.85, 0.86, 0.82), (0.92, 0.92, 0.92), (0.75, 0.78, 0.80), (0.30, 0.30, 0.32)]
METAL = [(0.62, 0.62, 0.64), (0.25, 0.25, 0.27), (0.80, 0.80, 0.82)]
WALL_PAINT = [
    (0.88, 0.87, 0.82),
    (0.86, 0.80, 0.70),
    (0.80, 0.82, 0.84),
    (0.75, 0.82, 0.88),
    (0.80, 0.86, 0.76),
    (0.90, 0.86, 0.70),
]
FLOORING = [(0.58, 0.42, 0.28), (0.45, 0.45, 0.47), (0.78, 0.74, 0.66), (0.38, 0.26, 0.17), (0.60, 0.58, 0.52)]
CERAMIC = [(0.95, 0.95, 0.95), (0.92, 0.92, 0.88)]
VIVID = [
    (0.80, 0.20, 0.15),
    (0.20, 0.40, 0.75),
    (0.95, 0.75, 0.20),
    (0.20, 0.60, 0.40),
    (0.60, 0.30, 0.60),
    (0.95, 0.55, 0.45),
    (0.15, 0.15, 0.18),
    (0.90, 0.90, 0.90),
]


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

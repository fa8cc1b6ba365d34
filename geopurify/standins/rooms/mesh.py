"""Triangle meshes of procedural rooms, part of the OFFLINE STAND-IN for ScanNet / Matterport3D scans.

A released scan's mesh (ScanNet's `*_vh_clean_2.ply`, a Matterport3D region) is a triangle mesh of
the surfaces the scanner saw, with vertices a few centimetres apart. `room_mesh` builds the
equivalent for a procedural room (geopurify.standins.rooms): every face of the room shell and of every
box is a regular grid of vertices, every cylinder a tessellated side and two capped discs, all at
one spacing chosen so the vertex count meets a budget; triangles buried in another solid (a
cabinet's back against the wall, the floor under it; judged at the triangle's centroid) are
dropped, and vertices no triangle uses go with them. Triangles wind counter-clockwise around the
normal of the visible side.

Per vertex: the room's shading (`render.shade`, the colour the rendered frames show), NYU40 label,
instance id, and an over-segmentation id: segments are square patches of about PATCH = 0.4 m of
one surface (so they never cross objects), named like ScanNet's segIndices by a vertex of theirs
(the smallest index).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from geopurify.standins.rooms.layout import Room
from geopurify.standins.rooms.render import shade
from geopurify.standins.rooms.surfaces import surface_patches, visible_mask

log = logging.getLogger(__name__)

PATCH = 0.4  # metres: side of an over-segmentation patch


@dataclass
class RoomMesh:
    """A procedural room's triangle mesh in the room frame (see the module docstring)."""

    xyz: np.ndarray  # (V, 3) float64
    normals: np.ndarray  # (V, 3) float32, unit, on the visible side
    faces: np.ndarray  # (F, 3) int64, counter-clockwise around the normal
    sid: np.ndarray  # (V,) int64 surface id (layout.Room)
    rgb: np.ndarray  # (V, 3) uint8
    labels: np.ndarray  # (V,) int32 NYU40
    instances: np.ndarray  # (V,) int32
    segments: np.ndarray  # (V,) int64 segment id (smallest vertex index of the segment)
    spacing: float  # metres between grid vertices

    @property
    def n_vertices(self) -> int:
        return int(self.xyz.shape[0])


def _grid_faces(na: int, nb: int, flip: bool, wrap_a: bool = False) -> np.ndarray:
    """Two triangles per cell of an (na + 1) x (nb + 1) vertex grid indexed i * (nb + 1) + j,
    counter-clockwise in the (a, b) plane unless `flip`; `wrap_a` joins row na - 1 back to row 0
    (a cylinder's side, whose grid then has na rows)."""
    i, j = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    i, j = i.ravel(), j.ravel()
    i1 = (i + 1) % na if wrap_a else i + 1
    v00, v10 = i * (nb + 1) + j, i1 * (nb + 1) + j
    v01, v11 = v00 + 1, v10 + 1
    tri = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return tri[:, ::-1] if flip else tri


def _rect(origin, e1, e2, normal, h: float):
    """Grid vertices, faces and patch keys of one rectangle origin + [0, 1] e1 + [0, 1] e2."""
    la, lb = float(np.linalg.norm(e1)), float(np.linalg.norm(e2))
    na, nb = max(1, math.ceil(la / h)), max(1, math.ceil(lb / h))
    a, b = np.meshgrid(np.arange(na + 1) / na, np.arange(nb + 1) / nb, indexing="ij")
    xyz = origin + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    key = (a.ravel() * la // PATCH).astype(np.int64) * 1000 + (b.ravel() * lb // PATCH).astype(np.int64)
    flip = float(np.dot(np.cross(e1, e2), normal)) < 0
    return xyz, np.tile(normal, (len(xyz), 1)), _grid_faces(na, nb, flip), key


def _cylinder(lo, hi, h: float):
    """Side (a wrapped grid) and two capped discs of the vertical cylinder inscribed in lo..hi."""
    c, r, z0, z1 = (lo[:2] + hi[:2]) / 2, (hi[0] - lo[0]) / 2, lo[2], hi[2]
    na = max(8, math.ceil(2 * np.pi * r / h))
    nz = max(1, math.ceil((z1 - z0) / h))
    ang = 2 * np.pi * np.arange(na) / na
    ring = np.stack([np.cos(ang), np.sin(ang)], 1)
    zz = z0 + (z1 - z0) * np.arange(nz + 1) / nz
    side = np.concatenate([np.repeat(c + r * ring, nz + 1, 0), np.tile(zz, na)[:, None]], 1)
    side_n = np.concatenate([np.repeat(ring, nz + 1, 0), np.zeros((na * (nz + 1), 1))], 1)
    side_key = (np.repeat(ang * r, nz + 1) // PATCH).astype(np.int64) * 1000 + (np.tile(zz - z0, na) // PATCH)
    parts = [(side, side_n, _grid_faces(na, nz, False, wrap_a=True), side_key.astype(np.int64))]
    nr = max(1, math.ceil(r / h))
    rad = r * np.arange(1, nr + 1) / nr
    for z, up in ((z0, False), (z1, True)):
        xy = np.concatenate([c[None], (c + rad[:, None, None] * ring[None]).reshape(-1, 2)])
        pts = np.concatenate([xy, np.full((len(xy), 1), z)], 1)
        k = np.arange(na)
        fan = np.stack([np.zeros(na, np.int64), 1 + k, 1 + (k + 1) % na], 1)
        tris = [fan]
        for j in range(nr - 1):  # quads between ring j and ring j + 1
            a0, a1 = 1 + j * na + k, 1 + j * na + (k + 1) % na
            b0, b1 = a0 + na, a1 + na
            tris += [np.stack([a0, b0, b1], 1), np.stack([a0, b1, a1], 1)]
        tri = np.concatenate(tris)
        nrm = np.zeros((len(pts), 3))
        nrm[:, 2] = 1.0 if up else -1.0
        parts.append((pts, nrm, tri if up else tri[:, ::-1], np.full(len(pts), 1_000_000 + up, np.int64)))
    return parts


def _tessellate(room: Room, h: float):
    """All surfaces at spacing h: xyz, normals, faces, surface ids and global patch keys (nothing dropped)."""
    rects, cyls = surface_patches(room)
    parts = [(s, *_rect(o, e1, e2, n, h)) for s, o, e1, e2, n in rects]
    parts += [(s, *p) for s, lo, hi in cyls for p in _cylinder(lo, hi, h)]
    xyz, nrm, faces, sid, key, off = [], [], [], [], [], 0
    for i, (s, x, n, f, k) in enumerate(parts):
        xyz.append(x), nrm.append(n), faces.append(f + off)
        sid.append(np.full(len(x), s, np.int64)), key.append(k + np.int64(i) * 10_000_000)
        off += len(x)
    return (
        np.concatenate(xyz),
        np.concatenate(nrm),
        np.concatenate(faces).astype(np.int64),
        np.concatenate(sid),
        np.concatenate(key),
    )


def _visible_part(room: Room, h: float):
    """The tessellation at spacing h without buried triangles and unused vertices."""
    xyz, nrm, faces, sid, key = _tessellate(room, h)
    faces = faces[visible_mask(room, xyz[faces].mean(1), sid[faces[:, 0]])]
    used = np.zeros(len(xyz), bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used) - 1
    return xyz[used], nrm[used], new_index[faces], sid[used], key[used]


def _total_area(room: Room) -> float:
    rects, cyls = surface_patches(room)
    area = sum(float(np.linalg.norm(np.cross(e1, e2))) for _, _, e1, e2, _ in rects)
    for _, lo, hi in cyls:
        r = (hi[0] - lo[0]) / 2
        area += 2 * np.pi * r * (hi[2] - lo[2]) + 2 * np.pi * r * r
    return area


def room_mesh(room: Room, n_vertices: int = 120_000) -> RoomMesh:
    """The triangle mesh of `room`'s visible surfaces with about `n_vertices` vertices (the spacing
    is solved for the budget in three passes; tiny budgets are exceeded, every face keeps its corners)."""
    if n_vertices < 1:
        raise ValueError(f"need a positive vertex budget, got {n_vertices}")
    h = math.sqrt(_total_area(room) / n_vertices)
    for _ in range(3):
        xyz, nrm, faces, sid, key = _visible_part(room, h)
        ratio = len(xyz) / n_vertices
        if abs(ratio - 1) < 0.03:
            break
        h *= math.sqrt(ratio)
    _, inv = np.unique(key, return_inverse=True)
    first = np.full(inv.max() + 1, len(xyz), np.int64)
    np.minimum.at(first, inv, np.arange(len(xyz)))
    rgb = np.clip(np.rint(shade(room, xyz, nrm, sid) * 255), 0, 255).astype(np.uint8)
    log.debug("mesh of %s: %d vertices, %d faces, spacing %.1f cm", room.name, len(xyz), len(faces), 100 * h)
    return RoomMesh(
        xyz=xyz,
        normals=nrm.astype(np.float32),
        faces=faces,
        sid=sid,
        rgb=rgb,
        labels=room.surf_label[sid].astype(np.int32),
        instances=room.surf_instance[sid].astype(np.int32),
        segments=first[inv],
        spacing=h,
    )

"""Points on the procedural rooms' visible surfaces (offline stand-in): every rectangle and cylinder
side, sampled uniformly by area, kept where no other solid hides it (what a scan mesh's vertices are).
`room` arguments are a `geopurify.standins.rooms.layout.Room`.
"""

from __future__ import annotations

import numpy as np

from geopurify.standins.rooms.primitives import BOX, CYL, EPS, N_SHELL


def surface_patches(room):
    """Planar rectangles (sid, origin, e1, e2, normal) and cylinder sides (sid, lo, hi) of all surfaces."""
    Lx, Ly, H = room.size
    rects = []
    z3 = np.zeros(3)
    ex, ey, ez = np.eye(3)
    # shell faces, inward normals
    rects += [
        (0, z3, ey * Ly, ez * H, ex),
        (1, ex * Lx, ey * Ly, ez * H, -ex),
        (2, z3, ex * Lx, ez * H, ey),
        (3, ey * Ly, ex * Lx, ez * H, -ey),
        (4, z3, ex * Lx, ey * Ly, ez),
        (5, ez * H, ex * Lx, ey * Ly, -ez),
    ]
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


def _sample_candidates(room, m: int, rng: np.random.Generator):
    """m points uniform by area over all surfaces (visible or not): xyz, normals, surface id."""
    rects, cyls = surface_patches(room)
    r_area = np.array([np.linalg.norm(np.cross(e1, e2)) for _, _, e1, e2, _ in rects])
    radius = np.array([(hi[0] - lo[0]) / 2 for _, lo, hi in cyls])
    height = np.array([hi[2] - lo[2] for _, lo, hi in cyls])
    c_side, c_cap = 2 * np.pi * radius * height, np.pi * radius**2
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
        for part, cnt in enumerate((counts[nr : nr + nc], counts[nr + nc : nr + 2 * nc], counts[nr + 2 * nc :])):
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


def visible_mask(room, xyz: np.ndarray, sid: np.ndarray) -> np.ndarray:
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


def sample_points(room, n_points: int, rng: np.random.Generator):
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

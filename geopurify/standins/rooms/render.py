"""Rendering the procedural rooms (offline stand-in): ray casting against the primitives and the
room shell, shading, and sensor noise. A frame's depth is the exact camera z of the first surface
hit, its colour the shaded albedo, its label image the surface's NYU40 id. `room` arguments are a
`geopurify.standins.rooms.layout.Room`.
"""

from __future__ import annotations

import numpy as np

from geopurify.standins.rooms.primitives import BOX, N_SHELL, NEAR

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


def render_surfaces(room, pose: np.ndarray, K: np.ndarray, hw: tuple[int, int], cull: bool = True):
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
        ti, ci = fn(
            ol,
            [c[r0:r1, c0:c1] for c in d],
            [c[r0:r1, c0:c1] for c in inv],
            room.prim_lo[i].tolist(),
            room.prim_hi[i].tolist(),
        )
        closer = ti < t[r0:r1, c0:c1]
        if closer.any():
            t[r0:r1, c0:c1][closer] = ti[closer]
            sid[r0:r1, c0:c1][closer] = N_SHELL + i
            code[r0:r1, c0:c1][closer] = ci[closer]
    t = t.astype(np.float64)
    miss = ~np.isfinite(t) | (t <= NEAR)
    t[miss], sid[miss] = 0.0, -1
    return t, sid, _normals(room, o, d, t, sid, code)


def _normals(room, o, d, t, sid, code) -> np.ndarray:
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
    return h.astype(np.float32) * np.float32(2.0**-32)


def shade(room, p: np.ndarray, n: np.ndarray, sid: np.ndarray) -> np.ndarray:
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


def sensor_noise(
    depth: np.ndarray,
    color: np.ndarray,
    rng: np.random.Generator,
    depth_rel_std: float = 0.003,
    dropout: float = 0.005,
    gain_range: float = 0.06,
    color_std: float = 0.012,
):
    """Depth x (1 + N(0, depth_rel_std^2)) (noise grows with depth, as in a structured-light sensor)
    and a `dropout` share of pixels with no return (0, as ScanNet's holes); colour x one exposure
    gain per frame + per-pixel Gaussian noise."""
    noise = rng.standard_normal(depth.shape, dtype=np.float32)
    depth = depth * (1.0 + depth_rel_std * noise)
    depth[rng.random(depth.shape, dtype=np.float32) < dropout] = 0.0
    gain = 1.0 + rng.uniform(-gain_range, gain_range)
    color = color * gain + color_std * rng.standard_normal(color.shape, dtype=np.float32)
    return depth, color

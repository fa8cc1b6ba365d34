"""Pinhole projection of points into posed views, visibility masks and a point z-buffer.

`in_bounds` is the one image mask every projection in the package uses (here, the Matterport view
selection, the renderer).

Conventions (docs/architecture.md): `pose` is camera-to-world (4, 4) in the points' world
frame, OpenCV camera axes (x right, y down, z forward); `K` is the 3x3 pinhole matrix of the
image the pixels refer to. A point projects to the pixel (col, row) = round(u, v) (pixel centres
at integer coordinates). Everything is torch, runs on the tensors' device, and accepts a batch
of views (poses (V, 4, 4), intrinsics (V, 3, 3)) as well as a single one.
"""

from __future__ import annotations

import numpy as np
import torch

_EMPTY_KEY = torch.iinfo(torch.int64).max
_Z_QUANT = 1e6  # z-buffer depth key resolution: micrometres (2^31 um = 2 km range)


def _as_tensor(a, like: torch.Tensor) -> torch.Tensor:
    """`a` (array or tensor) as a tensor on `like`'s device."""
    return (a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))).to(device=like.device)


def rescale_intrinsic(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """The 3x3 intrinsics of an image of size `from_hw` = (H, W) after resizing it to `to_hw`.

    Uses the pixel-centre convention: a pixel centre x maps to (x + 0.5) * W'/W - 0.5.
    """
    K = np.asarray(K, dtype=np.float64)[:3, :3].copy()
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def world_to_camera(pose: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Inverse of camera-to-world pose(s) (..., 4, 4), computed in float64."""
    if not torch.is_tensor(pose):  # numpy's 4x4 inverse has far less per-call overhead
        return torch.from_numpy(np.linalg.inv(np.asarray(pose, dtype=np.float64)))
    return torch.linalg.inv(pose.to(torch.float64))


def projection_matrix(pose, K, device=None, dtype=torch.float32) -> torch.Tensor:
    """(V, 3, 4) matrices P = K [R | t] mapping homogeneous world points to (u z, v z, z).

    pose (4, 4) or (V, 4, 4) camera-to-world, K (3, 3) or (V, 3, 3); composed in float64.
    """
    w2c = world_to_camera(pose).reshape(-1, 4, 4)
    K = (K if torch.is_tensor(K) else torch.as_tensor(np.asarray(K))).to(torch.float64).reshape(-1, 3, 3)
    P = torch.matmul(K[..., :3, :3], w2c[:, :3, :])
    return P.to(device=device, dtype=dtype)


def _project_soa(xyz_t: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, v, z (each (V, N), contiguous) of points given as rows xyz_t (3, N) under P (V, 3, 4)."""
    cam = torch.baddbmm(P[:, :, 3:], P[:, :, :3], xyz_t.expand(P.shape[0], 3, -1))  # (V, 3, N)
    z = cam[:, 2]
    return cam[:, 0] / z, cam[:, 1] / z, z


def project(xyz: torch.Tensor, pose, K) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into view(s).

    xyz (N, 3); pose (4, 4) or (V, 4, 4) camera-to-world; K (3, 3) or (V, 3, 3).
    Returns uv (N, 2) / (V, N, 2) float pixel coordinates (col = x, row = y) and the camera
    depth z (N,) / (V, N). Points with z <= 0 get meaningless uv; mask them with `in_image`.
    """
    xyz = torch.as_tensor(xyz)
    if not xyz.is_floating_point():
        xyz = xyz.float()
    single = np.ndim(pose) == 2 if not torch.is_tensor(pose) else pose.dim() == 2
    P = projection_matrix(pose, K, xyz.device, xyz.dtype)
    u, v, z = _project_soa(xyz.t(), P)
    uv = torch.stack([u, v], dim=-1)
    if single:
        return uv[0], z[0]
    return uv, z


def in_bounds(col, row, hw: tuple[int, int], border: int = 0):
    """Which pixel coordinates (col, row) lie inside an (H, W) image less `border` pixels on every side
    (a negative border reaches past the edges); torch tensors or numpy arrays."""
    H, W = hw
    return (col >= border) & (row >= border) & (col < W - border) & (row < H - border)


def in_image(
    uv: torch.Tensor, z: torch.Tensor, hw: tuple[int, int], border: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which projections land inside the image minus `border` pixels, in front of the camera.

    Returns (mask bool (..., N), pix int64 (..., N, 2) = rounded (col, row); pix is 0 where the
    mask is False so it can index an image safely).
    """
    pix = torch.round(uv)
    mask = (z > 0) & in_bounds(pix[..., 0], pix[..., 1], hw, border)
    pix = torch.where(mask[..., None], pix, torch.zeros_like(pix)).long()
    return mask, pix


def depth_test(z: torch.Tensor, depth_at: torch.Tensor, thr: float) -> torch.Tensor:
    """Occlusion test |depth - z| <= thr * depth; a depth of 0 (no measurement) fails."""
    return (depth_at > 0) & ((depth_at - z).abs() <= thr * depth_at)


def zbuffer(
    xyz: torch.Tensor, pose, K, hw: tuple[int, int], splat: int = 2, chunk: int = 200_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth image rendered from the points themselves, for views without a depth frame.

    Each point covers the (2*splat+1)^2 pixels around its projection, so background points
    cannot show through the gaps between sparse foreground points; each pixel keeps the
    nearest point (depths compared to the micrometre; ties: lowest index). Vectorised as one
    `scatter_reduce(amin)` of a packed int64 key (micrometre depth << 32 | point index) per
    footprint offset, in point chunks (memory ~ views x chunk).

    pose (4, 4) or (V, 4, 4). Returns depth float32 (H, W) / (V, H, W) in metres (0 = empty)
    and index int64 (H, W) / (V, H, W) of the owning point (-1 = empty).
    """
    xyz = torch.as_tensor(xyz)
    if not xyz.is_floating_point():
        xyz = xyz.float()
    n = xyz.shape[0]
    if n >= 2**32:
        raise ValueError("zbuffer packs point indices in 32 bits")
    H, W = hw
    pose_b = _as_tensor(pose, xyz).to(torch.float64)
    single = pose_b.dim() == 2
    pose_b = pose_b.reshape(-1, 4, 4)
    P = projection_matrix(pose_b, K, xyz.device, xyz.dtype)
    V = pose_b.shape[0]
    keys = torch.full((V * H * W,), _EMPTY_KEY, dtype=torch.int64, device=xyz.device)
    offsets = [(dy, dx) for dy in range(-splat, splat + 1) for dx in range(-splat, splat + 1)]
    for s in range(0, n, chunk):
        u, v, z = _project_soa(xyz[s : s + chunk].t(), P)  # (V, n_c) each
        col, row = torch.round(u), torch.round(v)
        ok = (z > 0) & in_bounds(col, row, hw, -splat)
        vi, pi = ok.nonzero(as_tuple=True)
        if vi.numel() == 0:
            continue
        c = col[vi, pi].long()
        r = row[vi, pi].long()
        zq = (z[vi, pi].double() * _Z_QUANT).round().clamp_(max=2**31 - 1).long()
        key = (zq << 32) | (pi + s)
        base = vi * (H * W)
        for dy, dx in offsets:
            rr, cc = r + dy, c + dx
            inside = in_bounds(cc, rr, hw)
            flat = base + rr * W + cc
            keys.scatter_reduce_(0, flat[inside], key[inside], reduce="amin")
    empty = keys == _EMPTY_KEY
    index = torch.where(empty, torch.full_like(keys, -1), keys & 0xFFFFFFFF)
    depth = torch.zeros(V * H * W, dtype=torch.float32, device=xyz.device)
    # exact depth of the owner (the key only holds it quantised), computed per owning view
    own = (~empty).nonzero(as_tuple=True)[0]
    if own.numel():
        v_own = own // (H * W)
        idx_own = index[own]
        pts = xyz[idx_own]
        w2c = world_to_camera(pose_b)[v_own]
        depth[own] = (torch.einsum("mj,mj->m", pts.double(), w2c[:, 2, :3]) + w2c[:, 2, 3]).float()
    depth = depth.view(V, H, W)
    index = index.view(V, H, W)
    if single:
        return depth[0], index[0]
    return depth, index


def visible(
    xyz: torch.Tensor,
    pose,
    K,
    hw: tuple[int, int],
    border: int = 10,
    thr: float = 0.05,
    depth: torch.Tensor | None = None,
    K_depth=None,
    splat: int = 2,
    chunk: int = 200_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of one view that pass the image, z > 0 and occlusion tests.

    `depth` (H, W) metres, at image size `hw`, projected with `K_depth` (defaults to K; pass it
    when the depth camera differs from the colour one). Without `depth` the occlusion test runs
    against the z-buffer of the points themselves (`zbuffer`, footprint `splat`).
    Returns (idx int64 (M,) point indices, pix int64 (M, 2) (col, row) pixels under K).
    """
    xyz = torch.as_tensor(xyz)
    if not xyz.is_floating_point():
        xyz = xyz.float()
    if depth is None:
        depth, _ = zbuffer(xyz, pose, K, hw, splat=splat, chunk=chunk)
        K_depth = None
    depth = torch.as_tensor(depth).to(device=xyz.device, dtype=torch.float32)
    if K_depth is not None and np.allclose(np.asarray(K_depth, np.float64), np.asarray(K, np.float64)):
        K_depth = None
    P = projection_matrix(pose, K, xyz.device, xyz.dtype)
    P_d = None if K_depth is None else projection_matrix(pose, K_depth, xyz.device, xyz.dtype)
    H, W = hw
    idx_out, pix_out = [], []
    for s in range(0, xyz.shape[0], chunk):
        pts_t = xyz[s : s + chunk].t()
        u, v, z = (a[0] for a in _project_soa(pts_t, P))
        col, row = torch.round(u), torch.round(v)
        mask = (z > 0) & in_bounds(col, row, hw, border)
        sel = mask.nonzero().squeeze(1)
        col, row, z = col[sel].long(), row[sel].long(), z[sel]
        if P_d is None:
            d_at = depth[row, col]
        else:  # the depth camera sees the point at another pixel
            ud, vd, z = (a[0] for a in _project_soa(pts_t[:, sel], P_d))
            cd, rd = torch.round(ud), torch.round(vd)
            ok = in_bounds(cd, rd, hw)
            d_at = torch.where(ok, depth[rd.long().clamp(0, H - 1), cd.long().clamp(0, W - 1)], torch.zeros_like(z))
        keep = depth_test(z, d_at, thr)
        idx_out.append(sel[keep] + s)
        pix_out.append(torch.stack([col[keep], row[keep]], dim=1))
    return torch.cat(idx_out), torch.cat(pix_out)

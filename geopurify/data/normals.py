"""Surface normals: from a mesh's faces (`mesh_normals`), else by local PCA over the k nearest
neighbours (`estimate_normals`, for bare point clouds).

Where a scene's normals come from is one of `NORMAL_SOURCES`, recorded as meta.json's "normals":
"mesh" (area-weighted face normals of the scan's mesh, what Sonata was trained on and what
GeoPurify's code feeds it), "analytic" (the exact surface normals of a procedural room), "pca"
(estimated at load from the points alone: no mesh), "file" (a normals.npy of unstated origin).

Mesh normals: each face's normal, weighted by its area, is added to its three vertices and the
sums are normalised; a vertex on no face, or only on zero-area faces, gets the zero vector (no
direction is known; Sonata's releases document zeros for a missing normal). The sign follows the
face winding (counter-clockwise seen from the front), so a ScanNet mesh's normals face the side
the scanner saw: floors up, ceilings and table undersides down, walls into the room.

PCA normals: the normal of a point is the eigenvector of the smallest eigenvalue of the covariance of its k
nearest neighbours (itself included). PCA gives a direction, not a sign, so every normal is then
flipped to face a viewpoint: by default a point above the middle of the scene,
`(centre_x, centre_y, z_max + max(extent_x, extent_y))` with centre the bounding-box centre.
For an indoor room this makes floors, table tops and ceilings point up (+z) and walls point into the
room, which is consistent from scene to scene (what a network taking normals as input needs).
Pass `viewpoint=` to orient toward something else, e.g. a scanner position.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from geopurify.ops.knn import fast_tree

log = logging.getLogger(__name__)

NORMAL_SOURCES = ("mesh", "analytic", "pca", "file")


def mesh_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, 3) float32 unit vertex normals of a triangle mesh: the area-weighted sum of the normals
    of the faces around each vertex, normalised; zero for vertices on no face of non-zero area."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be (N, 3), got {v.shape}")
    if f.size == 0:
        return np.zeros(v.shape, dtype=np.float32)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) vertex indices, got {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"faces index vertices outside 0..{len(v) - 1}")
    # the cross product of two edges is the face normal times twice the face's area
    weighted = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    acc = np.zeros_like(v)
    for corner in range(3):
        for axis in range(3):
            acc[:, axis] += np.bincount(f[:, corner], weights=weighted[:, axis], minlength=len(v))
    length = np.linalg.norm(acc, axis=1)
    ok = length > 1e-12 * max(1.0, float(np.abs(v).max(initial=0.0))) ** 2
    out = np.zeros_like(acc)
    out[ok] = acc[ok] / length[ok, None]
    if not ok.all():
        log.debug(
            "mesh normals: %d of %d vertices lie on no face of non-zero area (zero normal)", int((~ok).sum()), len(v)
        )
    return out.astype(np.float32)


def default_viewpoint(xyz: np.ndarray) -> np.ndarray:
    """The orientation viewpoint above the scene: bbox centre in x, y; z_max + the larger xy extent."""
    lo, hi = xyz.min(axis=0).astype(np.float64), xyz.max(axis=0).astype(np.float64)
    extent = max(float(hi[0] - lo[0]), float(hi[1] - lo[1]), 1e-6)
    return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] + extent])


def pca_normals(neigh: np.ndarray) -> np.ndarray:
    """(M, 3) unit normals of M neighbourhoods (M, k, 3): smallest-eigenvalue eigenvectors of their
    covariances (batched eigh, float64)."""
    nb = neigh.astype(np.float64)
    centred = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("mki,mkj->mij", centred, centred) / nb.shape[1]
    _, vecs = np.linalg.eigh(cov)  # eigenvalues ascending
    return vecs[:, :, 0]


def estimate_normals(
    xyz: np.ndarray, k: int = 16, viewpoint: np.ndarray | None = None, chunk: int = 65536, progress: bool | None = None
) -> np.ndarray:
    """(N, 3) float32 unit normals by PCA over each point's k nearest neighbours, flipped so
    that dot(normal, viewpoint - point) >= 0 (default viewpoint: see the module docstring).

    Neighbour search and eigen-decompositions run in chunks of `chunk` points, so memory stays
    O(chunk * k) whatever N is.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz holds NaN/inf coordinates")
    n = xyz.shape[0]
    if n == 0:
        return np.zeros((0, 3), dtype=np.float32)
    if k < 3:
        raise ValueError(f"k must be >= 3 for a plane fit, got {k}")
    k = min(k, n)
    pts = np.ascontiguousarray(xyz, dtype=np.float64)
    vp = default_viewpoint(pts) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64).reshape(3)
    tree, backend = fast_tree(pts)
    out = np.empty((n, 3), dtype=np.float32)
    starts = range(0, n, chunk)
    show = (n > 4 * chunk) if progress is None else progress
    for s in tqdm(starts, desc="normals", unit="chunk", disable=not show):
        q = pts[s : s + chunk]
        _, idx = tree.query(q, k=k)
        idx = np.asarray(idx, dtype=np.int64).reshape(len(q), k)
        nrm = pca_normals(pts[idx])
        flip = np.einsum("mi,mi->m", nrm, vp - q) < 0
        nrm[flip] *= -1.0
        out[s : s + chunk] = nrm
    log.debug("normals of %d points (k=%d, %s), oriented toward %s", n, k, backend, np.round(vp, 3).tolist())
    return out

"""Nearest neighbours, on points and on voxel grids: the searches every stage shares.

Points (`PointTree`, `fast_tree`): exact k nearest points by a kd-tree. `PointTree` is scipy's
cKDTree on one thread, with results always shaped (M, k); `fast_tree` is pykdtree's (faster
queries; scipy's when pykdtree is missing), for the bulk searches of normals, the nearest-seen fill
of lifting and the voxel graph's candidates.

Voxel grids (`knn_graph`): the exact kNN graph of voxel coordinates, self excluded, in one canonical
order (squared distance, then index), so it is the same graph on every device and by every method:
cell lists on the integer grid (`geopurify.ops.gridknn`, compiled, CPU), a sorted cell hash on the
integer grid in torch (`geopurify.ops.hashknn`, CUDA), kd-tree candidates with tie re-queries (CPU,
non-integral coordinates), or chunked exact distances (CUDA, non-integral coordinates).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

_KNN_MARGIN = 8  # extra kd-tree candidates per query, so ties at the K-th distance are seen
_KNN_ROWS = 32768  # query rows per kd-tree chunk (bounds the (rows, K + margin) candidate arrays)
_BRUTE_BYTES = 128 << 20  # budget of one (rows, V) float64 distance block (CUDA brute force)
_MAX_INT_COORD = 1 << 20  # integer extents below this have exact float64 squared distances in the kd-tree


# ----------------------------------------------------------------------------------------------
# points


class PointTree:
    """Exact nearest points of (N, D) `points` (scipy's cKDTree, one thread)."""

    def __init__(self, points):
        from scipy.spatial import cKDTree

        self.tree = cKDTree(np.asarray(points))
        self.n = int(self.tree.n)

    def query(self, queries, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(dist float64 (M, k), idx int64 (M, k)) of the k nearest points of each query point,
        nearest first."""
        q = np.asarray(queries)
        m = 1 if q.ndim == 1 else q.shape[0]
        dist, idx = self.tree.query(q, k=k, workers=1)
        return np.asarray(dist).reshape(m, k), np.asarray(idx, dtype=np.int64).reshape(m, k)


def fast_tree(points: np.ndarray):
    """(kd-tree over `points`, its backend name): pykdtree's (fast, C) when installed, else scipy's
    cKDTree; both answer `.query(q, k)`."""
    try:
        from pykdtree.kdtree import KDTree

        return KDTree(points), "pykdtree"
    except ImportError:  # pragma: no cover - pykdtree is a declared dependency
        from scipy.spatial import cKDTree

        return cKDTree(points), "scipy"


# ----------------------------------------------------------------------------------------------
# voxel grids


def knn_graph(coords, k: int = 96, method: str = "auto") -> torch.Tensor:
    """Exact k nearest neighbours of every voxel among the others -> idx (V, k) int64.

    `coords` (V, 3) int or float grid coordinates (torch or numpy). Row i lists the k voxels
    closest to voxel i, self excluded, ordered by (squared distance, index): ties at the k-th
    distance (common on an integer grid) are broken towards the smaller index, so the graph is
    one deterministic function of the coordinates on every device and by every method.
    method: "grid" (cell lists on the integer grid, compiled, CPU; integral coordinates only),
    "hash" (sorted cell hash on the integer grid, torch, any device; integral coordinates only),
    "kdtree" (CPU), "brute" (chunked exact distances + selection, any device) or "auto": on CUDA
    hash for integral coordinates within the exact int64 key range, else brute; on the CPU grid
    for integral coordinates within its extent limit, else kdtree.
    The result lives on the device of `coords`.
    """
    c = torch.as_tensor(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"coords must be (V, 3), got {tuple(c.shape)}")
    V = c.shape[0]
    if not 1 <= k <= V - 1:
        raise ValueError(f"k must be in 1..V-1 = {V - 1}, got {k}")
    if c.is_floating_point() and not torch.isfinite(c).all():
        raise ValueError("coords contain NaN/inf")
    if c.is_floating_point():
        c64 = c.double()
        if torch.equal(c64, c64.round()):
            c64 = c64.long()  # integral float coordinates: take the exact integer path
    else:
        c64 = c.long()
    grid_ok = hash_ok = False
    if not c64.is_floating_point():
        c64 = c64 - c64.min(0).values  # distances are translation-invariant; keeps the integer keys small
        ext = int(c64.max())
        grid_ok = ext < _MAX_INT_COORD
        if ext >= _MAX_INT_COORD or 3 * ext * ext * V >= 1 << 62:
            c64 = c64.double()  # too large for exact int64 keys (d2 * V + index): the float path
        hash_ok = not c64.is_floating_point()
    if method == "auto":
        method = auto_method(c.device, grid_ok, hash_ok)
    if method == "hash":
        if not hash_ok:
            raise ValueError("kNN method 'hash' needs integral coordinates whose int64 keys (d2 * V + index) fit")
        from geopurify.ops.hashknn import knn_hash

        return knn_hash(c64, k)
    if method == "grid":
        if not grid_ok:
            raise ValueError(f"kNN method 'grid' needs integral coordinates with extents below {_MAX_INT_COORD}")
        from geopurify.ops.gridknn import knn_grid

        return torch.from_numpy(knn_grid(c64.long().cpu().numpy(), k)).to(c.device)
    if method == "brute":
        return _knn_brute(c64, k)
    if method == "kdtree":
        return torch.from_numpy(_knn_kdtree(c64.cpu().numpy(), k)).to(c.device)
    raise ValueError(f"unknown kNN method {method!r} (auto | grid | hash | kdtree | brute)")


def auto_method(device, grid_ok: bool, hash_ok: bool) -> str:
    """knn_graph's choice for method "auto": on CUDA the cell hash when the coordinates are integral
    with exact int64 keys, else brute force; on the CPU the compiled cell lists for integral
    coordinates within their extent limit, else the kd-tree."""
    if torch.device(device).type == "cuda":
        return "hash" if hash_ok else "brute"
    return "grid" if grid_ok else "kdtree"


def _select_canonical(
    cand: np.ndarray, d2: np.ndarray, rows: np.ndarray, k: int, V: int, integral: bool
) -> tuple[np.ndarray, np.ndarray]:
    """From candidate neighbours (R, m) with exact squared distances, the k first by (d2, index),
    self excluded, and whether that choice is provably global: it is when some candidate lies
    strictly beyond the k-th distance (every non-candidate is at least that far) or when the
    candidates are all V voxels."""
    is_self = cand == rows[:, None]
    if integral:
        key = d2.astype(np.int64) * V + cand
        key[is_self] = np.iinfo(np.int64).max
        top = np.partition(key, k - 1, axis=1)[:, :k]
        top.sort(axis=1)
        idx, dk = top % V, top[:, k - 1] // V
        far = np.where(is_self, -1, d2).max(1)
    else:
        d2 = np.where(is_self, np.inf, d2)
        order = np.lexsort((cand, d2), axis=-1)[:, :k]
        idx = np.take_along_axis(cand, order, 1)
        dk = np.take_along_axis(d2, order[:, k - 1 : k], 1)[:, 0]
        far = np.where(is_self, -np.inf, d2).max(1)
    ok = (far > dk) | (cand.shape[1] >= V)
    return idx, ok


def _knn_kdtree(c: np.ndarray, k: int) -> np.ndarray:
    """CPU kNN: kd-tree candidates (k + 1 + margin per query), canonical selection, re-query of the
    rare rows whose tie group at the k-th distance runs past the candidates with twice as many."""
    V = c.shape[0]
    integral = c.dtype.kind in "iu"
    pts = np.ascontiguousarray(c, dtype=np.float64)
    tree, backend = fast_tree(pts)
    fast = backend == "pykdtree"

    def query(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        if fast:
            d2, cand = tree.query(pts[rows], k=m, sqr_dists=True)
        else:
            d, cand = tree.query(pts[rows], k=m, workers=-1)
            d2 = d * d
        cand = cand.astype(np.int64)
        if integral:  # exact: integer squared distances are exact in float64 at these magnitudes
            d2 = np.rint(d2).astype(np.int64)
        else:  # recompute in one fixed arithmetic so ties compare exactly
            d2 = ((c[cand] - c[rows, None]) ** 2).sum(-1)
        return cand, d2

    out = np.empty((V, k), dtype=np.int64)
    n_requery = 0
    for s in tqdm(range(0, V, _KNN_ROWS), desc="kNN graph", unit="chunk", leave=False, disable=None):
        rows = np.arange(s, min(V, s + _KNN_ROWS))
        m = min(V, k + 1 + _KNN_MARGIN)
        while rows.size:
            cand, d2 = query(rows, m)
            idx, ok = _select_canonical(cand, d2, rows, k, V, integral)
            out[rows[ok]] = idx[ok]
            rows = rows[~ok]
            n_requery += rows.size
            m = min(V, 2 * m)
    if n_requery:
        log.debug("kNN: %d re-queries for tie groups at the %d-th distance", n_requery, k)
    return out


def _knn_brute(c: torch.Tensor, k: int) -> torch.Tensor:
    """Exact kNN by chunks of rows against all voxels (the CUDA path; also runs on CPU).

    For each row: the k-th smallest squared distance dk, every voxel closer than dk, and of those at
    exactly dk the ones with the smallest indices until there are k; then ordered by (d2, index)."""
    V = c.shape[0]
    cf = c.double()
    out = torch.empty(V, k, dtype=torch.int64, device=c.device)
    rows_per = max(1, _BRUTE_BYTES // (8 * V))
    ar = torch.arange(V, device=c.device)
    for s in range(0, V, rows_per):
        e = min(V, s + rows_per)
        d2 = torch.zeros(e - s, V, dtype=torch.float64, device=c.device)
        for a in range(3):  # per axis: no (rows, V, 3) temporary
            d2 += (cf[s:e, a, None] - cf[None, :, a]) ** 2
        d2[torch.arange(e - s, device=c.device), ar[s:e]] = torch.inf
        dk = torch.topk(d2, k, dim=1, largest=False, sorted=True).values[:, k - 1 : k]
        less = d2 < dk
        tie = d2 == dk
        need = k - less.sum(1, keepdim=True)
        keep = less | (tie & (torch.cumsum(tie, 1) <= need))
        cols = keep.nonzero()[:, 1].view(e - s, k)  # row-major: ascending index within each row
        order = torch.sort(d2.gather(1, cols), dim=1, stable=True).indices
        out[s:e] = cols.gather(1, order)
    return out

"""Geometry-guided pooling (METHOD.md section 5): the voxel kNN graph, affinity weights, F <- A F.

Purification smooths per-voxel values over a fixed row-stochastic kNN matrix A:

    F(t+1)_i = sum_j W_ij F(t)_{idx_ij},   W_ij = softmax_j(cos(g_i, g_{idx_ij}) / tau),

with idx the K = 96 nearest voxels (grid coordinates, self excluded) and g the student's unit
embeddings. A is never built densely: it is the pair (idx (V, K), W (V, K)).

Two exact ways to the same labels:
- reference: pool every lifted channel F (V, C), then label = argmax_c cos(F(T)_i, w_c);
- fast: |F(T)_i| is common to all classes, so argmax_c cos(F(T)_i, w_c) = argmax_c F(T)_i . w_c/|w_c|,
  and pooling is linear, so F(T) (W_hat)^T = A^T (F W_hat^T): pool the P class scores
  S = F W_hat^T instead of the C channels (P = 20 against C = 512 on ScanNet). A new prompt's
  score column can be pooled on demand the same way.

Kernels: the graph comes from cell lists on the integer grid on CPU (`gridknn`; a kd-tree for
non-integral coordinates) and from chunked exact distances on CUDA; edge cosines from a sampled
dense-dense product (CPU) or chunked gathers (CUDA); each pooling step is one embedding_bag (a fused
gather + weighted sum) on both. Voxels come x-major sorted from voxelize, so the neighbours of
consecutive rows overlap and their gathers hit the cache. Every kernel works in row or channel chunks
so memory stays bounded (never V x K x C).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)

_KNN_MARGIN = 8  # extra kd-tree candidates per query, so ties at the K-th distance are seen
_KNN_ROWS = 32768  # query rows per kd-tree chunk (bounds the (rows, K + margin) candidate arrays)
_GATHER_BYTES = 64 << 20  # budget of one gathered (rows, K, C) block
_BRUTE_BYTES = 128 << 20  # budget of one (rows, V) float64 distance block (CUDA brute force)
_POOL_CHANNELS = 128  # channels pooled together (wider inputs go block by block: bounded temporaries)
_MAX_INT_COORD = 1 << 20  # integer extents below this have exact float64 squared distances in the kd-tree


# ----------------------------------------------------------------------------------------------
# kNN graph


def knn_graph(coords, k: int = 96, method: str = "auto") -> torch.Tensor:
    """Exact k nearest neighbours of every voxel among the others -> idx (V, k) int64.

    `coords` (V, 3) int or float grid coordinates (torch or numpy). Row i lists the k voxels
    closest to voxel i, self excluded, ordered by (squared distance, index): ties at the k-th
    distance (common on an integer grid) are broken towards the smaller index, so the graph is
    one deterministic function of the coordinates on every device and by every method.
    method: "grid" (cell lists on the integer grid, compiled, CPU; integral coordinates only),
    "kdtree" (CPU), "brute" (chunked exact distances + selection, used on CUDA) or "auto": brute
    on CUDA, else grid for integral coordinates within its extent limit, else kdtree.
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
    grid_ok = False
    if not c64.is_floating_point():
        c64 = c64 - c64.min(0).values  # distances are translation-invariant; keeps the integer keys small
        ext = int(c64.max())
        grid_ok = ext < _MAX_INT_COORD
        if ext >= _MAX_INT_COORD or 3 * ext * ext * V >= 1 << 62:
            c64 = c64.double()  # too large for exact int64 keys (d2 * V + index): the float path
    if method == "auto":
        method = "brute" if c.device.type == "cuda" else "grid" if grid_ok else "kdtree"
    if method == "grid":
        if not grid_ok:
            raise ValueError(f"kNN method 'grid' needs integral coordinates with extents below {_MAX_INT_COORD}")
        from geopurify.purify.gridknn import knn_grid

        return torch.from_numpy(knn_grid(c64.long().cpu().numpy(), k)).to(c.device)
    if method == "brute":
        return _knn_brute(c64, k)
    if method == "kdtree":
        return torch.from_numpy(_knn_kdtree(c64.cpu().numpy(), k)).to(c.device)
    raise ValueError(f"unknown kNN method {method!r} (auto | grid | kdtree | brute)")


def _select_canonical(cand: np.ndarray, d2: np.ndarray, rows: np.ndarray, k: int, V: int,
                      integral: bool) -> tuple[np.ndarray, np.ndarray]:
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
        dk = np.take_along_axis(d2, order[:, k - 1:k], 1)[:, 0]
        far = np.where(is_self, -np.inf, d2).max(1)
    ok = (far > dk) | (cand.shape[1] >= V)
    return idx, ok


def _knn_kdtree(c: np.ndarray, k: int) -> np.ndarray:
    """CPU kNN: kd-tree candidates (k + 1 + margin per query), canonical selection, re-query of the
    rare rows whose tie group at the k-th distance runs past the candidates with twice as many."""
    V = c.shape[0]
    integral = c.dtype.kind in "iu"
    pts = np.ascontiguousarray(c, dtype=np.float64)
    try:
        from pykdtree.kdtree import KDTree

        tree, fast = KDTree(pts), True
    except ImportError:  # pragma: no cover - pykdtree is a dependency; scipy is the fallback
        from scipy.spatial import cKDTree

        tree, fast = cKDTree(pts), False

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
        dk = torch.topk(d2, k, dim=1, largest=False, sorted=True).values[:, k - 1:k]
        less = d2 < dk
        tie = d2 == dk
        need = k - less.sum(1, keepdim=True)
        keep = less | (tie & (torch.cumsum(tie, 1) <= need))
        cols = keep.nonzero()[:, 1].view(e - s, k)  # row-major: ascending index within each row
        order = torch.sort(d2.gather(1, cols), dim=1, stable=True).indices
        out[s:e] = cols.gather(1, order)
    return out


# ----------------------------------------------------------------------------------------------
# affinity weights


def edge_cosines(emb: torch.Tensor, idx: torch.Tensor, method: str = "auto", chunk: int = 65536) -> torch.Tensor:
    """cos(g_i, g_{idx_ij}) for every edge -> (V, k) float32, computed in row chunks.

    method "sampled": one sampled dense-dense product per chunk (only the V k needed dot products,
    no gathered (V, k, E) copy; the CPU default); "gather": chunked gathers and batched products
    (the CUDA default)."""
    g = F.normalize(torch.as_tensor(emb).float(), dim=1)
    idx = torch.as_tensor(idx, device=g.device).long()
    V, k = idx.shape
    if g.shape[0] != V:
        raise ValueError(f"emb has {g.shape[0]} rows, idx {V}")
    out = torch.empty(V, k, dtype=torch.float32, device=g.device)
    if k == 0:
        return out
    if method == "auto":
        method = "gather" if g.device.type == "cuda" else "sampled"
    if method not in ("gather", "sampled"):
        raise ValueError(f"unknown edge method {method!r} (auto | sampled | gather)")
    if method == "gather":
        rows = max(1, _GATHER_BYTES // (4 * k * g.shape[1]))
        for s in range(0, V, rows):
            e = min(V, s + rows)
            out[s:e] = torch.bmm(g[idx[s:e]], g[s:e, :, None])[:, :, 0]
        return out
    gt = g.T  # a view: sampled_addmm reads mat2 transposed, i.e. g's own rows (no copy of g per chunk)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        for s in range(0, V, chunk):
            e = min(V, s + chunk)
            n = e - s
            crow = torch.arange(0, n * k + 1, k, dtype=torch.int64, device=g.device)
            A = torch.sparse_csr_tensor(crow, idx[s:e].reshape(-1), torch.zeros(n * k, device=g.device), size=(n, V),
                                        check_invariants=False)
            out[s:e] = torch.sparse.sampled_addmm(A, g[s:e], gt, beta=0.0).values().view(n, k)
    return out


def affinity_weights(emb: torch.Tensor, idx: torch.Tensor, tau: float = 0.05, method: str = "auto") -> torch.Tensor:
    """W (V, k) = softmax over the k neighbours of cos(g_i, g_j) / tau (METHOD.md section 5: no self
    loop, tau 0.05). Rows sum to 1."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    cos = edge_cosines(emb, idx, method)
    return torch.softmax(cos.div_(tau), dim=1)


def uniform_weights(idx: torch.Tensor) -> torch.Tensor:
    """W (V, k) = 1/k: plain kNN-mean smoothing, the baseline purification is compared against."""
    idx = torch.as_tensor(idx)
    return torch.full(idx.shape, 1.0 / max(1, idx.shape[1]), dtype=torch.float32, device=idx.device)


# ----------------------------------------------------------------------------------------------
# pooling


def _check_graph(values: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> None:
    V = values.shape[0]
    if idx.ndim != 2 or idx.shape[0] != V or W.shape != idx.shape:
        raise ValueError(f"values ({V}, C), idx (V, k) and W (V, k) must match, "
                         f"got {tuple(values.shape)}, {tuple(idx.shape)}, {tuple(W.shape)}")


def pool(values: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, steps: int = 18,
         method: str = "auto", progress: bool = True) -> torch.Tensor:
    """F(steps) with F(0) = values (V, C) and F(t+1)_i = sum_j W_ij F(t)_{idx_ij}.

    method "bag" (default, CPU and CUDA): one torch embedding_bag per step, a fused gather and
    weighted sum over each row's k neighbours (nothing of size V x k x C is materialised);
    "gather": chunked index + batched products over rows (a plain kernel kept as a cross-check).
    Channels are independent, so wide inputs are pooled in blocks of channels through all steps,
    one block after the other. A graph with k = 0 (a single voxel) leaves the values unchanged.
    Returns float32 (V, C), or (V,) for a 1-D input."""
    vals = torch.as_tensor(values)
    squeeze = vals.ndim == 1
    if squeeze:
        vals = vals[:, None]
    vals = vals.float()
    idx = torch.as_tensor(idx, device=vals.device).long()
    W = torch.as_tensor(W, device=vals.device).float()
    _check_graph(vals, idx, W)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if method == "auto":
        method = "bag"
    if method not in ("bag", "gather"):
        raise ValueError(f"unknown pooling method {method!r} (auto | bag | gather)")
    if steps == 0 or idx.shape[1] == 0 or vals.shape[1] == 0:
        out = vals.clone()
    else:
        V, C = vals.shape
        if method == "bag":
            idx = _bag_indices(idx)
        blocks = range(0, C, _POOL_CHANNELS)
        out = vals if len(blocks) == 1 else torch.empty_like(vals)
        bar = tqdm(total=len(blocks) * steps, desc="pooling", unit="step", leave=False,
                   disable=None if progress else True)
        for c0 in blocks:
            f = vals[:, c0:c0 + _POOL_CHANNELS].contiguous()
            for _ in range(steps):
                f = _step_bag(f, idx, W) if method == "bag" else _step_gather(f, idx, W)
                bar.update()
            if len(blocks) == 1:
                out = f
            else:
                out[:, c0:c0 + _POOL_CHANNELS] = f
        bar.close()
    return out[:, 0] if squeeze else out


def _bag_indices(idx: torch.Tensor) -> torch.Tensor:
    """The graph as embedding_bag reads it fastest: int32 on the CPU (half the index bytes streamed
    per step; the same gathers and sums, so bit-identical results), as it is elsewhere."""
    if idx.device.type == "cpu" and idx.shape[0] < 1 << 31:
        return idx.int()
    return idx


def _step_bag(f: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """One pooling step: row i of the result is sum_j W_ij f[idx_ij] (each row of idx is a bag)."""
    return F.embedding_bag(idx, f, per_sample_weights=W, mode="sum")


def _step_gather(f: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """One pooling step by explicit gathers of (rows, k, C) blocks of bounded size."""
    V, k = idx.shape
    rows = max(1, _GATHER_BYTES // (4 * k * f.shape[1]))
    out = torch.empty_like(f)
    for s in range(0, V, rows):
        e = min(V, s + rows)
        out[s:e] = torch.bmm(W[s:e, None, :], f[idx[s:e]])[:, 0]
    return out


# ----------------------------------------------------------------------------------------------
# classification: the reference and the fast formulation


def unit_text(text_emb: torch.Tensor) -> torch.Tensor:
    """Text embeddings scaled to unit length (P, C) float32."""
    return F.normalize(torch.as_tensor(text_emb).float(), dim=-1)


def text_scores(feat: torch.Tensor, text_emb: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """S = F W_hat^T (V, P): dot products with the unit prompt embeddings, in row chunks. Per row,
    argmax_c S equals argmax_c cos(f, w_c) (|f| is common to all classes)."""
    feat = torch.as_tensor(feat)
    w = unit_text(text_emb).to(feat.device)
    if feat.ndim != 2 or w.ndim != 2 or feat.shape[1] != w.shape[1]:
        raise ValueError(f"features (V, C) and text embeddings (P, C) must share C, "
                         f"got {tuple(feat.shape)} and {tuple(w.shape)}")
    out = torch.empty(feat.shape[0], w.shape[0], dtype=torch.float32, device=feat.device)
    for s in range(0, feat.shape[0], chunk):
        out[s:s + chunk] = feat[s:s + chunk].float() @ w.T
    return out


def cosine_scores(feat: torch.Tensor, text_emb: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """cos(f_i, w_c) (V, P), in row chunks (a zero feature scores 0 with every prompt)."""
    feat = torch.as_tensor(feat)
    out = text_scores(feat, text_emb, chunk)
    for s in range(0, feat.shape[0], chunk):
        out[s:s + chunk] /= feat[s:s + chunk].float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def pool_reference(feat: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, text_emb: torch.Tensor,
                   steps: int = 18, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference formulation: pool all C channels, classify by cosine.
    -> (labels (V,) int64, cosine scores (V, P), pooled-feature norms (V,))."""
    pooled = pool(feat, idx, W, steps, method)
    scores = cosine_scores(pooled, text_emb)
    norms = pooled.norm(dim=1)
    return scores.argmax(1), scores, norms


def pool_scores(feat: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, text_emb: torch.Tensor,
                steps: int = 18, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Fast formulation: pool the class scores S = F W_hat^T (P channels instead of C).
    -> (labels (V,) int64, pooled scores (V, P) = F(T) . w_c/|w_c|); same labels as pool_reference."""
    pooled = pool(text_scores(feat, text_emb), idx, W, steps, method)
    return pooled.argmax(1), pooled

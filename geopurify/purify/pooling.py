"""Geometry-guided pooling (METHOD.md section 5): affinity weights over the voxel kNN graph, F <- A F.

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

Kernels: the graph is `geopurify.ops.knn.knn_graph` (cell lists on the integer grid on CPU, a
sorted cell hash on CUDA). On the CPU, edge dot products and the T pooling steps are compiled kernels
(`geopurify.ops.poolkernels`, numba, parallel over the voxels) on the fixed-K neighbour arrays;
their pooling is equal bit for bit to torch's embedding_bag steps, their dot products differ from
torch's sampled product in the last bits only. On CUDA: edge cosines from chunked gathers, each
pooling step one embedding_bag (a fused gather + weighted sum). Voxels come x-major sorted from
voxelize, so the neighbours of consecutive rows overlap and their gathers hit the cache. Every
kernel works in row or channel chunks so memory stays bounded (never V x K x C).
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from tqdm import tqdm

from geopurify.ops.poolkernels import edge_dots, pool_steps
from geopurify.ops.scores import cosine_scores, text_scores

log = logging.getLogger(__name__)

_GATHER_BYTES = 64 << 20  # budget of one gathered (rows, K, C) block
_POOL_CHANNELS = 128  # channels pooled together (wider inputs go block by block: bounded temporaries)


# ----------------------------------------------------------------------------------------------
# affinity weights


def edge_cosines(emb: torch.Tensor, idx: torch.Tensor, method: str = "auto", chunk: int = 65536) -> torch.Tensor:
    """cos(g_i, g_{idx_ij}) for every edge -> (V, k) float32, computed in row chunks.

    method "compiled": the compiled kernel of `geopurify.ops.poolkernels` (the CPU default);
    "sampled": one sampled dense-dense product per chunk (only the V k needed dot products, no
    gathered (V, k, E) copy); "gather": chunked gathers and batched products (the CUDA default).
    The three differ in the order of the sums only (last bits)."""
    g = F.normalize(torch.as_tensor(emb).float(), dim=1)
    idx = torch.as_tensor(idx, device=g.device).long()
    V, k = idx.shape
    if g.shape[0] != V:
        raise ValueError(f"emb has {g.shape[0]} rows, idx {V}")
    out = torch.empty(V, k, dtype=torch.float32, device=g.device)
    if k == 0:
        return out
    if method == "auto":  # the compiled kernel has no autograd: sampled for inputs that need gradients
        method = "gather" if g.device.type == "cuda" else ("sampled" if g.requires_grad else "compiled")
    if method not in ("gather", "sampled", "compiled"):
        raise ValueError(f"unknown edge method {method!r} (auto | compiled | sampled | gather)")
    if method == "compiled":
        if g.device.type != "cpu":
            raise ValueError("edge method 'compiled' runs on the CPU only")
        return torch.from_numpy(edge_dots(g.contiguous().numpy(), idx.numpy()))
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
            A = torch.sparse_csr_tensor(
                crow, idx[s:e].reshape(-1), torch.zeros(n * k, device=g.device), size=(n, V), check_invariants=False
            )
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
        raise ValueError(
            f"values ({V}, C), idx (V, k) and W (V, k) must match, "
            f"got {tuple(values.shape)}, {tuple(idx.shape)}, {tuple(W.shape)}"
        )


def pool(
    values: torch.Tensor,
    idx: torch.Tensor,
    W: torch.Tensor,
    steps: int = 18,
    method: str = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """F(steps) with F(0) = values (V, C) and F(t+1)_i = sum_j W_ij F(t)_{idx_ij}.

    method "compiled" (the CPU default): all steps in one call of the compiled kernel of
    `geopurify.ops.poolkernels`; "bag" (the CUDA default): one torch embedding_bag per step, a fused
    gather and weighted sum over each row's k neighbours (nothing of size V x k x C is
    materialised); the two are equal bit for bit. "gather": chunked index + batched products over
    rows (a plain kernel kept as a cross-check). Channels are independent, so wide inputs are
    pooled in blocks of channels through all steps, one block after the other. A graph with k = 0
    (a single voxel) leaves the values unchanged. Returns float32 (V, C), or (V,) for a 1-D input."""
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
    if method == "auto":  # the compiled kernel has no autograd: bag for inputs that need gradients
        grad = vals.requires_grad or W.requires_grad
        method = "compiled" if vals.device.type == "cpu" and not grad else "bag"
    if method not in ("compiled", "bag", "gather"):
        raise ValueError(f"unknown pooling method {method!r} (auto | compiled | bag | gather)")
    if method == "compiled" and vals.device.type != "cpu":
        raise ValueError("pooling method 'compiled' runs on the CPU only")
    if steps == 0 or idx.shape[1] == 0 or vals.shape[1] == 0:
        out = vals.clone()
    else:
        V, C = vals.shape
        if method in ("bag", "compiled"):
            idx = _bag_indices(idx)
        blocks = range(0, C, _POOL_CHANNELS)
        out = vals if len(blocks) == 1 else torch.empty_like(vals)
        bar = tqdm(
            total=len(blocks) * steps, desc="pooling", unit="step", leave=False, disable=None if progress else True
        )
        for c0 in blocks:
            f = vals[:, c0 : c0 + _POOL_CHANNELS].contiguous()
            if method == "compiled":
                f = torch.from_numpy(pool_steps(f.numpy(), idx.numpy(), W.numpy(), steps))
                bar.update(steps)
            else:
                for _ in range(steps):
                    f = _step_bag(f, idx, W) if method == "bag" else _step_gather(f, idx, W)
                    bar.update()
            if len(blocks) == 1:
                out = f
            else:
                out[:, c0 : c0 + _POOL_CHANNELS] = f
        bar.close()
    return out[:, 0] if squeeze else out


def _bag_indices(idx: torch.Tensor) -> torch.Tensor:
    """The graph as embedding_bag and the compiled kernel read it fastest: int32 on the CPU (half the
    index bytes streamed per step; the same gathers and sums, so bit-identical results), as it is
    elsewhere."""
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
# classification: the reference and the fast formulation (scores: geopurify.ops.scores)


def pool_reference(
    feat: torch.Tensor,
    idx: torch.Tensor,
    W: torch.Tensor,
    text_emb: torch.Tensor,
    steps: int = 18,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference formulation: pool all C channels, classify by cosine.
    -> (labels (V,) int64, cosine scores (V, P), pooled-feature norms (V,))."""
    pooled = pool(feat, idx, W, steps, method)
    scores = cosine_scores(pooled, text_emb)
    norms = pooled.norm(dim=1)
    return scores.argmax(1), scores, norms


def pool_scores(
    feat: torch.Tensor,
    idx: torch.Tensor,
    W: torch.Tensor,
    text_emb: torch.Tensor,
    steps: int = 18,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast formulation: pool the class scores S = F W_hat^T (P channels instead of C).
    -> (labels (V,) int64, pooled scores (V, P) = F(T) . w_c/|w_c|); same labels as pool_reference."""
    pooled = pool(text_scores(feat, text_emb), idx, W, steps, method)
    return pooled.argmax(1), pooled

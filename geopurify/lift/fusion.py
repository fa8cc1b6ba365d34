"""Multi-view fusion of per-view point features (METHOD.md section 1).

Views arrive one at a time as (point indices, features) and are folded into per-point state,
so memory never holds an N x views array:
- `MeanFusion`: running sum and count (OpenScene's average; the default).
- consensus fusion (GeoPurify's code): the class c* = argmax of the view-averaged logits
  (`consensus_classes`, computed from the mean feature since logits are linear in it), then a
  second pass keeps each point's top-k views by their logit for c* (`TopKFusion`, memory
  N x k x C) and softmax-weights their features.
- `nearest_fill`: points no view saw take the fused feature of their nearest seen point.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


class MeanFusion:
    """Per-point running sum and view count; `mean()` is the average over the views that saw it."""

    def __init__(self, n_points: int, dim: int, device: str | torch.device = "cpu"):
        self.sum = torch.zeros(n_points, dim, dtype=torch.float32, device=device)
        self.count = torch.zeros(n_points, dtype=torch.int32, device=device)

    def add(self, idx: torch.Tensor, feat: torch.Tensor) -> None:
        """Fold one view in: `idx` (M,) distinct point indices, `feat` (M, C) their features."""
        self.sum.index_add_(0, idx, feat.to(self.sum.dtype))
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))

    @property
    def seen(self) -> torch.Tensor:
        return self.count > 0

    def mean(self, inplace: bool = False) -> torch.Tensor:
        """(N, C) float32 mean feature; zero for points no view saw.

        `inplace` divides the running sum itself (saves an N x C copy; no more `add` after it).
        """
        denom = self.count.clamp(min=1).to(self.sum.dtype)[:, None]
        return self.sum.div_(denom) if inplace else self.sum / denom


def consensus_classes(mean_feat: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """argmax_c of the view-averaged logits; (N,) int64.

    mean_v(s * f_v . t_c) = s * (mean_v f_v) . t_c, so the mean feature gives the same argmax as
    averaging per-view logits, for any positive logit scale s.
    """
    return (mean_feat @ text_emb.to(mean_feat).t()).argmax(dim=1)


class TopKFusion:
    """Second consensus pass: per point, keep the k views with the highest logit for its class.

    `target` (N, C) is the text embedding of each point's consensus class (text_emb[c*]);
    a view's score for a point is `logit_scale * feat . target`. `result()` softmax-weights the
    kept features by their scores (fewer than k views: the empty slots weigh nothing).
    """

    def __init__(self, target: torch.Tensor, k: int = 3, logit_scale: float = 100.0):
        n, dim = target.shape
        self.target = target.float()
        self.k = int(k)
        self.logit_scale = float(logit_scale)
        self.scores = torch.full((n, self.k), -torch.inf, dtype=torch.float32, device=target.device)
        self.feats = torch.zeros(n, self.k, dim, dtype=torch.float32, device=target.device)

    def add(self, idx: torch.Tensor, feat: torch.Tensor) -> None:
        """Fold one view in: `idx` (M,) distinct point indices, `feat` (M, C) their features."""
        feat = feat.float()
        s = self.logit_scale * (feat * self.target[idx]).sum(dim=1)
        cur = self.scores[idx]  # (M, k)
        low, slot = cur.min(dim=1)
        take = s > low  # strict: on ties the earlier view stays
        rows, slots = idx[take], slot[take]
        self.scores[rows, slots] = s[take]
        self.feats[rows, slots] = feat[take]

    def result(self) -> torch.Tensor:
        """(N, C) softmax(score)-weighted sum of the kept features; zero for unseen points."""
        w = torch.softmax(self.scores, dim=1)
        w = torch.nan_to_num(w, nan=0.0)  # all slots empty (unseen point): softmax of -inf is NaN
        return torch.einsum("nk,nkc->nc", w, self.feats)


def nearest_fill(xyz: np.ndarray | torch.Tensor, feat: torch.Tensor, seen: torch.Tensor,
                 inplace: bool = False) -> torch.Tensor:
    """Give every unseen point the feature of its nearest seen point (Euclidean, kd-tree).

    Returns a new tensor (or `feat` itself, filled, when `inplace`); if nothing was seen the
    features are returned unchanged (zeros).
    """
    from pykdtree.kdtree import KDTree

    seen_np = seen.cpu().numpy().astype(bool)
    out = feat if inplace else feat.clone()
    if seen_np.all():
        return out
    if not seen_np.any():
        log.warning("no point was seen by any view; features stay zero")
        return out
    pts = xyz.cpu().numpy() if torch.is_tensor(xyz) else np.asarray(xyz)
    pts = pts.astype(np.float64)
    seen_idx = np.flatnonzero(seen_np)
    unseen_idx = np.flatnonzero(~seen_np)
    _, nn = KDTree(np.ascontiguousarray(pts[seen_idx])).query(np.ascontiguousarray(pts[unseen_idx]), k=1)
    src = torch.as_tensor(seen_idx[nn.astype(np.int64)], device=feat.device)
    out[torch.as_tensor(unseen_idx, device=feat.device)] = feat[src]
    return out

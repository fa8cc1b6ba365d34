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

from geopurify.ops.knn import fast_tree
from geopurify.ops.scores import classify_by_text

log = logging.getLogger(__name__)


class MeanFusion:
    """Per-point running sum and view count; `mean()` is the average over the views that saw it.

    Views come in either as gathered features (`add`) or, cheaper, as rows of a small per-view
    table such as a feature map's cells (`add_table`): those are kept as (point, row) pairs plus
    the table, and folded into the sum once the pending tables reach `group_bytes`, by one sorted
    `embedding_bag(mode="sum")` over all pending pairs, which never materialises the (M, C)
    gathered features. Memory: the N x C sum plus one group of tables and their pairs.
    """

    def __init__(self, n_points: int, dim: int, device: str | torch.device = "cpu", group_bytes: int = 256 << 20):
        self.n, self.dim, self.device = int(n_points), int(dim), device
        self.group_bytes = int(group_bytes)
        self._sum: torch.Tensor | None = None  # allocated on first use (the first group can be the sum)
        self.count = torch.zeros(n_points, dtype=torch.int32, device=device)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._tables: list[torch.Tensor] = []
        self._rows = 0
        self._bytes = 0

    def _count(self, idx: torch.Tensor) -> None:
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))

    def add(self, idx: torch.Tensor, feat: torch.Tensor) -> None:
        """Fold one view in: `idx` (M,) distinct point indices, `feat` (M, C) their features."""
        self.sum.index_add_(0, idx, feat.to(torch.float32))
        self._count(idx)

    def add_table(self, idx: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> None:
        """Fold one view in: point idx[m] takes feature table[rows[m]]; `idx` (M,) distinct, `table` (R, C)."""
        self._count(idx)
        self._pairs.append((idx, rows.to(torch.int64) + self._rows))
        self._tables.append(table.to(torch.float32))
        self._rows += table.shape[0]
        self._bytes += table.numel() * 4 + idx.numel() * 16
        if self._bytes >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pairs:
            return
        idx = torch.cat([p[0] for p in self._pairs])
        rows = torch.cat([p[1] for p in self._pairs])
        table = torch.cat(self._tables) if len(self._tables) > 1 else self._tables[0]
        self._pairs, self._tables, self._rows, self._bytes = [], [], 0, 0
        order = torch.argsort(idx, stable=True)
        per_point = torch.bincount(idx, minlength=self.n)
        offsets = torch.cumsum(per_point, 0) - per_point
        group = torch.nn.functional.embedding_bag(rows[order], table, offsets, mode="sum")
        if self._sum is None:
            self._sum = group
        else:
            self._sum += group

    @property
    def sum(self) -> torch.Tensor:
        """(N, C) float32 sum of every view's feature."""
        self._flush()
        if self._sum is None:
            self._sum = torch.zeros(self.n, self.dim, dtype=torch.float32, device=self.device)
        return self._sum

    @property
    def seen(self) -> torch.Tensor:
        return self.count > 0

    def mean(self, inplace: bool = False) -> torch.Tensor:
        """(N, C) float32 mean feature; zero for points no view saw.

        `inplace` divides the running sum itself (saves an N x C copy; no more adding after it).
        """
        total = self.sum
        denom = self.count.clamp(min=1).to(total.dtype)[:, None]
        return total.div_(denom) if inplace else total / denom


def consensus_classes(mean_feat: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """argmax_c of the view-averaged logits; (N,) int64.

    mean_v(s * f_v . t_c) = s * (mean_v f_v) . t_c, so the mean feature gives the same argmax as
    averaging per-view logits, for any positive logit scale s: the text classifier of the mean feature.
    """
    return classify_by_text(mean_feat, text_emb)


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


def nearest_fill(
    xyz: np.ndarray | torch.Tensor, feat: torch.Tensor, seen: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """Give every unseen point the feature of its nearest seen point (Euclidean, kd-tree).

    Returns a new tensor (or `feat` itself, filled, when `inplace`); if nothing was seen the
    features are returned unchanged (zeros).
    """
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
    tree, _ = fast_tree(np.ascontiguousarray(pts[seen_idx]))
    _, nn = tree.query(np.ascontiguousarray(pts[unseen_idx]), k=1)
    src = torch.as_tensor(seen_idx[nn.astype(np.int64)], device=feat.device)
    out[torch.as_tensor(unseen_idx, device=feat.device)] = feat[src]
    return out

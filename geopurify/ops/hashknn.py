"""Exact k nearest neighbours on an integer voxel grid by a sorted cell hash, in torch (the CUDA kNN).

The same canonical graph as `geopurify.ops.knn.knn_graph` (self excluded, ordered by (squared
distance, index)), computed with tensor operations only, so it runs on CUDA (and on the CPU, where
the tests compare it with the compiled cell lists and the kd-tree, bit for bit).

The voxels are bucketed into cubic cells of side s voxels; the hash of a cell is its linearised
index (cx * ny + cy) * nz + cz, and sorting the voxels by it gives each occupied cell a run of
voxels (within a cell in index order) and a sorted key table to look cells up by binary search
(`torch.searchsorted`). For a batch of queries and a radius r, the candidates of a query in cell Q
are the voxels of the occupied cells within Chebyshev distance r of Q; every other voxel is at
squared distance >= bound_r(q) (q's distance to the faces of that cube of cells, squared; sides with
no cells beyond them do not count). Once k candidates lie strictly closer than the bound, the k
first candidates by (squared distance, index) are the k nearest overall, ties at the k-th distance
included; the other queries go round again with r doubled, until the cube covers the grid. Squared
distances are exact integers and a candidate's sort key is d2 * V + index (int64), so selection is
one `topk` per batch. Batches are sized to bound memory: (queries x cells) for the look-up and
(queries x longest candidate list) for the selection, each at most `_BUDGET` elements.
"""

from __future__ import annotations

import torch

_BUDGET = 1 << 24  # elements of one (rows, columns) int64 work array (128 MB)
_INF = (1 << 62) - 1
_KEY_MAX = torch.iinfo(torch.int64).max


def cell_side(c: torch.Tensor, k: int) -> int:
    """Cell side s in voxels: the smallest power of two whose occupied cells hold k / 8 voxels or more
    (mean over the voxels of the voxels sharing their cell), so that the cells within radius 1 or 2
    of a query usually hold k candidates closer than the bound (scene0000_00 at 2 cm, K = 96: s = 8,
    ~180 candidates per query at r = 1). Only speed depends on s."""
    ext = int(c.max()) + 1
    s = 1
    while True:
        cell = c // s
        nc = cell.max(0).values + 1
        key = (cell[:, 0] * nc[1] + cell[:, 1]) * nc[2] + cell[:, 2]
        _, cnt = torch.unique(key, return_counts=True)
        if (cnt.double() ** 2).sum() / c.shape[0] >= k / 8 or s >= ext:
            return s
        s *= 2


class _Cells:
    """The sorted cell hash of integer coordinates c (V, 3) >= 0 for cell side s."""

    def __init__(self, c: torch.Tensor, s: int):
        self.s = s
        cell = c // s
        self.nc = cell.max(0).values + 1  # (3,) cells per axis
        key = (cell[:, 0] * self.nc[1] + cell[:, 1]) * self.nc[2] + cell[:, 2]
        key_sorted, self.order = torch.sort(key, stable=True)  # by cell; within a cell by index
        self.keys, counts = torch.unique_consecutive(key_sorted, return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        self.coords = torch.stack(  # (n_cells, 3) coordinates of the occupied cells
            [self.keys // (self.nc[1] * self.nc[2]), self.keys // self.nc[2] % self.nc[1], self.keys % self.nc[2]], 1
        )
        self.cell = cell

    def near(self, qcell: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, found) (B, M): the occupied cells within Chebyshev distance r of each query cell
        (B, 3), as positions in the cell table; `found` False marks the padding. The (2r+1)^3
        neighbouring keys are looked up when fewer than the occupied cells, else every cell is tested."""
        n = self.keys.shape[0]
        m = (2 * r + 1) ** 3
        if m < n:
            ar = torch.arange(-r, r + 1, device=qcell.device)
            off = torch.cartesian_prod(ar, ar, ar)  # (m, 3)
            nb = qcell[:, None, :] + off[None]  # (B, m, 3)
            inside = ((nb >= 0) & (nb < self.nc)).all(2)
            key = (nb[..., 0] * self.nc[1] + nb[..., 1]) * self.nc[2] + nb[..., 2]
            pos = torch.searchsorted(self.keys, key.clamp_min(0)).clamp_max(n - 1)
            return pos, inside & (self.keys[pos] == key)
        cheb = (self.coords[None] - qcell[:, None, :]).abs().amax(2)  # (B, n)
        pos = torch.arange(n, device=qcell.device).expand(qcell.shape[0], n)
        return pos, cheb <= r

    def bound(self, q: torch.Tensor, qcell: torch.Tensor, r: int) -> torch.Tensor:
        """(B,) squared distance from each query voxel to the nearest voxel that may lie outside its
        cube of cells within Chebyshev distance r; _INF when no cell lies outside."""
        o = q - qcell * self.s
        lo = torch.where(qcell - r > 0, r * self.s + o + 1, _INF)
        hi = torch.where(qcell + r < self.nc - 1, (r + 1) * self.s - o, _INF)
        m = torch.minimum(lo, hi).amin(1)
        return torch.where(m >= _INF, _INF, m * m)


def _batch(c: torch.Tensor, cells: _Cells, rows: torch.Tensor, r: int, k: int, out: torch.Tensor) -> torch.Tensor:
    """Answer the queries `rows` whose k nearest are certain at radius r (written to `out`); returns
    the rows that need a larger radius."""
    V = c.shape[0]
    dev = c.device
    qcell = cells.cell[rows]
    pos, found = cells.near(qcell, r)
    cnt = torch.where(found, cells.counts[pos], 0)  # (B, M) voxels per looked-up cell
    L = cnt.sum(1)  # (B,) candidates per query
    bound = cells.bound(c[rows], qcell, r)
    pending = []
    # selection sub-batches: rows whose dense (rows, longest list) array stays within the budget
    cum = torch.cumsum(L, 0)
    lmax = max(int(L.max()), 1)
    per = max(1, _BUDGET // lmax)
    for s in range(0, rows.shape[0], per):
        e = min(rows.shape[0], s + per)
        cnt_flat = cnt[s:e].reshape(-1)
        total = int(cum[e - 1] - (cum[s - 1] if s else 0))
        seg = torch.repeat_interleave(torch.arange(cnt_flat.shape[0], device=dev), cnt_flat, output_size=total)
        first = (torch.cumsum(cnt_flat, 0) - cnt_flat)[seg]
        sorted_pos = cells.starts[pos[s:e].reshape(-1)][seg] + torch.arange(total, device=dev) - first
        vox = cells.order[sorted_pos]  # candidate voxel indices, flat
        row = seg // pos.shape[1]  # its query, 0..e-s-1
        Ls = L[s:e]
        col = torch.arange(total, device=dev) - (torch.cumsum(Ls, 0) - Ls)[row]
        qi = rows[s:e][row]
        d2 = ((c[vox] - c[qi]) ** 2).sum(1)
        me = vox == qi
        near = (d2 < bound[s:e][row]) & ~me
        n_near = torch.zeros(e - s, dtype=torch.int64, device=dev).index_add_(0, row, near.long())
        ok = n_near >= k
        key = torch.full((e - s, max(int(Ls.max()), k)), _KEY_MAX, dtype=torch.int64, device=dev)
        key[row, col] = torch.where(me, _KEY_MAX, d2 * V + vox)
        top = torch.topk(key[ok], k, dim=1, largest=False, sorted=True).values
        out[rows[s:e][ok]] = top % V
        pending.append(rows[s:e][~ok])
    return torch.cat(pending) if pending else rows[:0]


def knn_hash(c: torch.Tensor, k: int, s: int | None = None) -> torch.Tensor:
    """Canonical k nearest neighbours (self excluded, ordered by (squared distance, index)) of
    integer coordinates c (V, 3) >= 0 -> (V, k) int64 on c's device. The caller keeps
    3 * extent^2 * V below 2^62 (int64 sort keys). s: cell side (default `cell_side`)."""
    c = c.long()
    V = c.shape[0]
    if c.ndim != 2 or c.shape[1] != 3 or (V and int(c.min()) < 0):
        raise ValueError("hash kNN needs (V, 3) non-negative integer coordinates")
    if not 1 <= k <= V - 1:
        raise ValueError(f"k must be in 1..V-1 = {V - 1}, got {k}")
    cells = _Cells(c, cell_side(c, k) if s is None else int(s))
    out = torch.empty(V, k, dtype=torch.int64, device=c.device)
    rmax = int(cells.nc.max())  # a cube this wide covers the grid
    rows = torch.arange(V, device=c.device)
    r = 1
    while rows.numel():
        m = min((2 * r + 1) ** 3, cells.keys.shape[0])  # cells looked up per query
        per = max(1, _BUDGET // m)
        rows = torch.cat([_batch(c, cells, rows[i : i + per], r, k, out) for i in range(0, rows.numel(), per)])
        if r >= rmax and rows.numel():  # pragma: no cover - the bound is infinite there
            raise RuntimeError("hash kNN: queries left after covering the grid")
        r = min(2 * r, rmax)
    return out

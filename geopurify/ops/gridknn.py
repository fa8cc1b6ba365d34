"""Exact k nearest neighbours on an integer voxel grid by cell lists (the CPU kNN of purification).

The voxels are bucketed into cubic cells of side s voxels and stored sorted by cell key
(cx, cy, cz) x-major (a CSR layout: cell -> its run of voxels, (cx, cy) column -> its run of
cells, looked up by binary search). For a query voxel q in cell Q the candidates are the voxels
of the cells within Chebyshev distance r of Q, gathered shell by shell (shell r: the cells at
distance exactly r). Every voxel outside that cube is at squared distance >= bound_r(q) (q's
distance to the cube's faces, squared), so once k candidates lie strictly closer than bound_r(q),
the k best by (squared distance, index) among the candidates are the k best overall, ties at the
k-th distance included; otherwise r grows by one until the cube covers the grid. Squared distances
are exact integers, so the result is the canonical graph of `pooling.knn_graph`, equal bit for bit
to its kd-tree and brute-force methods.

Per query, the candidates closer than the bound are counted in a histogram of their squared
distances (small integers), which gives the k-th distance and a stable counting sort into
(distance, index) order; distances beyond the histogram (sparse regions, huge extents) take a
sort instead. Queries run cell by cell in key order, so consecutive queries share their gathered
candidates, and each starts at the r its predecessor needed. Blocks of cells run in threads (the
compiled kernels release the GIL). Memory is O(V) besides the (V, k) result. numba compiles the
kernels on their first use after an install (20-70 s on a loaded 2-core machine) and caches them
beside this file (or in the user's cache directory), so later processes only load them; processes
starting together (two test workers, two commands) take turns on a lock file for that first use, so
one compiles and the others load its cache instead of compiling the same kernels at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

_HIST = 4095  # histogram length: squared distances below this are counted, larger ones sorted
_MAX_EXTENT = 1 << 20  # per-axis extent limit: cell keys and squared distances stay far inside int64
_OCCUPANCY = 10.0  # cell side: the smallest power of two whose cells hold this many voxels (voxel-weighted mean)
_INF = np.int64(1) << np.int64(62)


@njit(cache=True, nogil=True)
def _search(a, lo, hi, v):
    """First position in lo..hi of sorted `a` with a[pos] >= v (hi when none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _bound(q, cell, r, s, nc):
    """Smallest squared distance from voxel q (in `cell`) to any voxel outside the cube of cells
    within Chebyshev distance r (sides with no cells beyond them do not count); _INF if none."""
    m = _INF
    for a in range(3):
        o = q[a] - cell[a] * s
        if cell[a] - r > 0:
            m = min(m, r * s + o + 1)
        if cell[a] + r < nc[a] - 1:
            m = min(m, (r + 1) * s - o)
    return _INF if m == _INF else m * m


@njit(cache=True, nogil=True)
def _insertion_sort(a, i0, i1):
    for i in range(i0 + 1, i1):
        v = a[i]
        j = i - 1
        while j >= i0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@njit(cache=True, nogil=True)
def _grow(a, n):
    """a with room for at least n elements (contents kept)."""
    if a.shape[0] >= n:
        return a
    b = np.empty(max(n, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def _gather(cs, oidx, cc, cstart, colkeys, colstart, nc, cell, r0, r1, cnt, bx, by, bz, bi, shell_end):
    """Append to the candidate buffers bx, by, bz (coordinates) and bi (indices) the voxels of the
    cells at Chebyshev distance r0..r1 from `cell`, ordered by that distance (shell 0 is the cell
    itself, in index order); shell_end[r] = end of shell r. Returns the buffers (grown if needed)."""
    n0 = 0 if r0 == 0 else shell_end[r0 - 1]
    cnt[r0 : r1 + 1] = 0
    for rep in range(2):  # 1: count the voxels of each shell, 2: copy them
        if rep == 1:
            n = n0
            for r in range(r0, r1 + 1):
                m = cnt[r]
                cnt[r] = n  # write cursor of shell r
                n += m
                shell_end[r] = n
            if bx.shape[0] < n:
                bx, by, bz, bi = _grow(bx, n), _grow(by, n), _grow(bz, n), _grow(bi, n)
        for x in range(max(cell[0] - r1, 0), min(cell[0] + r1, nc[0] - 1) + 1):
            kx = x * nc[1]
            col = _search(colkeys, 0, colkeys.shape[0], kx + max(cell[1] - r1, 0))
            ylast = kx + min(cell[1] + r1, nc[1] - 1)
            while col < colkeys.shape[0] and colkeys[col] <= ylast:
                dxy = max(abs(x - cell[0]), abs(colkeys[col] - kx - cell[1]))
                c = _search(cc[:, 2], colstart[col], colstart[col + 1], cell[2] - r1)
                while c < colstart[col + 1] and cc[c, 2] <= cell[2] + r1:
                    sh = max(dxy, abs(cc[c, 2] - cell[2]))
                    if sh >= r0:
                        if rep == 0:
                            cnt[sh] += cstart[c + 1] - cstart[c]
                        else:
                            w = cnt[sh]
                            for j in range(cstart[c], cstart[c + 1]):
                                bx[w] = cs[j, 0]
                                by[w] = cs[j, 1]
                                bz[w] = cs[j, 2]
                                bi[w] = oidx[j]
                                w += 1
                            cnt[sh] = w
                    c += 1
                col += 1
    return bx, by, bz, bi


@njit(cache=True, nogil=True)
def _select(d2, ix, n, bound, k, hist, buf, row):
    """row (k,) = the first k by (squared distance, index) of n >= k candidates (d2[:n], ix[:n]),
    all closer than `bound`. Returns the k-th distance and the work buffer (grown if needed)."""
    eb = min(bound, _HIST)
    hist[: eb + 1] = 0
    for j in range(n):  # histogram of the distances below eb (bucket eb: the rest)
        hist[min(d2[j], eb)] += 1
    if n - hist[eb] < k:  # the k-th distance is beyond the histogram: sort
        o = np.argsort(ix[:n])  # indices are distinct; then a stable sort by distance
        dd, ii = d2[:n][o], ix[:n][o]
        o = np.argsort(dd, kind="mergesort")[:k]
        row[:] = ii[o]
        return dd[o[k - 1]], buf
    acc = 0
    dk = 0
    while acc + hist[dk] < k:
        acc += hist[dk]
        dk += 1
    start = 0
    for d in range(dk + 1):  # counting sort into buf: first slot of each distance up to dk
        h = hist[d]
        hist[d] = start
        start += h
    hist[dk + 1] = start  # farther candidates all go to the one slot after the others
    buf = _grow(buf, start + 1)
    for j in range(n):  # no branches: the order of the distances is unpredictable
        d = min(d2[j], dk + 1)
        w = hist[d]
        buf[w] = ix[j]
        hist[d] = w + (d <= dk)
    g0 = 0
    for d in range(dk + 1):  # within one distance: ascending index
        g1 = hist[d]
        if g1 - g0 > 32:
            buf[g0:g1].sort()
        elif g1 - g0 > 1:
            _insertion_sort(buf, g0, g1)
        g0 = g1
    row[:] = buf[:k]
    return dk, buf


@njit(cache=True, nogil=True)
def _knn_block(cs, oidx, cc, cstart, colkeys, colstart, nc, s, k, c0, c1, out):
    """out[oidx[p]] = the k nearest voxels of every sorted voxel p in cells c0..c1-1."""
    rmax = max(nc[0], max(nc[1], nc[2]))  # a cube this wide covers the grid
    shell_end = np.zeros(rmax + 1, np.int64)
    bx = np.empty(1024, np.int64)
    by = np.empty(1024, np.int64)
    bz = np.empty(1024, np.int64)
    bi = np.empty(1024, np.int64)
    d2 = np.empty(1024, np.int64)
    ix = np.empty(1024, np.int64)
    hist = np.zeros(_HIST + 2, np.int64)
    buf = np.empty(k + 1, np.int64)
    per_shell = np.zeros(rmax + 1, np.int64)
    row = np.empty(k, np.int64)
    rhint = 1
    for ci in range(c0, c1):
        cell = cc[ci]
        R = -1  # shells gathered: 0..R
        for p in range(cstart[ci], cstart[ci + 1]):
            me = p - cstart[ci]  # position of the query among the candidates (shell 0 is the own cell)
            r = rhint
            x, y, z = cs[p, 0], cs[p, 1], cs[p, 2]
            while True:
                if r > R:  # gather more shells
                    R1 = min(r, rmax)
                    bx, by, bz, bi = _gather(
                        cs,
                        oidx,
                        cc,
                        cstart,
                        colkeys,
                        colstart,
                        nc,
                        cell,
                        R + 1,
                        R1,
                        per_shell,
                        bx,
                        by,
                        bz,
                        bi,
                        shell_end,
                    )
                    R = R1
                    d2 = _grow(d2, bx.shape[0])
                    ix = _grow(ix, bx.shape[0])
                rr = min(r, R)
                bound = _bound(cs[p], cell, rr, s, nc)
                m = 0  # the candidates closer than the bound, the query itself left out (no branches)
                for j in range(shell_end[rr]):
                    dx = bx[j] - x
                    dy = by[j] - y
                    dz = bz[j] - z
                    d = dx * dx + dy * dy + dz * dz
                    d2[m] = d
                    ix[m] = bi[j]
                    m += (d < bound) & (j != me)
                if m >= k:
                    break
                r = rr + 1
            dk, buf = _select(d2, ix, m, bound, k, hist, buf, row)
            out[oidx[p]] = row
            # the next query (a neighbour) starts at the smallest r that would have done for this one
            rhint = 0
            while rhint < rr and _bound(cs[p], cell, rhint, s, nc) <= dk:
                rhint += 1
    return out


def cell_side(c: np.ndarray) -> int:
    """Cell side s in voxels: the smallest power of two whose occupied cells hold _OCCUPANCY voxels
    or more (mean over the voxels of the voxels sharing their cell). Only speed depends on s (on the
    159k-voxel ScanNet pair, K = 96: s = 8, about 480 candidates per query)."""
    ext = c.max(0) + 1
    s = 1
    while True:
        nc = ext // s + 1
        key = (c[:, 0] // s * nc[1] + c[:, 1] // s) * nc[2] + c[:, 2] // s
        _, cnt = np.unique(key, return_counts=True)
        if (cnt.astype(np.float64) ** 2).sum() / len(c) >= _OCCUPANCY or s >= ext.max():
            return s
        s *= 2


_READY = False  # the kernels are compiled (or loaded from the cache) in this process


@contextlib.contextmanager
def compile_lock():
    """An exclusive lock on a file named after this module's path (POSIX; elsewhere no lock): held
    while a process compiles or loads numba kernels (these and `geopurify.ops.poolkernels`)."""
    tag = hashlib.sha1(str(Path(__file__).resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"geopurify-gridknn-{tag}.lock", "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ready() -> None:
    """Compile or load every kernel once per process, under `compile_lock` (module docstring)."""
    global _READY
    with compile_lock():
        t = time.perf_counter()
        _READY = True
        tiny = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.int64)
        _knn_grid(tiny, 1, None, 1)  # the argument types of every call: compiles or loads the kernels
        log.debug("grid kNN kernels ready in %.2f s", time.perf_counter() - t)


def knn_grid(c: np.ndarray, k: int, s: int | None = None, threads: int | None = None) -> np.ndarray:
    """Canonical k nearest neighbours (self excluded, ordered by (squared distance, index)) of
    integer coordinates c (V, 3) >= 0 with extents below _MAX_EXTENT -> (V, k) int64.
    s: cell side (default: cell_side); threads: default torch's intra-op thread count."""
    if not _READY:
        _ready()
    return _knn_grid(c, k, s, threads)


def _knn_grid(c: np.ndarray, k: int, s: int | None, threads: int | None) -> np.ndarray:
    import torch

    c = np.ascontiguousarray(c, dtype=np.int64)
    V = c.shape[0]
    if c.ndim != 2 or c.shape[1] != 3 or c.min() < 0 or c.max() >= _MAX_EXTENT:
        raise ValueError(f"grid kNN needs (V, 3) integer coordinates in [0, {_MAX_EXTENT})")
    if not 1 <= k <= V - 1:
        raise ValueError(f"k must be in 1..V-1 = {V - 1}, got {k}")
    s = cell_side(c) if s is None else int(s)
    nc = (c.max(0) // s + 1).astype(np.int64)
    cell = c // s
    key = (cell[:, 0] * nc[1] + cell[:, 1]) * nc[2] + cell[:, 2]
    order = np.argsort(key, kind="stable")  # by cell; within a cell by index
    skey = key[order]
    first = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    cstart = np.r_[first, V].astype(np.int64)
    cc = np.ascontiguousarray(cell[order[first]])
    ckey = cc[:, 0] * nc[1] + cc[:, 1]  # (x, y) column of each cell
    cfirst = np.flatnonzero(np.r_[True, ckey[1:] != ckey[:-1]])
    colkeys, colstart = ckey[cfirst].copy(), np.r_[cfirst, len(cc)].astype(np.int64)
    cs, oidx = c[order], order.astype(np.int64)
    out = np.empty((V, k), np.int64)
    n_cells = len(cc)
    threads = max(1, torch.get_num_threads() if threads is None else threads)
    nblocks = min(n_cells, 4 * threads)
    edges = [b * n_cells // nblocks for b in range(nblocks + 1)]
    args = (cs, oidx, cc, cstart, colkeys, colstart, nc, np.int64(s), np.int64(k))
    if threads == 1 or nblocks == 1:
        _knn_block(*args, np.int64(0), np.int64(n_cells), out)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda b: _knn_block(*args, np.int64(edges[b]), np.int64(edges[b + 1]), out), range(nblocks)))
    return out

"""The ~1.5% training subset: diverse, class-rich scenes picked from label histograms (METHOD.md section 4).

Per scene, from its histogram of benchmark classes (labels are used here only to *choose* training
scenes, as the method does; distillation itself never sees them): Nc = number of classes present,
Hc = entropy (bits) of the class distribution. Scenes with Nc >= median and Hc >= median (medians over
all scenes) are kept; k-means (K = 20) on their raw class-count histograms (point counts, as the
reference code's dataset/data_choose_zero.py clusters them: large and small rooms of one composition can
land in different clusters) groups similar rooms; within each cluster the scene with the best score
S = norm(Hc) + gamma * norm(Nc) (min-max normalised over the kept scenes) is taken. gamma is 1.0 in the
reference code and 0.5 in the paper. (The reference runs scikit-learn's KMeans, seed 42; ours is the
seeded Lloyd's k-means below, so cluster boundaries can differ where k-means has several optima.)

Everything is deterministic: scenes are processed in name order, k-means uses an explicit seed, and
ties go to the first name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def label_histogram(labels, n_classes: int) -> np.ndarray:
    """(C,) int64 point counts of class indices 0..C-1; negative ids (ignore) are not counted."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and labels.max() >= n_classes:
        raise ValueError(f"label {int(labels.max())} is outside 0..{n_classes - 1}")
    return np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.int64)


def scene_stats(hist) -> tuple[int, float]:
    """(Nc, Hc): number of classes present and the entropy in bits of the class distribution."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return 0, 0.0
    p = hist[hist > 0] / total
    return int((hist > 0).sum()), max(0.0, float(-(p * np.log2(p)).sum()))


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centres (k, D), assignment (M,) in 0..k-1).

    Deterministic for a given seed (np.random.Generator). A cluster that empties is re-seeded with
    the point farthest from its centre.
    """
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must be in 1..{m}, got {k}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(m)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        # k-means++: next centre with probability ~ squared distance to the nearest chosen one
        i = rng.choice(m, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(m)
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    centres = np.stack(centres)
    assign = np.full(m, -1)
    for _ in range(n_iter):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        new = dist.argmin(1)
        for c in range(k):
            if not (new == c).any():
                # re-seed from a cluster with more than one member (one exists since k <= M)
                counts = np.bincount(new, minlength=k)
                own = np.where(counts[new] > 1, dist[np.arange(m), new], -1.0)
                new[int(own.argmax())] = c
        if (new == assign).all():
            break
        assign = new
        centres = np.stack([x[assign == c].mean(0) for c in range(k)])
    return centres, assign


def _minmax(v: np.ndarray) -> np.ndarray:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


@dataclass
class Selection:
    """What `select_subset_details` decided and why (all dicts keyed by scene name)."""

    selected: list[str]  # best-scoring scene per cluster, highest score first
    nc: dict[str, int]
    hc: dict[str, float]
    median_nc: float
    median_hc: float
    kept: list[str]  # scenes passing both median filters, in name order
    k: int
    cluster: dict[str, int] = field(default_factory=dict)  # kept scenes only
    score: dict[str, float] = field(default_factory=dict)  # kept scenes only


def select_subset_details(
    histograms: Mapping[str, np.ndarray], k: int = 20, gamma: float = 1.0, seed: int = 0
) -> Selection:
    """The subset with its intermediate quantities (see the module docstring for the rule)."""
    if not histograms:
        raise ValueError("no scenes to select from")
    names = sorted(histograms)
    hists = np.stack([np.asarray(histograms[n], dtype=np.float64) for n in names])
    if hists.ndim != 2 or (hists < 0).any():
        raise ValueError("histograms must be non-negative count vectors of one length")
    stats = [scene_stats(h) for h in hists]
    nc = np.array([s[0] for s in stats], dtype=np.float64)
    hc = np.array([s[1] for s in stats])
    med_nc, med_hc = float(np.median(nc)), float(np.median(hc))
    keep = np.flatnonzero((nc >= med_nc) & (hc >= med_hc) & (hists.sum(1) > 0))
    sel = Selection(
        [],
        dict(zip(names, nc.astype(int).tolist())),
        dict(zip(names, hc.tolist())),
        med_nc,
        med_hc,
        [names[i] for i in keep],
        0,
    )
    if keep.size == 0:
        log.warning("no scene has both Nc >= %.1f and Hc >= %.3f: empty subset", med_nc, med_hc)
        return sel
    sel.k = min(k, keep.size)
    if sel.k < k:
        log.warning("only %d scenes pass the median filters: K = %d instead of %d", keep.size, sel.k, k)
    _, assign = kmeans(hists[keep], sel.k, seed=seed)  # raw counts, as the reference clusters them
    score = _minmax(hc[keep]) + gamma * _minmax(nc[keep])
    for j, i in enumerate(keep):
        sel.cluster[names[i]] = int(assign[j])
        sel.score[names[i]] = float(score[j])
    best = []
    for c in range(sel.k):
        members = np.flatnonzero(assign == c)
        if members.size:
            best.append(int(members[np.argmax(score[members])]))  # first (name order) on ties
    best.sort(key=lambda j: (-score[j], names[keep[j]]))
    sel.selected = [names[keep[j]] for j in best]
    return sel


def select_subset(histograms: Mapping[str, np.ndarray], k: int = 20, gamma: float = 1.0, seed: int = 0) -> list[str]:
    """Names of the selected training scenes (at most k), highest score first.

    histograms: scene name -> (C,) class point counts over the label set (see `label_histogram`).
    """
    return select_subset_details(histograms, k=k, gamma=gamma, seed=seed).selected

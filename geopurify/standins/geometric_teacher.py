"""GeometricTeacher: a class-agnostic hand-crafted descriptor, the OFFLINE STAND-IN for Sonata.

Sonata weights cannot be downloaded here (METHOD.md section 8), so distillation can run against
this descriptor instead. It is not a learned model and knows no classes; it only makes points on
the same kind of local surface (orientation, shape, colour, height) similar and points on
different surfaces dissimilar, which is what the teacher's cosines are used for.

Per point, five blocks, each column z-scored over the scene, each block scaled to a fixed
share of the squared norm (weight^2), concatenated and L2-normalised:
  shape   local covariance eigen-features at 3 neighbourhood sizes (k = 16, 32, 64): linearity,
          planarity, scattering, surface variation, |normal_z|, |principal axis_z|       (18)
  fpfh    FPFH-like soft histograms of three sign-invariant angles between a point's normal,
          its neighbours' normals and the offsets to them, averaged FPFH-style with the
          neighbours' own histograms (5 bins each)                                       (15)
  normal  n n^T (6 unique entries; invariant to the sign ambiguity of PCA normals)         (6)
  colour  CIE Lab of the point and the mean Lab of its 16 nearest neighbours               (6)
  height  z above the scene's 1st-percentile height                                        (1)
All loops are over fixed-size chunks of points (memory bounded); ~3-4 s for an 80k-point ScanNet
scene on one CPU core, a third of it the k = 64 kd-tree query.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from geopurify.data.scene import Scene
from geopurify.ops.knn import PointTree
from geopurify.teacher.base import Teacher, finish_embedding

logger = logging.getLogger(__name__)

NAME = "geometric (stand-in for Sonata)"
# block -> share of the squared norm (weight^2): geometry first; FPFH overlaps the shape block
# somewhat, colour and height are weaker cues (lighting, tall objects)
DEFAULT_WEIGHTS = {"shape": 1.0, "fpfh": 0.7, "normal": 1.0, "colour": 0.7, "height": 0.5}
_EPS = 1e-12


def knn(xyz: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every point, itself included (distance-sorted): (dist, idx) (N, k).
    Scenes with fewer than k points repeat the last neighbour."""
    n = xyz.shape[0]
    dist, idx = PointTree(xyz).query(xyz, k=min(k, n))
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        dist = np.concatenate([dist, np.repeat(dist[:, -1:], pad, 1)], 1)
        idx = np.concatenate([idx, np.repeat(idx[:, -1:], pad, 1)], 1)
    return dist, idx.astype(np.int64)


def eigen_features(xyz: np.ndarray, idx: np.ndarray, scales=(16, 32, 64)) -> np.ndarray:
    """(n, 6 * len(scales)) float32 covariance features of the first k neighbours in idx (n, K)
    for each k in `scales` (ascending): linearity, planarity, scattering, surface variation,
    |normal_z|, |principal axis_z|. Nested scales share running sums (one pass over idx)."""
    scales = tuple(scales)
    if list(scales) != sorted(scales):
        raise ValueError(f"scales must be ascending, got {scales}")
    p = xyz[idx[:, : scales[-1]]].astype(np.float64)
    p -= p[:, :1]  # relative to the nearest neighbour (the point itself): keeps precision
    s1 = np.zeros((p.shape[0], 3))
    s2 = np.zeros((p.shape[0], 3, 3))
    out, prev = [], 0
    for k in scales:
        seg = p[:, prev:k]
        s1 += seg.sum(1)
        s2 += np.matmul(seg.transpose(0, 2, 1), seg)
        prev = k
        mean = s1 / k
        lam, vec = np.linalg.eigh(s2 / k - mean[:, :, None] * mean[:, None, :])  # ascending
        lam = np.clip(lam, 0.0, None)
        l3, l2, l1 = lam[:, 0], lam[:, 1], lam[:, 2]
        d1 = l1 + _EPS
        out += [
            (l1 - l2) / d1,
            (l2 - l3) / d1,
            l3 / d1,
            l3 / (lam.sum(1) + _EPS),
            np.abs(vec[:, 2, 0]),
            np.abs(vec[:, 2, 2]),
        ]
    return np.stack(out, 1).astype(np.float32)


def _soft_hist(x: np.ndarray, valid: np.ndarray, bins: int) -> np.ndarray:
    """Linear-interpolation histogram over [0, 1] of x (n, k) per row (bins >= 2), counting only
    entries with valid = 1; each row sums to 1 (or 0 when no entry is valid)."""
    n = x.shape[0]
    t = np.clip(x, 0.0, 1.0) * (bins - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), bins - 2)
    frac = (t - lo) * valid
    flat = (np.arange(n)[:, None] * bins + lo).ravel()
    h = (np.bincount(flat, (valid - frac).ravel(), n * bins) + np.bincount(flat + 1, frac.ravel(), n * bins)).reshape(
        n, bins
    )
    return h / np.maximum(valid.sum(1, keepdims=True), 1)


def spfh(xyz: np.ndarray, normals: np.ndarray, centre: np.ndarray, idx: np.ndarray, bins: int = 5) -> np.ndarray:
    """(n, 3 * bins) histograms, for points `centre` (n,) over their neighbours idx (n, k), of
    three sign-invariant angles scaled to [0, 1]: between the two normals, between the point's
    normal and the tangent plane towards the neighbour, and the same for the neighbour's normal.
    Neighbours at distance 0 (the point itself, duplicates) are skipped."""
    src = centre[:, None]
    d = xyz[idx].astype(np.float64) - xyz[src].astype(np.float64)
    dist = np.linalg.norm(d, axis=2)
    valid = (dist > 1e-9).astype(np.float64)
    d /= np.maximum(dist, 1e-9)[..., None]
    n_p = normals[src].astype(np.float64)
    n_q = normals[idx].astype(np.float64)
    half_pi = np.pi / 2
    angles = (
        np.arccos(np.clip(np.abs((n_p * n_q).sum(2)), 0, 1)) / half_pi,
        np.arcsin(np.clip(np.abs((n_p * d).sum(2)), 0, 1)) / half_pi,
        np.arcsin(np.clip(np.abs((n_q * d).sum(2)), 0, 1)) / half_pi,
    )
    return np.concatenate([_soft_hist(a, valid, bins) for a in angles], 1)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (N, 3) -> CIE Lab (D65) float32 (N, 3), L in [0, 100]."""
    c = rgb.astype(np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    e = 216 / 24389
    f = np.where(xyz > e, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1).astype(np.float32)


def normal_outer(normals: np.ndarray) -> np.ndarray:
    """(N, 6) unique entries of n n^T (off-diagonals x sqrt 2, so norms match): sign-invariant."""
    n = normals.astype(np.float32)
    r2 = np.float32(np.sqrt(2.0))
    return np.stack(
        [
            n[:, 0] ** 2,
            n[:, 1] ** 2,
            n[:, 2] ** 2,
            r2 * n[:, 0] * n[:, 1],
            r2 * n[:, 0] * n[:, 2],
            r2 * n[:, 1] * n[:, 2],
        ],
        1,
    )


def standardise(block: np.ndarray, weight: float) -> np.ndarray:
    """Z-score each column over the scene (constant columns -> 0), then scale the block so its
    expected squared norm is weight^2 whatever its width."""
    block = block.astype(np.float64)
    z = (block - block.mean(0)) / np.maximum(block.std(0), 1e-6)
    return (z * (weight / np.sqrt(block.shape[1]))).astype(np.float32)


class GeometricTeacher(Teacher):
    """Hand-crafted per-point descriptor standing in for Sonata (see the module docstring)."""

    name = NAME
    stand_in = True

    def __init__(
        self,
        scales: tuple[int, ...] = (16, 32, 64),
        fpfh_k: int = 16,
        bins: int = 5,
        colour_k: int = 16,
        weights: dict | None = None,
        chunk: int = 32768,
    ):
        scales = tuple(sorted(scales))
        if min(scales) < 3 or fpfh_k < 1 or bins < 2 or colour_k < 1 or chunk < 1:
            raise ValueError("scales >= 3, fpfh_k >= 1, bins >= 2, colour_k >= 1 and chunk >= 1 required")
        self.scales, self.fpfh_k, self.bins, self.colour_k, self.chunk = tuple(scales), fpfh_k, bins, colour_k, chunk
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown descriptor blocks {sorted(unknown)}")
        self.dim = 6 * len(self.scales) + 3 * bins + 6 + 6 + 1

    def blocks(self, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray) -> dict[str, np.ndarray]:
        """Raw (unstandardised) descriptor blocks, name -> (N, d) float32."""
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)
        k_all = max(max(self.scales), self.fpfh_k + 1, self.colour_k)
        _, idx = knn(xyz, k_all)
        n = xyz.shape[0]
        shape = np.empty((n, 6 * len(self.scales)), np.float32)
        hist = np.empty((n, 3 * self.bins), np.float32)
        starts = range(0, n, self.chunk)
        for s in tqdm(starts, desc="geometric teacher (stand-in)", unit="chunk", leave=False, disable=len(starts) < 4):
            sl = slice(s, s + self.chunk)
            shape[sl] = eigen_features(xyz, idx[sl], self.scales)
            hist[sl] = spfh(xyz, normals, np.arange(s, min(s + self.chunk, n)), idx[sl, 1 : self.fpfh_k + 1], self.bins)
        # FPFH-style: a point's histogram averaged with its neighbours' (inverse-distance weights)
        nb = idx[:, 1 : self.fpfh_k + 1]
        fpfh = np.empty_like(hist)
        for s in range(0, n, self.chunk):
            sl = slice(s, s + self.chunk)
            dist = np.linalg.norm(xyz[nb[sl]] - xyz[sl, None], axis=2)
            w = 1.0 / np.maximum(dist, 1e-4)
            w /= w.sum(1, keepdims=True)
            fpfh[sl] = 0.5 * (hist[sl] + np.einsum("nk,nkd->nd", w, hist[nb[sl]]))
        lab = srgb_to_lab(rgb)
        lab_nb = np.empty_like(lab)
        for s in range(0, n, self.chunk):
            lab_nb[s : s + self.chunk] = lab[idx[s : s + self.chunk, : self.colour_k]].mean(1)
        height = (xyz[:, 2] - np.percentile(xyz[:, 2], 1))[:, None]
        return {
            "shape": shape,
            "fpfh": fpfh,
            "normal": normal_outer(normals),
            "colour": np.concatenate([lab, lab_nb], 1),
            "height": height,
        }

    def descriptor(self, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """(N, dim) float32 concatenation of the standardised, weighted blocks (not normalised)."""
        n = len(xyz)
        if np.shape(xyz) != (n, 3) or np.shape(rgb) != (n, 3) or np.shape(normals) != (n, 3):
            raise ValueError(
                f"xyz, rgb and normals must be (N, 3), got {np.shape(xyz)}, {np.shape(rgb)}, {np.shape(normals)}"
            )
        blocks = self.blocks(xyz, rgb, normals)
        return np.concatenate([standardise(blocks[b], self.weights[b]) for b in DEFAULT_WEIGHTS], 1)

    def embed(self, scene: Scene):
        t0 = time.perf_counter()
        normals = np.asarray(scene.normals, dtype=np.float32)
        feat = finish_embedding(self.descriptor(scene.xyz, scene.rgb, normals))
        logger.info(
            "%s: %s, %d points -> %d-d in %.1f s",
            NAME,
            scene.name,
            feat.shape[0],
            feat.shape[1],
            time.perf_counter() - t0,
        )
        return feat

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu"):
        """The `geometric` teacher of a config (the registry entry of teacher.name; numpy on the CPU)."""
        return cls()

"""Purification of one scene (METHOD.md section 5): voxelise, student embeddings, kNN affinities,
T rounds of pooling, classify voxels, map back to points.

- purify_scene: GeoPurify's geometry-guided pooling over the student's affinities.
- knn_mean_scene: the same pooling with uniform weights (same K and T): the plain smoothing
  baseline that purification must beat.
- query_scores: relevance of new prompts after the fact, by pooling their score columns.
- purified_features: per-point purified features (all channels pooled), for free-text queries.

Pooling (`purify.pooling`, the `pooling` argument): `scores` pools the P class scores (fast), `features`
pools all C lifted channels (the reference's formulation); both give the same labels.

Unseen voxels (`purify.unseen`): with `nearest_seen` (the default) every voxel whose points were all
unseen by the cameras (lifted.seen False) takes the label (and scores) of the nearest voxel holding a
seen point; with `reference` (the reference code's rule) every voxel keeps its own pooled result (its
lifted features were already filled from the nearest seen point) and only a voxel whose pooled
features are still all zero takes the result of the nearest voxel whose are not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from geopurify.device import autocast, student_precision, synchronize
from geopurify.errors import InputError
from geopurify.ops.knn import PointTree, knn_graph
from geopurify.ops.scores import classify_by_text, text_scores
from geopurify.ops.voxel import voxel_mean, voxelize
from geopurify.purify.pooling import affinity_weights, pool, pool_reference, pool_scores, uniform_weights
from geopurify.schema import check, check_value
from geopurify.student.network import student_input

log = logging.getLogger(__name__)


@dataclass
class PurifyResult:
    """Labels of one scene and everything needed to ask it new prompts.

    Point-level outputs are numpy, voxel-level ones torch (on the device purification ran on).
    `voxel_scores`: pooled scores F(T).w_c/|w_c| (same argmax as the cosine), pooled features the cosine.
    """

    labels: np.ndarray  # (N,) int64 class per point after pooling and unseen fill
    voxel_scores: torch.Tensor | None  # (V, P) pooled class scores, unseen voxels filled
    raw_labels: np.ndarray  # (N,) int64 argmax cosine of the lifted features (no pooling)
    inverse: torch.Tensor  # (N,) int64 point -> voxel
    coords: torch.Tensor  # (V, 3) int32 voxel grid coordinates
    emb: torch.Tensor | None  # (V, E) student embeddings; None for the kNN-mean baseline
    voxel_labels: torch.Tensor | None = None  # (V,) int64, unseen voxels filled
    idx: torch.Tensor | None = None  # (V, k) kNN graph
    weights: torch.Tensor | None = None  # (V, k) row-stochastic pooling weights
    voxel_feat: torch.Tensor | None = None  # (V, C) unpooled voxel means of the lifted features
    fill: torch.Tensor | None = None  # (V,) voxel whose result each voxel takes (itself when seen)
    pooled_norm: torch.Tensor | None = None  # (V,) |F(T)_i|, pooled features only
    steps: int = 0
    info: dict = field(default_factory=dict)


def _where(scene) -> str:
    return str(scene.path) if getattr(scene, "path", None) is not None else scene.name


def _settings(cfg: dict, pooling: str | None) -> tuple[int, float, int, str, float]:
    """(k, tau, steps, pooling, voxel_size) from the config (`pooling` overrides purify.pooling),
    checked against their ranges (geopurify.schema; purify.unseen too)."""
    check(cfg, "purify", "student.voxel_size")
    pc = cfg["purify"]
    pooling = pc["pooling"] if pooling is None else pooling
    check_value("purify.pooling", pooling)
    return pc["k"], float(pc["tau"]), pc["steps"], pooling, float(cfg["student"]["voxel_size"])


def _check_inputs(scene, lifted, text_emb, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Lifted features (N, C) and prompt embeddings (P, C) float32 on `device`, and the seen mask
    (N,) on the CPU (it only steers the CPU kd-tree fill), checked against the scene and each other.

    The one place purification moves its inputs: everything later runs where these are."""
    n = scene.n_points
    dev = torch.device(device)
    feat = torch.as_tensor(lifted.feat)
    if feat.ndim != 2 or feat.shape[0] != n:
        raise InputError(
            _where(scene),
            f"lifted features are {tuple(feat.shape)} for {n} points (stale feature cache or another scene?)",
        )
    seen = torch.as_tensor(lifted.seen).bool().cpu()
    if seen.shape != (n,):
        raise InputError(_where(scene), f"lifted 'seen' mask is {tuple(seen.shape)} for {n} points")
    if text_emb is not None:
        te = torch.as_tensor(text_emb)
        if te.ndim != 2 or te.shape[1] != feat.shape[1]:
            raise InputError(
                _where(scene),
                f"text embeddings are {tuple(te.shape)} but lifted features have "
                f"{feat.shape[1]} channels (features and prompts from different VLMs?)",
            )
        text_emb = te.to(dev, torch.float32)
    return feat.to(dev), seen, text_emb


def seen_voxels(seen: torch.Tensor, inverse: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """(V,) bool: the voxel holds at least one point seen by a camera."""
    out = torch.zeros(n_voxels, dtype=torch.bool)
    out[inverse.cpu()[seen.cpu()]] = True
    return out


def nearest_seen(coords: torch.Tensor, seen_v: torch.Tensor) -> torch.Tensor:
    """(V,) int64: for each voxel the nearest voxel (grid distance) with `seen_v` True (one holding a
    seen point, or one with a non-zero pooled result); itself when it is one. When none is, every
    voxel keeps itself (logged)."""
    V = coords.shape[0]
    fill = torch.arange(V)
    seen_v = seen_v.cpu()
    n_seen = int(seen_v.sum())
    if n_seen == V:
        return fill
    if n_seen == 0:
        log.warning("no voxel holds a seen point: labels come from the (fused-by-fill) features as they are")
        return fill
    c = coords.cpu().numpy().astype(np.float64)
    src = np.flatnonzero(seen_v.numpy())
    dst = np.flatnonzero(~seen_v.numpy())
    _, j = PointTree(c[src]).query(c[dst], k=1)
    fill[torch.from_numpy(dst)] = torch.from_numpy(src[j[:, 0]])
    return fill


def fill_sources(cfg: dict, seen_v: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(V,) bool: the voxels that keep their own pooled result; the others take the nearest one's.
    `nearest_seen`: the voxels holding a seen point. `reference`: the voxels whose pooled values
    (features, or class scores, which vanish with them) are not all zero."""
    if cfg["purify"]["unseen"] == "nearest_seen":
        return seen_v
    return (pooled != 0).any(1).cpu()


_GRAPH_CACHE: dict = {}  # the last kNN graph: (coords digest, k, device) -> idx


def cached_knn_graph(coords: torch.Tensor, k: int, device) -> torch.Tensor:
    """knn_graph of the voxel coordinates, remembering the last one: evaluating a scene runs the
    kNN-mean baseline and purification (or both paths) on the same voxels, and the graph depends on
    the coordinates only. One entry, keyed by a digest of the coordinates, k and the device."""
    import hashlib

    c = coords.cpu().contiguous()
    key = (hashlib.sha1(c.numpy().tobytes()).hexdigest(), tuple(c.shape), str(c.dtype), k, str(torch.device(device)))
    if key not in _GRAPH_CACHE:
        _GRAPH_CACHE.clear()
        _GRAPH_CACHE[key] = knn_graph(coords.to(device), k)
    return _GRAPH_CACHE[key]


def _clock(device) -> float:
    """perf_counter after the device's queued work (CUDA kernels run asynchronously)."""
    synchronize(device)
    return time.perf_counter()


def _voxelise(scene, voxel_size: float):
    return voxelize(torch.from_numpy(np.ascontiguousarray(scene.xyz, dtype=np.float32)), voxel_size)


def _student_voxels(scene, feat: torch.Tensor, voxel_size: float, timings: dict | None = None):
    """(coords, inverse, x): the scene's voxels and the student's input on them (voxel means of the
    lifted features `feat`, colours and normals) on the features' device; the time in
    timings["voxelise_s"] when given."""
    t = time.perf_counter()
    coords, inverse = _voxelise(scene, voxel_size)
    x = student_input(feat, scene.rgb, scene.normals, inverse, coords.shape[0])
    if timings is not None:
        timings["voxelise_s"] = time.perf_counter() - t
    return coords, inverse, x


def _pool_voxels(
    coords,
    inverse,
    feat_v,
    seen,
    emb,
    text_emb,
    cfg,
    device,
    pooling,
    timings,
    weights_name: str,
    scene_name: str,
    n_points: int,
) -> PurifyResult:
    """Shared tail: kNN graph, weights (student affinities or uniform), pooling, fill, points."""
    k, tau, steps, pooling, _ = _settings(cfg, pooling)
    V = coords.shape[0]
    dev = torch.device(device)
    k_eff = min(k, V - 1)
    if k_eff < k:
        log.warning("%s: only %d voxels, pooling over k = %d neighbours instead of %d", scene_name, V, k_eff, k)
    t = _clock(dev)
    if k_eff >= 1:
        idx = cached_knn_graph(coords, k_eff, dev)
    else:
        idx = torch.zeros(V, 0, dtype=torch.int64, device=dev)
    timings["knn_s"] = _clock(dev) - t
    t = _clock(dev)
    W = uniform_weights(idx) if emb is None else affinity_weights(emb, idx, tau)
    timings["weights_s"] = _clock(dev) - t
    t = _clock(dev)
    feat_v, text = feat_v.float(), text_emb  # on `dev` already (_check_inputs)
    norms = None
    if pooling == "scores":
        labels_v, scores = pool_scores(feat_v, idx, W, text, steps)
    else:
        labels_v, scores, norms = pool_reference(feat_v, idx, W, text, steps)
    timings["pool_s"] = _clock(dev) - t
    seen_v = seen_voxels(seen, inverse, V)
    src_v = fill_sources(cfg, seen_v, scores if norms is None else norms[:, None])
    fill = nearest_seen(coords, src_v).to(dev)
    labels_v, scores = labels_v[fill], scores[fill]
    if norms is not None:
        norms = norms[fill]
    inv = inverse.to(dev)
    labels = labels_v[inv].cpu().numpy().astype(np.int64)
    info = {
        "scene": scene_name,
        "n_points": n_points,
        "n_voxels": V,
        "k": k_eff,
        "tau": tau,
        "steps": steps,
        "pooling": pooling,
        "weights": weights_name,
        "unseen_voxels": int((~seen_v).sum()),
        "device": str(dev),
        "unseen_policy": cfg["purify"]["unseen"],
        "filled_voxels": int((~src_v).sum()),
        **{key: round(v, 4) for key, v in timings.items()},
    }
    log.info(
        "%s: %s pooling (of %s), %d points / %d voxels, k %d, T %d, %d unseen voxels, %d filled (%s); "
        "knn %.2fs weights %.2fs pool %.2fs",
        scene_name,
        weights_name,
        pooling,
        n_points,
        V,
        k_eff,
        steps,
        info["unseen_voxels"],
        info["filled_voxels"],
        info["unseen_policy"],
        timings["knn_s"],
        timings["weights_s"],
        timings["pool_s"],
    )
    return PurifyResult(
        labels=labels,
        voxel_scores=scores,
        raw_labels=np.zeros(0, np.int64),
        inverse=inverse,
        coords=coords,
        emb=emb,
        voxel_labels=labels_v,
        idx=idx,
        weights=W,
        voxel_feat=feat_v,
        fill=fill,
        pooled_norm=norms,
        steps=steps,
        info=info,
    )


def _student_embeddings(model, x: torch.Tensor, coords: torch.Tensor, device, precision: str = "fp32") -> torch.Tensor:
    """(V, E) unit float32 student embeddings in eval mode without gradients, the forward under
    autocast at `precision` (fp32 | bf16 | fp16; `gpu.student_precision`); the model's mode is restored.
    The embeddings are cast back to float32 and re-normalised before any affinity is computed."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, precision):
            emb = model(x, coords.to(device))  # x is on `device` already; coords come from the CPU voxeliser
    finally:
        model.train(was_training)
    return torch.nn.functional.normalize(emb.float(), dim=1)


def _precision(cfg: dict, device, precision: str | None) -> str:
    """The student's precision: `precision` when given, else `gpu.student_precision` on CUDA, fp32
    on the CPU (geopurify.device.student_precision); range-checked."""
    value = student_precision(cfg, device) if precision is None else precision
    check_value("gpu.student_precision", value)
    return value


def _raw_labels(feat: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:
    """Per-point argmax cosine of the lifted features (the no-purification prediction), as numpy."""
    return classify_by_text(feat, text_emb).cpu().numpy().astype(np.int64)


def purify_scene(
    scene,
    lifted,
    model,
    text_emb: torch.Tensor,
    cfg: dict,
    device: str = "cpu",
    pooling: str | None = None,
    precision: str | None = None,
) -> PurifyResult:
    """GeoPurify inference on one scene.

    scene: geopurify.data.scene.Scene; lifted: LiftResult (.feat (N, C), .seen (N,)); model: the
    student AffinityNet (forward(feats (V, C+6), coords (V, 3)) -> (V, E) unit); text_emb (P, C);
    cfg: full config (sections `purify`, `student`, `gpu`); pooling: "scores" (pool the class scores)
    or "features" (pool all channels), default cfg["purify"]["pooling"]. Both give the same labels.
    precision: the student's autocast precision (fp32 | bf16 | fp16), default `gpu.student_precision`
    on CUDA and fp32 on the CPU.
    """
    *_, pooling, voxel_size = _settings(cfg, pooling)
    precision = _precision(cfg, device, precision)
    feat, seen, text_emb = _check_inputs(scene, lifted, text_emb, device)
    timings: dict[str, float] = {}
    coords, inverse, x = _student_voxels(scene, feat, voxel_size, timings)
    t = _clock(device)
    emb = _student_embeddings(model, x, coords, device, precision)
    timings["student_s"] = _clock(device) - t
    C = feat.shape[1]
    res = _pool_voxels(
        coords,
        inverse,
        x[:, :C],
        seen,
        emb,
        text_emb,
        cfg,
        device,
        pooling,
        timings,
        "student affinities",
        scene.name,
        scene.n_points,
    )
    res.info["student_precision"] = precision
    res.raw_labels = _raw_labels(feat, text_emb)
    return res


def knn_mean_scene(
    scene, lifted, text_emb: torch.Tensor, cfg: dict, device: str = "cpu", pooling: str | None = None
) -> PurifyResult:
    """Baseline: the same K and T as purify_scene but uniform weights 1/K (plain kNN-mean smoothing,
    no student). `.labels` are its per-point predictions."""
    *_, pooling, voxel_size = _settings(cfg, pooling)
    feat, seen, text_emb = _check_inputs(scene, lifted, text_emb, device)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    coords, inverse = _voxelise(scene, voxel_size)
    feat_v = voxel_mean(feat, inverse, coords.shape[0]).float()
    timings["voxelise_s"] = time.perf_counter() - t
    res = _pool_voxels(
        coords,
        inverse,
        feat_v,
        seen,
        None,
        text_emb,
        cfg,
        device,
        pooling,
        timings,
        "uniform (kNN-mean baseline)",
        scene.name,
        scene.n_points,
    )
    res.raw_labels = _raw_labels(feat, text_emb)
    return res


def query_scores(result: PurifyResult, text_emb_new: torch.Tensor) -> np.ndarray:
    """Relevance of new prompts for every point, from the same graph and weights: the score column
    S = F w/|w| of each prompt is pooled on demand (T steps over P' = 1.. channels).

    text_emb_new (C,) -> (N,), or (Q, C) -> (N, Q) float32. With pooled features (their norms known)
    the value is the cosine of the purified feature with the prompt; with pooled scores it is that
    cosine times |F(T)_i| (same ranking of prompts at a point, not of points)."""
    if result.voxel_feat is None or result.idx is None:
        raise ValueError("this PurifyResult holds no graph (was it built by purify_scene / knn_mean_scene?)")
    te = torch.as_tensor(text_emb_new).float()
    single = te.ndim == 1
    te = te.reshape(-1, te.shape[-1]).to(result.voxel_feat.device)
    if te.shape[1] != result.voxel_feat.shape[1]:
        raise InputError(
            None,
            f"prompt embeddings have {te.shape[1]} channels, the lifted features "
            f"{result.voxel_feat.shape[1]} (different VLMs?)",
        )
    s = pool(text_scores(result.voxel_feat, te), result.idx, result.weights, result.steps, progress=False)
    if result.pooled_norm is not None:
        s = s / result.pooled_norm.clamp_min(1e-12)[:, None]
    s = s[result.fill[result.inverse.to(s.device)]].cpu().numpy()
    return s[:, 0] if single else s


def purified_features(scene, lifted, model, cfg: dict, device: str = "cpu") -> torch.Tensor:
    """Per-point purified features (N, C) float32 on the CPU: every lifted channel pooled over the
    student's affinities (the reference formulation), unseen voxels filled as `purify.unseen` says."""
    k, tau, steps, _, voxel_size = _settings(cfg, None)
    feat, seen, _ = _check_inputs(scene, lifted, None, device)
    coords, inverse, x = _student_voxels(scene, feat, voxel_size)  # on `device`, as feat
    V = coords.shape[0]
    dev = torch.device(device)
    emb = _student_embeddings(model, x, coords, device, _precision(cfg, device, None))
    k_eff = min(k, V - 1)
    if k_eff >= 1:
        idx = cached_knn_graph(coords, k_eff, dev)
        pooled = pool(x[:, : feat.shape[1]], idx, affinity_weights(emb, idx, tau), steps)
    else:
        pooled = x[:, : feat.shape[1]]
    fill = nearest_seen(coords, fill_sources(cfg, seen_voxels(seen, inverse, V), pooled)).to(dev)
    return pooled[fill[inverse.to(dev)]].cpu()

"""Prompts on demand: after one load of a scene, any free-text prompt becomes a per-point relevance
map without re-lifting or re-running the student (what `geopurify query` and `geopurify view` use).

Load (`build_session`, once): voxelise, student embeddings (one forward), kNN graph, pooling weights,
kept as sparse pooling matrices A (`PoolingMatrix`) (A[i, idx_ij] = W_ij, rows sum to 1): the student's affinities
("purified") and uniform 1/K ("kNN-mean", the baseline), plus the unpooled voxel means F of the
lifted features.

Prompt (`prompt_steps`, the one function both commands call): its unit text embedding w^ gives one
score column s(0) = F w^, pooled s(t+1) = A s(t); every step 0..t asked for is kept, so moving T
costs nothing once computed.

Which quantity: pooling is linear, so s(T) = F(T) w^ exactly (F(T) = A^T F, the purified features):
the relevance shown is the purified feature's dot product with the unit prompt embedding,
    s(T)_i = |F(T)_i| cos(F(T)_i, w),
the same per-class score whose argmax gives the purified labels (METHOD.md section 5, pooled scores).
It ranks prompts at a point exactly as the cosine does; across points it also weighs by |F(T)_i|,
which pooling shrinks where a neighbourhood's features disagree. The cosine itself would need all
C channels pooled for every T. Unseen voxels follow `purify.unseen` as purify_scene does: with
`nearest_seen` a point whose voxel holds no seen point shows the nearest seen voxel's values; with
`reference` every voxel shows its own, and labels at step t come from the nearest voxel whose pooled
class scores at t are not all zero when a voxel's are (purify_scene's rule). Under `reference` the
heat map and a point's top scores test its voxel's unpooled features instead (all C channels would
have to be pooled for every t); the two differ only where pooling cancels a voxel's features exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from geopurify.errors import InputError
from geopurify.ops.scores import classify_by_text, unit_text
from geopurify.purify.infer import (
    _check_inputs,
    _precision,
    _settings,
    _student_embeddings,
    _student_voxels,
    cached_knn_graph,
    fill_sources,
    nearest_seen,
    seen_voxels,
)
from geopurify.purify.pooling import affinity_weights, uniform_weights

log = logging.getLogger(__name__)

MAX_STEPS = 36  # the largest T of the paper's ablation (T = 1 / 9 / 18 / 36)


class PoolingMatrix:
    """The (V, V) pooling matrix A, A[i, idx_ij] = W_ij (rows sum to 1), as scipy CSR float32 row
    blocks: `A @ values` multiplies the blocks on parallel threads (scipy releases the GIL; one
    block per torch thread), row by row exactly as one matrix would, so results do not depend on
    the thread count."""

    _pool = None  # shared thread pool, created on first use

    def __init__(self, idx: torch.Tensor, W: torch.Tensor, threads: int | None = None):
        import scipy.sparse as sp

        idx = torch.as_tensor(idx).cpu().numpy()
        W = torch.as_tensor(W).cpu().float().numpy()
        V, k = idx.shape
        self.shape = (V, V)
        n = max(1, min(threads or torch.get_num_threads(), V))
        bounds = np.linspace(0, V, n + 1).astype(np.int64)
        indptr = np.arange(0, V * k + 1, k, dtype=np.int64)
        self.blocks = [
            sp.csr_matrix((W[a:b].ravel(), idx[a:b].ravel(), indptr[: b - a + 1]), shape=(b - a, V))
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]

    def __matmul__(self, values: np.ndarray) -> np.ndarray:
        if len(self.blocks) == 1:
            return self.blocks[0] @ values
        if PoolingMatrix._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            PoolingMatrix._pool = ThreadPoolExecutor(max_workers=max(2, torch.get_num_threads()))
        return np.concatenate(list(PoolingMatrix._pool.map(lambda blk: blk @ values, self.blocks)))

    def tocsr(self):
        """The whole matrix as one scipy CSR matrix."""
        import scipy.sparse as sp

        return sp.vstack(self.blocks, format="csr")


class StepStack:
    """Values pooled by a fixed matrix, the result of every step 0..t kept, computed on demand.

    values: (V,) or (V, Q) float32 at step 0; keep: what to store per step (default a float32 copy;
    e.g. the argmax for class labels). `stack[t]` computes the missing steps up to t."""

    def __init__(self, A, values: np.ndarray, keep=None):
        self.A = A
        self._cur = np.ascontiguousarray(values, dtype=np.float32)
        self._keep = keep or (lambda v: v)
        self.kept = [self._keep(self._cur)]

    @property
    def computed(self) -> int:
        """The largest step computed so far."""
        return len(self.kept) - 1

    def __getitem__(self, t: int):
        if not 0 <= t <= MAX_STEPS:
            raise ValueError(f"pooling steps must be in 0..{MAX_STEPS}, got {t}")
        while self.computed < t:
            self._cur = (self.A @ self._cur).astype(np.float32, copy=False)
            self.kept.append(self._keep(self._cur))
        return self.kept[t]


@dataclass
class QuerySession:
    """One scene loaded for prompting: everything a new prompt needs, computed once.

    `pool["purified"]` is None without a student; `point_voxel` is the voxel whose values each point
    shows (its own, or another as `purify.unseen` says: the module docstring)."""

    name: str
    n_points: int
    point_voxel: np.ndarray  # (N,) int64
    own_voxel: np.ndarray  # (N,) int64 the voxel each point lies in
    voxel_coords: np.ndarray  # (V, 3) int64 grid coordinates
    unseen: str  # purify.unseen: nearest_seen | reference
    voxel_feat: np.ndarray  # (V, C) float32 unpooled voxel means of the lifted features
    pool: dict  # "purified" | "knn_mean" -> PoolingMatrix or None
    class_names: list[str]
    class_emb: np.ndarray  # (P, C) float32 unit
    raw_labels: np.ndarray  # (N,) int64 argmax cosine of the per-point lifted features
    steps: int  # the configured T (purify.steps)
    info: dict = field(default_factory=dict)
    _labels: dict = field(default_factory=dict, repr=False)
    _transposed: dict = field(default_factory=dict, repr=False)

    @property
    def n_voxels(self) -> int:
        return int(self.voxel_feat.shape[0])

    @property
    def relevance_pool(self) -> str:
        """Which weights pool prompt relevance: the student's when there is one, else kNN-mean."""
        return "purified" if self.pool.get("purified") is not None else "knn_mean"

    def to_points(self, voxel_values: np.ndarray) -> np.ndarray:
        """Per-voxel values (V, ...) -> per-point (N, ...)."""
        return voxel_values[self.point_voxel]

    def labels(self, method: str, t: int) -> np.ndarray:
        """(N,) int64 class per point after t pooling steps with the `method` weights (argmax of the
        pooled class scores, as purify_scene / knn_mean_scene label; t = 0: unpooled voxel means)."""
        if method not in self._labels:
            if self.pool.get(method) is None:
                raise ValueError(f"no {method} weights in this session (no student loaded?)")
            scores = self.voxel_feat @ self.class_emb.T
            self._labels[method] = StepStack(self.pool[method], scores, keep=self._voxel_labels)
        if self.unseen == "reference":
            return self._labels[method][t][self.own_voxel].astype(np.int64)
        return self.to_points(self._labels[method][t]).astype(np.int64)

    def _voxel_labels(self, scores: np.ndarray) -> np.ndarray:
        """(V,) int32 argmax of pooled class scores; under `reference`, a voxel whose scores are all
        zero takes the label of the nearest voxel whose are not (purify_scene's fill_sources)."""
        lab = scores.argmax(1).astype(np.int32)
        if self.unseen != "reference":
            return lab
        fill = nearest_seen(torch.from_numpy(self.voxel_coords), torch.from_numpy((scores != 0).any(1)))
        return lab[fill.numpy()]


def encode_prompt(vlm, text: str) -> np.ndarray:
    """(C,) float32 embedding of one prompt by the session's VLM, on one torch thread: a few tokens
    gain nothing from intra-op threads, and on a busy machine idle OpenMP workers spin (MiniLM, one
    prompt, 2 cores shared: 0.02 s CPU on one thread, 0.15-0.5 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = vlm.encode_text([text])[0]
    finally:
        torch.set_num_threads(threads)
    return torch.as_tensor(emb).detach().cpu().float().numpy()


def prompt_steps(session: QuerySession, text_emb, method: str | None = None) -> StepStack:
    """The pooled relevance of one prompt: s(0) = F w^ per voxel, s(t) = A^t s(0), steps kept.

    text_emb (C,): the prompt's embedding from the session's VLM (any length; it is made unit).
    method: "purified" or "knn_mean" weights (default `session.relevance_pool`). Index the result
    with T and map it to points with `session.to_points` (see `prompt_relevance`)."""
    w = torch.as_tensor(text_emb).detach().cpu().float().reshape(-1)
    if w.shape[0] != session.voxel_feat.shape[1]:
        raise InputError(
            None,
            f"prompt embedding is {w.shape[0]}-d, the lifted features "
            f"{session.voxel_feat.shape[1]}-d (different VLMs?)",
        )
    method = method or session.relevance_pool
    if session.pool.get(method) is None:
        raise ValueError(f"no {method} weights in this session (no student loaded?)")
    column = session.voxel_feat @ unit_text(w[None])[0].numpy()
    return StepStack(session.pool[method], column)


def prompt_relevance(session: QuerySession, text_emb, steps: int | None = None) -> np.ndarray:
    """(N,) float32 relevance of one prompt per point after `steps` pooling rounds (default the
    configured T): purified feature . unit prompt embedding (see the module docstring)."""
    t = session.steps if steps is None else steps
    return session.to_points(prompt_steps(session, text_emb)[t])


def feature_at(session: QuerySession, point: int, steps: int, method: str | None = None) -> np.ndarray:
    """(C,) float32 pooled feature F(steps) of one point's voxel, by propagating its row of A^steps
    (e_v^T A^t, t transposed products) and taking it against F: exact, no other voxel's F(t) needed."""
    method = method or session.relevance_pool
    A = session.pool.get(method)
    if A is None:
        raise ValueError(f"no {method} weights in this session (no student loaded?)")
    if method not in session._transposed:
        session._transposed[method] = A.tocsr().T.tocsr()
    At = session._transposed[method]
    v = int(session.point_voxel[point])
    row = np.zeros(session.n_voxels, np.float32)
    row[v] = 1.0
    for _ in range(steps):
        row = At @ row
    return (row @ session.voxel_feat).astype(np.float32)


def top_scores(
    session: QuerySession, point: int, steps: int, prompts: dict[str, np.ndarray] | None = None, n: int = 5
) -> dict:
    """Top-`n` classes of the label set and of the given prompts (name -> embedding) at one point after
    `steps` pooling rounds: {"classes": [(name, score)], "prompts": [(text, score)]}, scores as the
    heat map shows them (pooled feature . unit embedding)."""
    f = feature_at(session, point, steps)
    cls = session.class_emb @ f
    out = {"classes": [(session.class_names[i], float(cls[i])) for i in np.argsort(-cls)[:n]], "prompts": []}
    if prompts:
        names = list(prompts)
        w = unit_text(torch.as_tensor(np.stack([np.asarray(prompts[p], np.float32) for p in names]))).numpy()
        s = w @ f
        out["prompts"] = [(names[i], float(s[i])) for i in np.argsort(-s)[:n]]
    return out


def build_session(scene, lifted, model, class_emb, class_names, cfg: dict, device: str = "cpu") -> QuerySession:
    """Load a scene for prompting: voxels, one student forward (when `model` is given), kNN graph,
    purified (student) and kNN-mean (uniform) pooling matrices, raw labels. Settings (k, tau, T,
    voxel size) from cfg["purify"] / cfg["student"]."""
    k, tau, steps, _, voxel_size = _settings(cfg, None)
    if steps > MAX_STEPS:
        raise InputError(None, f"config key 'purify.steps' is {steps}; the viewer and query keep at most {MAX_STEPS}")
    feat, seen, _ = _check_inputs(scene, lifted, None, device)  # features on `device`
    timings: dict[str, float] = {}
    coords, inverse, x = _student_voxels(scene, feat, voxel_size, timings)
    V = coords.shape[0]
    emb = None
    if model is not None:
        t = time.perf_counter()
        emb = _student_embeddings(model, x, coords, device, _precision(cfg, device, None))  # as purify_scene
        timings["student_s"] = time.perf_counter() - t
    k_eff = min(k, V - 1)
    t = time.perf_counter()
    idx = cached_knn_graph(coords, k_eff, torch.device(device)) if k_eff >= 1 else None
    timings["knn_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pool = {"purified": None, "knn_mean": None}
    if idx is not None:
        pool["knn_mean"] = PoolingMatrix(idx, uniform_weights(idx))
        if emb is not None:
            pool["purified"] = PoolingMatrix(idx, affinity_weights(emb, idx, tau))
    timings["weights_s"] = time.perf_counter() - t
    voxel_feat = x[:, : feat.shape[1]].float().cpu()
    fill = nearest_seen(coords, fill_sources(cfg, seen_voxels(seen, inverse, V), voxel_feat))
    te = unit_text(torch.as_tensor(class_emb).detach().cpu().float())
    raw = classify_by_text(feat.cpu(), te).numpy().astype(np.int64)
    info = {
        "scene": scene.name,
        "n_points": scene.n_points,
        "n_voxels": V,
        "k": k_eff,
        "tau": tau,
        "steps": steps,
        "student": model is not None,
        **{key: round(v, 4) for key, v in timings.items()},
    }
    log.info(
        "%s: loaded for prompts: %d points / %d voxels, k %d, %s; voxelise %.2fs%s knn %.2fs weights %.2fs",
        scene.name,
        scene.n_points,
        V,
        k_eff,
        "student affinities" if emb is not None else "no student (kNN-mean)",
        timings["voxelise_s"],
        f" student {timings['student_s']:.2f}s" if emb is not None else "",
        timings["knn_s"],
        timings["weights_s"],
    )
    if pool["knn_mean"] is None:  # a single voxel: nothing to pool over, every step equals step 0
        one = PoolingMatrix(torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1))  # A = [1]: values stay
        pool = {"purified": None if emb is None else one, "knn_mean": one}
    return QuerySession(
        name=scene.name,
        n_points=scene.n_points,
        point_voxel=fill[inverse.cpu()].numpy(),
        own_voxel=inverse.cpu().numpy().astype(np.int64),
        voxel_coords=coords.cpu().numpy().astype(np.int64),
        unseen=cfg["purify"]["unseen"],
        voxel_feat=voxel_feat.numpy(),
        pool=pool,
        class_names=list(class_names),
        class_emb=te.numpy(),
        raw_labels=raw,
        steps=steps,
        info=info,
    )


@dataclass
class Loaded:
    """What `load_session` read besides the session: the scene, the text encoder, the label set,
    the config in force, the checkpoint meta, and the offline stand-ins involved (named on every output)."""

    scene: object
    vlm: object
    label_set: object
    cfg: dict
    meta: dict | None
    stand_ins: list[str]
    lifted_info: dict


def stand_ins(scene, vlm, lifted_info: dict, meta: dict | None) -> list[str]:
    """One line per offline stand-in behind a session's outputs (empty when all is real)."""
    out = []
    ckpt_vlm = (meta or {}).get("vlm") or {}
    if vlm.simulated or lifted_info.get("simulated") or ckpt_vlm.get("simulated"):
        out.append(
            "SIMULATED VLM: lifted features and prompt embeddings come from an offline stand-in "
            "(not CLIP/X-Decoder); free-text relevance reflects its text space only"
        )
    teacher = (meta or {}).get("teacher") or {}
    if teacher.get("stand_in"):
        out.append(f"student distilled from the teacher '{teacher.get('name', '?')}', an offline stand-in: not Sonata")
    if str(getattr(scene, "source", "")).startswith("synthetic"):
        out.append("procedural room: a synthetic stand-in for a ScanNet scan, not real data")
    return out


def load_session(
    scene_dir,
    ckpt=None,
    features=None,
    config=None,
    vlm: str | None = None,
    vlm_path: str | None = None,
    sets=(),
    cache_dir=None,
    fallback_cache_dir=None,
    device="cpu",
) -> tuple[QuerySession, Loaded]:
    """Read a scene, its lifted features (`features`: a `.lift.pt` file; else lifted with the
    configured VLM through the cache: `cache_dir`, else the config's data.cache_dir, else
    `fallback_cache_dir`) and optionally a student checkpoint, and build the session. Config, later
    wins: `config` if given, else the defaults with the checkpoint's stored config; `vlm` /
    `vlm_path` (lift.vlm / lift.vlm_path); `sets` (`--set KEY=VALUE` strings)."""
    from geopurify.config import apply_sets, load_config, merge
    from geopurify.data.labels import get_label_set
    from geopurify.data.readers import load_scene
    from geopurify.lift.cache import cached_lift
    from geopurify.lift.result import load_lifted
    from geopurify.student.checkpoint import check_compatible, load_student
    from geopurify.vlm import build_vlm, text_embeddings

    if ckpt is None and features is None:
        raise InputError(None, "give a student checkpoint (--ckpt) and/or lifted features (--features FILE.lift.pt)")
    model = meta = None
    if ckpt is not None:
        model, meta = load_student(ckpt, device)
    cfg = load_config(config)
    if config is None and meta is not None and isinstance(meta.get("config"), dict):
        cfg = merge(cfg, meta["config"], ckpt)
    if vlm or vlm_path:
        cfg = merge(cfg, {"lift": {k: v for k, v in (("vlm", vlm), ("vlm_path", vlm_path)) if v}})
    cfg = apply_sets(cfg, sets)
    scene = load_scene(scene_dir, frame_step=cfg["data"]["frame_step"])
    label_set = get_label_set(cfg["data"]["label_set"])
    encoder = build_vlm(cfg, device=str(device))
    if meta is not None:
        check_compatible(meta, encoder.dim, cfg, ckpt)
    if features is not None:
        lifted = load_lifted(features, n_points=scene.n_points, dim=encoder.dim)
        if lifted.info.get("vlm") != encoder.name:
            log.warning(
                "%s: features come from %r but prompts are embedded by %r",
                features,
                lifted.info.get("vlm"),
                encoder.name,
            )
    else:
        cache_dir = cache_dir or cfg["data"]["cache_dir"] or fallback_cache_dir
        if cache_dir is None:
            raise InputError(None, "no lifted-feature cache directory (give --cache-dir or data.cache_dir)")
        lifted = cached_lift(scene, cfg, encoder, cache_dir, device=device)
    class_emb = text_embeddings(encoder, label_set, cfg["lift"]["prompt_template"])
    session = build_session(scene, lifted, model, class_emb, label_set.names, cfg, device)
    loaded = Loaded(
        scene=scene,
        vlm=encoder,
        label_set=label_set,
        cfg=cfg,
        meta=meta,
        stand_ins=stand_ins(scene, encoder, lifted.info, meta),
        lifted_info=dict(lifted.info),
    )
    return session, loaded

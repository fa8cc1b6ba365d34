"""Purification: kNN graph, affinity weights and pooling against their dense definitions; the fast
(pooled class scores) and reference (pooled channels) paths on a real scene; purify_scene end to end
with unseen-voxel fill, the kNN-mean baseline, on-demand queries and GeoPurify's loop (bench)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geopurify.config import load_config
from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.ops import knn
from geopurify.ops.knn import knn_graph
from geopurify.ops.scores import text_scores
from geopurify.ops.voxel import voxel_mean, voxelize
from geopurify.purify import pooling
from geopurify.purify.infer import knn_mean_scene, purified_features, purify_scene, query_scores
from geopurify.purify.pooling import affinity_weights, edge_cosines, pool, pool_reference, pool_scores, uniform_weights

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "scannet" / "scene0000_00"
needs_data = pytest.mark.skipif(not (SCENE / "points_xyzrgb.npy").exists(), reason="shared ScanNet data not found")


def brute_knn(coords: np.ndarray, k: int) -> np.ndarray:
    """The definition: per row, all other points sorted by (squared distance, index); first k."""
    c = np.asarray(coords, dtype=np.float64)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    j = np.broadcast_to(np.arange(len(c)), d2.shape)
    return np.lexsort((j, d2), axis=-1)[:, :k]


def dense_matrix(idx: torch.Tensor, W: torch.Tensor) -> np.ndarray:
    """A (V, V) with A[i, idx[i, j]] = W[i, j] (a plain loop over the edges)."""
    V = idx.shape[0]
    A = np.zeros((V, V))
    for i, (row, w) in enumerate(zip(idx.tolist(), W.tolist())):
        for j, wij in zip(row, w):
            A[i, j] += wij
    return A


def smooth_embeddings(xyz: torch.Tensor, dim: int, length: float, seed: int) -> torch.Tensor:
    """Unit vectors varying smoothly over space (random Fourier features)."""
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(3, 32, generator=g, dtype=torch.float64) / length
    phi = torch.rand(32, generator=g, dtype=torch.float64) * 6.283
    mix = torch.randn(32, dim, generator=g, dtype=torch.float64)
    return F.normalize((torch.cos(xyz.double() @ omega + phi) @ mix).float(), dim=1)


@pytest.fixture(scope="module")
def real_points() -> np.ndarray:
    return np.load(SCENE / "points_xyzrgb.npy")


# ----------------------------------------------------------------------------------------------
# kNN graph


@pytest.mark.parametrize("method", ["kdtree", "brute", "grid"])
@pytest.mark.parametrize("margin", [0, 8])
def test_knn_graph_equals_brute_force_with_ties(method, margin, monkeypatch):
    monkeypatch.setattr(knn, "_KNN_MARGIN", margin)  # margin 0 forces the tie re-query path
    rng = np.random.default_rng(0)
    cube = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)  # full lattice: many ties
    sparse = np.unique(rng.integers(0, 9, (500, 3)), axis=0)
    rng.shuffle(sparse)  # not lexicographically ordered: ties must still go to the smaller index
    for coords in (cube, sparse):
        for k in (1, 6, 26, 57):
            got = knn_graph(torch.from_numpy(coords).int(), k, method=method)
            assert got.dtype == torch.int64 and got.shape == (len(coords), k)
            np.testing.assert_array_equal(got.numpy(), brute_knn(coords, k))


@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_knn_graph_float_coords(method):
    rng = np.random.default_rng(1)
    c = rng.normal(size=(300, 3))
    c[7] = c[3]  # a duplicate point: distance 0 but not self
    got = knn_graph(c, 20, method=method).numpy()
    np.testing.assert_array_equal(got, brute_knn(c, 20))
    assert not (got == np.arange(300)[:, None]).any()
    assert 3 in got[7] and 7 in got[3]


def test_knn_graph_bad_input():
    with pytest.raises(ValueError):
        knn_graph(np.zeros((5, 3)), 5)  # k must be <= V - 1
    with pytest.raises(ValueError):
        knn_graph(np.zeros((5, 2)), 2)
    with pytest.raises(ValueError):
        knn_graph(np.array([[0, 0, 0], [1, 0, np.nan], [2, 0, 0]], dtype=float), 1)


# ----------------------------------------------------------------------------------------------
# weights and pooling


@pytest.mark.parametrize("method", ["compiled", "sampled", "gather"])
def test_affinity_weights_definition(method):
    rng = np.random.default_rng(2)
    coords = np.unique(rng.integers(0, 12, (400, 3)), axis=0)
    idx = knn_graph(coords, 12)
    emb = torch.from_numpy(rng.normal(size=(len(coords), 16))).float()
    W = affinity_weights(emb, idx, tau=0.05, method=method)
    g = F.normalize(emb, dim=1)
    for i in range(0, len(coords), 37):  # the plain loop
        cos = torch.stack([g[i] @ g[int(j)] for j in idx[i]])
        np.testing.assert_allclose(W[i].numpy(), torch.softmax(cos / 0.05, 0).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(W.sum(1).numpy(), 1.0, atol=1e-5)
    assert not (idx == torch.arange(len(coords))[:, None]).any()  # no self loop
    for other in ("gather", "compiled"):
        np.testing.assert_allclose(
            edge_cosines(emb, idx, "sampled").numpy(), edge_cosines(emb, idx, other).numpy(), atol=1e-6
        )
    U = uniform_weights(idx)
    assert U.shape == idx.shape and torch.allclose(U, torch.full_like(U, 1 / 12))


@pytest.mark.parametrize("method", ["compiled", "bag", "gather"])
@pytest.mark.parametrize("steps", [1, 18])
@pytest.mark.parametrize("block", [3, 128])
def test_pool_equals_dense_matrix_power(method, steps, block, monkeypatch):
    monkeypatch.setattr(pooling, "_POOL_CHANNELS", block)  # 3: several channel blocks
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(0, 8, (120, 3)), axis=0)
    idx = knn_graph(coords, 9)
    W = torch.softmax(torch.from_numpy(rng.normal(size=idx.shape) * 3).float(), 1)
    vals = torch.from_numpy(rng.normal(size=(len(coords), 7))).float()
    got = pool(vals, idx, W, steps, method=method)
    A = dense_matrix(idx, W)
    np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-6)
    want = np.linalg.matrix_power(A, steps) @ vals.double().numpy()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(pool(vals, idx, W, 0), vals)
    assert torch.allclose(pool(vals[:, 2], idx, W, steps, method=method), got[:, 2], atol=1e-6)


@needs_data
def test_fast_path_equals_reference_on_real_scene(real_points):
    """Real voxel coordinates of scene0000_00, smooth random embeddings, random lifted features."""
    xyz = torch.from_numpy(real_points[:, :3])
    coords, inverse = voxelize(xyz, 0.02)
    centres = voxel_mean(xyz, inverse, len(coords))
    g = torch.Generator().manual_seed(4)
    emb = smooth_embeddings(centres, 32, 0.3, seed=4)
    feat = torch.randn(len(coords), 24, generator=g) + smooth_embeddings(centres, 24, 0.5, seed=5) * 2
    text = torch.randn(20, 24, generator=g) * torch.rand(20, 1, generator=g)  # non-unit prompts on purpose
    idx = knn_graph(coords, 96)
    W = affinity_weights(emb, idx, 0.05)
    ref_labels, ref_cos, norms = pool_reference(feat, idx, W, text, 18)
    fast_labels, fast_scores = pool_scores(feat, idx, W, text, 18)
    pts_ref, pts_fast = ref_labels[inverse], fast_labels[inverse]
    assert len(torch.unique(pts_ref)) >= 10  # labels vary over the scene: the comparison can fail
    assert (pts_ref == pts_fast).float().mean() >= 0.999
    # the algebra: pooled scores = cosine * |F(T)|
    np.testing.assert_allclose(fast_scores.numpy(), (ref_cos * norms[:, None]).numpy(), rtol=1e-3, atol=1e-4)
    # and pooling changed the labels (it is not a no-op on this input)
    assert (text_scores(feat, text).argmax(1) != fast_labels).float().mean() > 0.05


# ----------------------------------------------------------------------------------------------
# purify_scene, knn_mean_scene, queries


def _tiny_student(in_channels: int):
    from geopurify.student.network import build_student

    torch.manual_seed(0)
    return build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 16}, in_channels)


@pytest.fixture(scope="module")
def crop_case(real_points):
    """~6k real points of scene0000_00 with random lifted features; a box of points unseen."""
    p = real_points[
        (real_points[:, 0] < real_points[:, 0].min() + 1.2) & (real_points[:, 1] < real_points[:, 1].min() + 3)
    ]
    scene = Scene("crop", np.ascontiguousarray(p[:, :3]), p[:, 3:6].astype(np.uint8), path=SCENE)
    g = torch.Generator().manual_seed(6)
    C = 12
    text = F.normalize(torch.randn(8, C, generator=g), dim=1)
    feat = torch.randn(len(p), C, generator=g) + 2 * smooth_embeddings(torch.from_numpy(p[:, :3]), C, 0.4, 7)
    lo = p[:, :3].min(0)
    seen = ~torch.from_numpy((p[:, 0] < lo[0] + 0.3) & (p[:, 1] < lo[1] + 0.8))
    lifted = SimpleNamespace(feat=feat.half(), seen=seen)  # float16, as read from the cache
    cfg = load_config(None, {"purify": {"k": 24, "steps": 6}})
    return scene, lifted, text, cfg, _tiny_student(C + 6)


@needs_data
def test_purify_scene_paths_agree_and_fill_unseen(crop_case):
    scene, lifted, text, cfg, model = crop_case
    fast = purify_scene(scene, lifted, model, text, cfg, pooling="scores")
    ref = purify_scene(scene, lifted, model, text, cfg, pooling="features")
    N = scene.n_points
    assert fast.labels.shape == (N,) and fast.labels.dtype == np.int64
    assert (fast.labels == ref.labels).mean() >= 0.999
    assert len(np.unique(fast.labels)) >= 3
    np.testing.assert_array_equal(fast.raw_labels, text_scores(lifted.feat.float(), text).argmax(1).numpy())
    assert model.training  # the caller's mode is restored

    # unseen fill: every voxel with no seen point takes the label of a nearest voxel with one
    V = fast.coords.shape[0]
    seen_v = torch.zeros(V, dtype=torch.bool)
    seen_v[fast.inverse[lifted.seen]] = True
    assert 0 < int((~seen_v).sum()) < V
    before, _ = pool_scores(fast.voxel_feat, fast.idx, fast.weights, text, fast.steps)  # labels before the fill
    c = fast.coords.double()
    for v in torch.nonzero(~seen_v)[:, 0].tolist():
        d2 = ((c[seen_v] - c[v]) ** 2).sum(1)
        nearest = torch.nonzero(seen_v)[:, 0][d2 == d2.min()]
        assert int(fast.fill[v]) in nearest.tolist()
        assert int(fast.voxel_labels[v]) == int(before[fast.fill[v]])
    assert torch.equal(fast.voxel_labels[seen_v], before[seen_v])
    np.testing.assert_array_equal(fast.labels, fast.voxel_labels[fast.inverse].numpy())


@needs_data
def test_knn_mean_scene_is_uniform_pooling(crop_case):
    scene, lifted, text, cfg, _ = crop_case
    res = knn_mean_scene(scene, lifted, text, cfg)
    assert res.emb is None and res.info["weights"].startswith("uniform")
    coords, inverse = voxelize(torch.from_numpy(scene.xyz), cfg["student"]["voxel_size"])
    V = coords.shape[0]
    feat_v = voxel_mean(lifted.feat.float(), inverse, V).double().numpy()
    A = dense_matrix(knn_graph(coords, 24), torch.full((V, 24), 1 / 24))  # knn_graph: tested above
    pooled = feat_v
    for _ in range(6):
        pooled = A @ pooled
    want = (pooled @ F.normalize(text, dim=1).double().numpy().T).argmax(1)
    want = want[res.fill.numpy()][inverse.numpy()]
    assert (res.labels == want).mean() >= 0.999


@needs_data
def test_query_scores(crop_case):
    scene, lifted, text, cfg, model = crop_case
    fast = purify_scene(scene, lifted, model, text, cfg, pooling="scores")
    q = query_scores(fast, text)
    assert q.shape == (scene.n_points, len(text))
    np.testing.assert_allclose(q, fast.voxel_scores[fast.inverse].numpy(), rtol=1e-4, atol=1e-5)
    assert (q.argmax(1) == fast.labels).mean() >= 0.999
    ref = purify_scene(scene, lifted, model, text, cfg, pooling="features")
    new = torch.randn(lifted.feat.shape[1], generator=torch.Generator().manual_seed(8))
    rel = query_scores(ref, new)  # pooled features: the cosine of the purified feature with the prompt
    feats = purified_features(scene, lifted, model, cfg)
    cos = (F.normalize(feats, dim=1) @ F.normalize(new, dim=0)).numpy()
    np.testing.assert_allclose(rel, cos, atol=1e-4)


def test_bad_inputs_raise_input_error():
    scene = Scene(
        "s",
        np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32),
        np.zeros((50, 3), np.uint8),
        path=Path("/data/s"),
    )
    cfg = load_config(None)
    model = SimpleNamespace(training=False)
    text = torch.randn(4, 8)
    with pytest.raises(InputError, match="lifted features"):
        purify_scene(
            scene, SimpleNamespace(feat=torch.randn(49, 8), seen=torch.ones(49, dtype=torch.bool)), model, text, cfg
        )
    with pytest.raises(InputError, match="different VLMs"):
        knn_mean_scene(
            scene, SimpleNamespace(feat=torch.randn(50, 6), seen=torch.ones(50, dtype=torch.bool)), text, cfg
        )
    with pytest.raises(InputError, match="purify.pooling"):
        knn_mean_scene(
            scene,
            SimpleNamespace(feat=torch.randn(50, 8), seen=torch.ones(50, dtype=torch.bool)),
            text,
            cfg,
            pooling="slow",
        )


# ----------------------------------------------------------------------------------------------
# GeoPurify's loop (bench/purify.py) against the package


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_purify", ROOT / "bench" / "purify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_geopurify_loop_matches_package():
    bench = _bench_module()
    rng = np.random.default_rng(9)
    coords = torch.from_numpy(rng.uniform(0, 30, (700, 3))).float()  # float coords: no distance ties
    inverse = torch.from_numpy(rng.integers(0, 700, 2000))
    C = 10
    vox_in = torch.from_numpy(rng.normal(size=(700, C + 6))).float()
    emb = smooth_embeddings(coords / 10, 16, 0.5, seed=10)
    text = torch.randn(6, C, generator=torch.Generator().manual_seed(11))
    ref, nbr = bench.reference_loop(coords, vox_in, emb, text, inverse, C, k=20, tau=0.05, steps=5)
    assert torch.equal(torch.sort(nbr, 1).values, torch.sort(knn_graph(coords, 20), 1).values)
    fast = bench.fast_path(coords, vox_in[:, :C], emb, text, inverse, k=20, tau=0.05, steps=5)
    assert len(np.unique(ref)) >= 3
    np.testing.assert_array_equal(ref, fast)


def test_graph_cache_and_single_voxel_scene():
    from geopurify.purify import infer

    rng = np.random.default_rng(12)
    coords = torch.from_numpy(np.unique(rng.integers(0, 10, (300, 3)), axis=0)).int()
    a = infer.cached_knn_graph(coords, 8, "cpu")
    assert torch.equal(a, knn_graph(coords, 8))
    assert infer.cached_knn_graph(coords.clone(), 8, "cpu") is a  # same coordinates: reused
    assert torch.equal(infer.cached_knn_graph(coords, 7, "cpu"), knn_graph(coords, 7))  # another k: recomputed
    assert infer.cached_knn_graph(coords, 8, "cpu") is not a  # one entry only

    # every point in one voxel: no neighbours, the voxel mean is classified as it is
    xyz = (rng.uniform(0, 0.01, (5, 3)) + 0.005).astype(np.float32)
    scene = Scene("one-voxel", xyz, np.zeros((5, 3), np.uint8))
    feat = torch.from_numpy(rng.normal(size=(5, 4))).float()
    text = torch.from_numpy(rng.normal(size=(3, 4))).float()
    res = knn_mean_scene(
        scene, SimpleNamespace(feat=feat, seen=torch.ones(5, dtype=torch.bool)), text, load_config(None)
    )
    assert res.coords.shape[0] == 1 and res.info["k"] == 0
    want = int((F.normalize(text, dim=1) @ feat.mean(0)).argmax())
    assert (res.labels == want).all()


@pytest.mark.parametrize("pooling", ["scores", "features"])
def test_unseen_policy_reference_fills_only_all_zero_voxels(pooling):
    """purify.unseen: nearest_seen relabels every voxel without a seen point from the nearest seen one;
    reference (the reference code) leaves those voxels their own pooled label and relabels only voxels
    whose pooled features are all zero (here an isolated cluster whose lifted features are zero)."""
    rng = np.random.default_rng(21)
    vs = 0.02
    main = np.unique(rng.integers(0, 12, (900, 3)), axis=0)  # a 12^3 block of voxels, mostly filled
    far = np.unique(rng.integers(0, 4, (40, 3)), axis=0) + np.array([60, 0, 0])  # isolated, zero features
    vox = np.concatenate([main, far])
    xyz = ((vox + 0.5) * vs).astype(np.float32)
    n_main = len(main)
    C = 6
    feat = torch.from_numpy(rng.normal(size=(len(vox), C))).float()
    feat[n_main:] = 0
    seen = torch.ones(len(vox), dtype=torch.bool)
    seen[torch.from_numpy(rng.random(len(vox)) < 0.2)] = False  # unseen (features as if nearest-filled)
    seen[n_main:] = True  # seen, but a 2D model gave them nothing
    text = torch.from_numpy(rng.normal(size=(5, C))).float()
    scene = Scene("two-clusters", xyz, np.zeros((len(vox), 3), np.uint8))
    lifted = SimpleNamespace(feat=feat, seen=seen)
    out = {}
    for policy in ("nearest_seen", "reference"):
        cfg = load_config(None, {"purify": {"k": 8, "steps": 4, "unseen": policy}})
        out[policy] = knn_mean_scene(scene, lifted, text, cfg, pooling=pooling)
    ref, ns = out["reference"], out["nearest_seen"]
    V = ref.coords.shape[0]
    assert V == len(vox)
    before, _ = pool_scores(ref.voxel_feat, ref.idx, ref.weights, text, 4)  # labels before any fill
    seen_v = torch.zeros(V, dtype=torch.bool)
    seen_v[ref.inverse[seen]] = True
    zero_v = torch.zeros(V, dtype=torch.bool)
    zero_v[ref.inverse[torch.arange(n_main, len(vox))]] = True
    assert (~seen_v & ~zero_v).sum() > 50
    # reference: every voxel with non-zero pooled features keeps its own label, seen or not
    assert torch.equal(ref.voxel_labels[~zero_v], before[~zero_v])
    assert torch.equal(ref.fill[~zero_v], torch.arange(V)[~zero_v])
    # ... and the all-zero cluster takes the label of its nearest non-zero voxel
    c = ref.coords.double()
    for v in torch.nonzero(zero_v)[:, 0].tolist():
        d2 = ((c[~zero_v] - c[v]) ** 2).sum(1)
        assert int(ref.fill[v]) in torch.nonzero(~zero_v)[:, 0][d2 == d2.min()].tolist()
        assert int(ref.voxel_labels[v]) == int(before[ref.fill[v]])
    assert ref.info["unseen_policy"] == "reference" and ref.info["filled_voxels"] == int(zero_v.sum())
    # nearest_seen: unseen voxels relabelled from seen ones, the seen zero cluster left as it is
    assert bool(seen_v[ns.fill].all()) and torch.equal(ns.fill[seen_v], torch.arange(V)[seen_v])
    assert (ns.voxel_labels != ref.voxel_labels)[~seen_v].any()
    with pytest.raises(InputError, match="purify.unseen"):
        knn_mean_scene(scene, lifted, text, load_config(None, {"purify": {"unseen": "nearest"}}))

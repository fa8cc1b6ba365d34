"""The grid kNN (cell lists, geopurify.ops.gridknn): the same canonical graph as the kd-tree and
the dense definition on real voxels and on tie-heavy and degenerate grids; purify_scene gives the
same labels with it as with the kd-tree; int32 pooling indices change nothing."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopurify.config import load_config
from geopurify.data.scene import Scene
from geopurify.ops import gridknn, knn
from geopurify.ops.knn import knn_graph
from geopurify.ops.voxel import voxelize
from geopurify.purify import infer
from geopurify.purify.pooling import pool

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scannet"
needs_data = pytest.mark.skipif(
    not (DATA / "scene0000_00" / "points_xyzrgb.npy").exists(), reason="shared ScanNet data not found"
)


def brute_knn(coords: np.ndarray, k: int) -> np.ndarray:
    """The definition: per row, all other points sorted by (squared distance, index); first k."""
    c = np.asarray(coords, dtype=np.int64)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.iinfo(np.int64).max)
    j = np.broadcast_to(np.arange(len(c)), d2.shape)
    return np.lexsort((j, d2), axis=-1)[:, :k]


def grid(coords: np.ndarray, k: int) -> np.ndarray:
    return knn_graph(torch.from_numpy(coords), k, method="grid").numpy()


def lattice(*n: int) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, 3)


def shuffled(c: np.ndarray, seed: int) -> np.ndarray:
    """Rows in random order: ties must go to the smaller index, not the lexicographic first."""
    return c[np.random.default_rng(seed).permutation(len(c))]


ADVERSARIAL = {
    "dense cube": (shuffled(lattice(9, 9, 9), 0), (1, 6, 26, 96)),
    "line": (shuffled(lattice(300, 1, 1), 1), (1, 2, 96)),  # K = 96 reaches 48 voxels along the line
    "plane": (shuffled(lattice(40, 1, 40), 2), (4, 96)),
    "two crossing lines": (np.unique(np.r_[lattice(150, 1, 1), lattice(1, 150, 1) + [75, -75, 0]], axis=0), (96,)),
    "duplicates": (shuffled(np.r_[lattice(5, 5, 5), lattice(5, 5, 5)[::3]], 3), (1, 7, 30)),  # distance 0, not self
    "k = V - 1": (shuffled(lattice(4, 5, 5)[:97], 4), (96,)),
    "two voxels": (np.array([[3, 4, 5], [3, 4, 5]]), (1,)),
    "far cluster": (np.r_[lattice(20, 20, 3), lattice(2, 2, 1) + [5000, 9000, 300]], (96,)),  # full-scan path
    "sparse, huge extent": (np.random.default_rng(5).integers(0, (1 << 20) - 1, (400, 3)), (1, 20)),  # sort path
    "scaled lattice": (shuffled(lattice(6, 6, 6) * 100, 9), (6, 26, 57)),  # sort path (distances >= 10^4), ties
    "negative, offset": (lattice(7, 3, 5) * 3 - [10**6, 5, 40], (12,)),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_grid_equals_definition_on_adversarial_grids(name):
    coords, ks = ADVERSARIAL[name]
    want_all = brute_knn(coords, max(ks))
    for k in ks:
        got = grid(coords, k)
        assert got.dtype == np.int64 and got.shape == (len(coords), k)
        np.testing.assert_array_equal(got, want_all[:, :k], err_msg=f"{name}, k={k}")
        np.testing.assert_array_equal(got, knn_graph(torch.from_numpy(coords), k, method="kdtree").numpy())


@pytest.mark.parametrize("s", [1, 2, 3, 5, 64, 1024])
@pytest.mark.parametrize("threads", [1, 3])
def test_grid_result_does_not_depend_on_cell_side_or_threads(s, threads):
    rng = np.random.default_rng(6)
    coords = np.unique(rng.integers(0, 14, (900, 3)), axis=0)
    coords = shuffled(np.r_[coords, lattice(30, 2, 1) + [40, 0, 0]], 7)  # a blob and a thin strip
    np.testing.assert_array_equal(gridknn.knn_grid(coords, 40, s=s, threads=threads), brute_knn(coords, 40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(-3, 20)), min_size=2, max_size=120),
    st.integers(1, 119),
    st.sampled_from([None, 1, 2, 4]),
)
def test_grid_equals_definition_property(points, k, s):
    coords = np.array(points, dtype=np.int64)
    k = min(k, len(coords) - 1)
    got = gridknn.knn_grid(coords - coords.min(0), k, s=s)
    np.testing.assert_array_equal(got, brute_knn(coords, k))


@needs_data
@pytest.mark.parametrize("scene", ["scene0000_00", "scene0000_01"])
def test_grid_equals_kdtree_on_real_voxels(scene):
    xyz = np.load(DATA / scene / "points_xyzrgb.npy")[:, :3]
    coords, _ = voxelize(torch.from_numpy(xyz), 0.02)
    assert coords.shape[0] > 70_000
    want = knn_graph(coords, 96, method="kdtree")
    assert torch.equal(knn_graph(coords, 96, method="grid"), want)
    assert torch.equal(knn_graph(coords, 96), want)  # auto on the CPU takes the grid
    sub = coords[::7]  # sparser voxels: larger shells
    assert torch.equal(knn_graph(sub, 96, method="grid"), knn_graph(sub, 96, method="kdtree"))


def test_auto_dispatch_and_limits(monkeypatch):
    calls = []
    real = gridknn.knn_grid
    monkeypatch.setattr(gridknn, "knn_grid", lambda c, k: calls.append(k) or real(c, k))
    c = lattice(5, 5, 5)
    knn_graph(torch.from_numpy(c).int(), 8)
    knn_graph(c.astype(np.float64), 8)  # integral floats: the integer path
    assert calls == [8, 8]
    knn_graph(c * 0.3, 8)  # non-integral: kd-tree
    assert calls == [8, 8]
    huge = np.array([[0, 0, 0], [1, 0, 0], [1 << 20, 0, 0]])
    np.testing.assert_array_equal(knn_graph(huge, 1).numpy(), [[1], [0], [1]])  # beyond the grid limit: kd-tree
    assert calls == [8, 8]
    with pytest.raises(ValueError, match="grid"):
        knn_graph(huge, 1, method="grid")
    with pytest.raises(ValueError, match="grid"):
        knn_graph(c * 0.3, 8, method="grid")
    with pytest.raises(ValueError):
        knn_graph(c[:1], 1, method="grid")  # a single voxel has no neighbour
    with pytest.raises(ValueError):
        gridknn.knn_grid(c[:5], 5)  # fewer than k + 1 voxels


def test_grid_memory_is_linear():
    """A 640 x 640 plane (410k voxels): any (V, V) temporary would need >= 160 GB."""
    c = lattice(640, 1, 640)
    got = gridknn.knn_grid(c, 4)
    rows = np.random.default_rng(8).choice(len(c), 50, replace=False)
    for i in rows:  # spot checks against the definition
        d2 = ((c - c[i]) ** 2).sum(1)
        d2[i] = np.iinfo(np.int64).max
        np.testing.assert_array_equal(got[i], np.lexsort((np.arange(len(c)), d2))[:4])


def test_pool_int32_indices_are_bit_identical():
    rng = np.random.default_rng(9)
    coords = np.unique(rng.integers(0, 20, (3000, 3)), axis=0)
    idx = knn_graph(coords, 24)
    W = torch.softmax(torch.from_numpy(rng.normal(size=idx.shape) * 3).float(), 1)
    f = torch.from_numpy(rng.normal(size=(len(coords), 20))).float()
    want = f
    for _ in range(5):
        want = F.embedding_bag(idx, want, per_sample_weights=W, mode="sum")  # int64 indices
    assert torch.equal(pool(f, idx, W, 5, progress=False), want)


@needs_data
def test_purify_scene_labels_identical_with_grid_and_kdtree(monkeypatch):
    """End to end on a crop of scene0000_00 (k = 96, T = 18): the grid graph gives exactly the
    kd-tree's labels and scores."""
    from geopurify.purify.infer import purify_scene
    from geopurify.student.network import build_student

    p = np.load(DATA / "scene0000_00" / "points_xyzrgb.npy")
    p = p[(p[:, 0] < p[:, 0].min() + 2.0)]
    scene = Scene("crop", np.ascontiguousarray(p[:, :3]), p[:, 3:6].astype(np.uint8))
    g = torch.Generator().manual_seed(10)
    C = 16
    text = F.normalize(torch.randn(10, C, generator=g), dim=1)
    lifted = SimpleNamespace(feat=torch.randn(len(p), C, generator=g), seen=torch.ones(len(p), dtype=torch.bool))
    cfg = load_config(None)
    torch.manual_seed(0)
    model = build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 16}, C + 6)
    out = {}
    for method in ("kdtree", "grid"):
        infer._GRAPH_CACHE.clear()
        monkeypatch.setattr(infer, "knn_graph", functools.partial(knn.knn_graph, method=method))
        out[method] = purify_scene(scene, lifted, model, text, cfg, pooling="scores")
    infer._GRAPH_CACHE.clear()
    a, b = out["kdtree"], out["grid"]
    assert a.info["k"] == 96 and a.coords.shape[0] > 10_000
    assert torch.equal(a.idx, b.idx)
    assert len(np.unique(a.labels)) >= 3
    np.testing.assert_array_equal(a.labels, b.labels)
    assert torch.equal(a.voxel_scores, b.voxel_scores)

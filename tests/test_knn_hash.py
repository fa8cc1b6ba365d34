"""The cell-hash kNN (geopurify.ops.hashknn, the CUDA kNN), run here on the CPU: the same canonical
graph, bit for bit, as the definition, the compiled cell lists and the kd-tree, on real voxels and
on tie-heavy and degenerate grids; and the dispatch that picks it on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopurify.ops import hashknn
from geopurify.ops.knn import auto_method, knn_graph
from geopurify.ops.voxel import voxelize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scannet"
needs_data = pytest.mark.skipif(
    not (DATA / "scene0000_00" / "points_xyzrgb.npy").exists(), reason="shared ScanNet data not found"
)


def definition(coords: np.ndarray, k: int) -> np.ndarray:
    """Per row, all other voxels sorted by (squared distance, index); the first k."""
    c = np.asarray(coords, dtype=np.int64)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.iinfo(np.int64).max)
    j = np.broadcast_to(np.arange(len(c)), d2.shape)
    return np.lexsort((j, d2), axis=-1)[:, :k]


def lattice(*n: int) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, 3)


def shuffled(c: np.ndarray, seed: int) -> np.ndarray:
    """Rows in random order: ties must go to the smaller index, not the lexicographic first."""
    return c[np.random.default_rng(seed).permutation(len(c))]


def hashed(coords, k: int, s: int | None = None) -> np.ndarray:
    c = torch.as_tensor(np.asarray(coords, dtype=np.int64))
    if s is None:
        return knn_graph(c, k, method="hash").numpy()
    return hashknn.knn_hash(c - c.min(0).values, k, s=s).numpy()


TIES = {
    "dense cube": (shuffled(lattice(8, 8, 8), 0), (1, 6, 26, 96)),  # 6 at d2 1, 12 at 2, 8 at 3: ties everywhere
    "line": (shuffled(lattice(250, 1, 1), 1), (1, 2, 96)),  # K = 96 reaches 48 voxels along the line
    "plane": (shuffled(lattice(30, 1, 30), 2), (4, 96)),
    "duplicates": (shuffled(np.r_[lattice(5, 5, 5), lattice(5, 5, 5)[::3]], 3), (1, 7, 30)),  # distance 0, not self
    "k = V - 1": (shuffled(lattice(4, 5, 5)[:97], 4), (96,)),
    "two voxels": (np.array([[3, 4, 5], [3, 4, 5]]), (1,)),
    "far cluster": (np.r_[lattice(15, 15, 3), lattice(2, 2, 1) + [5000, 9000, 300]], (96,)),  # radius to the grid
    "sparse, huge extent": (np.random.default_rng(5).integers(0, (1 << 20) - 1, (300, 3)), (1, 20)),
    "scaled lattice": (shuffled(lattice(6, 6, 6) * 100, 9), (6, 26, 57)),
    "negative, offset": (lattice(7, 3, 5) * 3 - [10**6, 5, 40], (12,)),
}


@pytest.mark.parametrize("name", list(TIES))
def test_hash_equals_definition_and_grid_on_adversarial_grids(name):
    coords, ks = TIES[name]
    want = definition(coords, max(ks))
    for k in ks:
        got = hashed(coords, k)
        assert got.dtype == np.int64 and got.shape == (len(coords), k)
        np.testing.assert_array_equal(got, want[:, :k], err_msg=f"{name}, k={k}")
        np.testing.assert_array_equal(got, knn_graph(torch.from_numpy(coords), k, method="grid").numpy())


@pytest.mark.parametrize("s", [1, 2, 3, 5, 64, 1024])
def test_hash_result_does_not_depend_on_cell_side(s):
    rng = np.random.default_rng(6)
    coords = np.unique(rng.integers(0, 14, (700, 3)), axis=0)
    coords = shuffled(np.r_[coords, lattice(30, 2, 1) + [40, 0, 0]], 7)  # a blob and a thin strip
    np.testing.assert_array_equal(hashed(coords, 40, s=s), definition(coords, 40))


def test_hash_small_batches_give_the_same_graph(monkeypatch):
    """A tiny memory budget (many look-up and selection batches, one query each) changes nothing."""
    coords = shuffled(np.unique(np.random.default_rng(8).integers(0, 12, (500, 3)), axis=0), 8)
    want = definition(coords, 20)
    monkeypatch.setattr(hashknn, "_BUDGET", 64)
    np.testing.assert_array_equal(hashed(coords, 20), want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(-3, 20)), min_size=2, max_size=120),
    st.integers(1, 119),
    st.sampled_from([None, 1, 2, 4]),
)
def test_hash_equals_definition_property(points, k, s):
    coords = np.array(points, dtype=np.int64)
    k = min(k, len(coords) - 1)
    np.testing.assert_array_equal(hashed(coords, k, s=s), definition(coords, k))


@needs_data
def test_hash_equals_grid_and_kdtree_on_real_voxels():
    """scene0000_00 at 2 cm, K = 96: a 2 m slab of the room, and every 7th voxel of the whole room
    (sparser voxels: larger radii)."""
    xyz = np.load(DATA / "scene0000_00" / "points_xyzrgb.npy")[:, :3]
    coords, _ = voxelize(torch.from_numpy(xyz), 0.02)
    slab = coords[coords[:, 0] < coords[:, 0].min() + 100]
    assert slab.shape[0] > 10_000
    for c in (slab, coords[::7]):
        want = knn_graph(c, 96, method="grid")
        assert torch.equal(knn_graph(c, 96, method="hash"), want)
        assert torch.equal(want, knn_graph(c, 96, method="kdtree"))


def test_dispatch_takes_the_hash_on_cuda_only():
    assert auto_method("cuda", grid_ok=True, hash_ok=True) == "hash"
    assert auto_method(torch.device("cuda", 0), grid_ok=False, hash_ok=True) == "hash"
    assert auto_method("cuda", grid_ok=False, hash_ok=False) == "brute"  # non-integral coordinates
    assert auto_method("cpu", grid_ok=True, hash_ok=True) == "grid"
    assert auto_method("cpu", grid_ok=False, hash_ok=False) == "kdtree"
    with pytest.raises(ValueError, match="hash"):
        knn_graph(lattice(3, 3, 3) * 0.3, 4, method="hash")
    with pytest.raises(ValueError):
        knn_graph(lattice(1, 1, 1), 1, method="hash")  # a single voxel has no neighbour

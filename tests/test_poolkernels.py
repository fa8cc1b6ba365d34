"""The compiled pooling kernels (geopurify.ops.poolkernels) on real voxels of scene0000_00 (K = 96):
pooling equal bit for bit to torch's embedding_bag steps for any channel count and thread count;
edge dot products equal to the float64 definition up to float32 rounding; purify_scene (both
pooling formulations, both unseen-voxel policies) gives the same labels with the kernels as with
the plain torch path (sampled product + embedding_bag)."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geopurify.config import load_config
from geopurify.data.scene import Scene
from geopurify.ops import poolkernels
from geopurify.ops.knn import knn_graph
from geopurify.ops.voxel import voxelize
from geopurify.purify import infer, pooling

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "scannet" / "scene0000_00"
needs_data = pytest.mark.skipif(not (SCENE / "points_xyzrgb.npy").exists(), reason="shared ScanNet data not found")


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """A 2 m slab of scene0000_00 (~25k voxels at 2 cm)."""
    p = np.load(SCENE / "points_xyzrgb.npy")
    return p[p[:, 0] < p[:, 0].min() + 2.0]


@pytest.fixture(scope="module")
def graph(points):
    coords, _ = voxelize(torch.from_numpy(np.ascontiguousarray(points[:, :3])), 0.02)
    idx = knn_graph(coords, 96)
    g = torch.Generator().manual_seed(0)
    W = torch.softmax(torch.randn(idx.shape, generator=g) * 3, 1)
    return idx, W


def bag_steps(f: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        f = F.embedding_bag(idx, f, per_sample_weights=W, mode="sum")
    return f


@needs_data
@pytest.mark.parametrize("channels", [1, 8, 13, 20, 24, 41])  # one vector pass, tails of 1 and 2 vectors
@pytest.mark.parametrize("threads", [1, 2])
def test_pool_steps_bit_identical_to_embedding_bag(graph, channels, threads):
    idx, W = graph
    f = torch.randn(idx.shape[0], channels, generator=torch.Generator().manual_seed(channels))
    got = poolkernels.pool_steps(f.numpy(), idx.numpy(), W.numpy(), 5, threads=threads)
    want = bag_steps(f, idx, W, 5)
    assert got.shape == (idx.shape[0], channels) and got.flags.c_contiguous
    assert np.array_equal(got, want.numpy())
    assert not np.array_equal(got, f.numpy())  # the kernel did pool


@needs_data
def test_pool_compiled_equals_bag_through_pool(graph, monkeypatch):
    """pooling.pool: the CPU default (compiled) and embedding_bag, 18 steps, several channel blocks."""
    idx, W = graph
    monkeypatch.setattr(pooling, "_POOL_CHANNELS", 16)
    f = torch.randn(idx.shape[0], 37, generator=torch.Generator().manual_seed(1))
    got = pooling.pool(f, idx, W, 18, progress=False)
    assert torch.equal(got, pooling.pool(f, idx, W, 18, method="bag", progress=False))
    assert torch.equal(pooling.pool(f[:, 3], idx, W, 18, progress=False), got[:, 3])
    assert torch.equal(pooling.pool(f, idx, W, 0, progress=False), f)


@needs_data
@pytest.mark.parametrize("dim", [8, 16, 20, 128])  # below one vector, one vector, a tail, the default
def test_edge_dots_equal_the_definition(graph, dim):
    idx, _ = graph
    g = F.normalize(torch.randn(idx.shape[0], dim, generator=torch.Generator().manual_seed(dim)), dim=1)
    got = poolkernels.edge_dots(g.numpy(), idx.numpy(), threads=2)
    gd = g.double()
    want = torch.cat(
        [torch.einsum("vc,vkc->vk", gd[s : s + 4096], gd[idx[s : s + 4096]]) for s in range(0, len(g), 4096)]
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)  # every edge, in float64 (rows in blocks)
    np.testing.assert_allclose(got, pooling.edge_cosines(g, idx, "sampled").numpy(), rtol=0, atol=1e-6)


def _torch_path(monkeypatch) -> None:
    """purify_scene on the plain torch kernels: sampled product weights, embedding_bag pooling."""
    monkeypatch.setattr(infer, "affinity_weights", functools.partial(pooling.affinity_weights, method="sampled"))
    monkeypatch.setattr(infer, "pool_scores", functools.partial(pooling.pool_scores, method="bag"))
    monkeypatch.setattr(infer, "pool_reference", functools.partial(pooling.pool_reference, method="bag"))


@needs_data
@pytest.mark.parametrize("pooling_name", ["scores", "features"])
@pytest.mark.parametrize("unseen", ["nearest_seen", "reference"])
def test_purify_scene_labels_identical_to_torch_path(points, pooling_name, unseen, monkeypatch):
    """End to end, k = 96, T = 18, real voxels, an untrained student (64-d embeddings), smooth
    lifted features with noise, a box of points unseen (zero features, as lifting leaves them)."""
    from geopurify.student.network import build_student

    xyz = np.ascontiguousarray(points[:, :3])
    scene = Scene("slab", xyz, points[:, 3:6].astype(np.uint8))
    g = torch.Generator().manual_seed(2)
    C, P = 24, 12
    text = F.normalize(torch.randn(P, C, generator=g), dim=1)
    field = torch.cos(torch.from_numpy(xyz).double() @ (torch.randn(3, C, generator=g, dtype=torch.float64) * 3))
    feat = (field.float() + 0.5 * torch.randn(len(xyz), C, generator=g)).contiguous()
    lo = xyz.min(0)
    seen = ~torch.from_numpy((xyz[:, 1] < lo[1] + 1.0) & (xyz[:, 2] < lo[2] + 0.5))
    feat[~seen] = 0
    lifted = SimpleNamespace(feat=feat, seen=seen)
    cfg = load_config(None, {"purify": {"unseen": unseen}})
    torch.manual_seed(0)
    model = build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 64}, C + 6)
    fast = infer.purify_scene(scene, lifted, model, text, cfg, pooling=pooling_name)
    _torch_path(monkeypatch)
    plain = infer.purify_scene(scene, lifted, model, text, cfg, pooling=pooling_name)
    assert fast.info["filled_voxels"] == plain.info["filled_voxels"]
    assert fast.info["unseen_voxels"] > 100
    assert len(np.unique(fast.labels)) >= 6  # labels vary: the comparison can fail
    np.testing.assert_array_equal(fast.labels, plain.labels)
    assert torch.equal(fast.fill, plain.fill)
    # weights differ in the last bits (sums in another order), the pooled scores accordingly
    assert (fast.weights - plain.weights).abs().max() < 1e-5
    np.testing.assert_allclose(fast.voxel_scores.numpy(), plain.voxel_scores.numpy(), rtol=1e-4, atol=1e-5)


def test_auto_methods_keep_gradients():
    """Inputs that need gradients take the torch kernels (the compiled ones have no autograd)."""
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(0, 8, (200, 3)), axis=0)
    idx = knn_graph(coords, 8)
    emb = torch.randn(len(coords), 16, requires_grad=True)
    W = pooling.affinity_weights(emb, idx, 0.05)
    out = pooling.pool(torch.randn(len(coords), 5), idx, W, 3, progress=False)
    out.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(pooling.affinity_weights(emb, idx, 0.05), W, atol=1e-5)

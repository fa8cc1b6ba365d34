"""Prompts on demand (geopurify.purify.query): the pooled prompt column equals the purified features
dotted with the unit prompt (linearity), is the cosine scaled by the purified feature's norm, the
per-step class labels equal purify_scene / knn_mean_scene, and a point's top scores come from its
exact purified feature."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geopurify.config import load_config
from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.purify.infer import knn_mean_scene, purified_features, purify_scene
from geopurify.purify.query import (
    MAX_STEPS,
    PoolingMatrix,
    build_session,
    feature_at,
    prompt_relevance,
    prompt_steps,
    top_scores,
)

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "scannet" / "scene0000_00"
pytestmark = pytest.mark.skipif(not (SCENE / "points_xyzrgb.npy").exists(), reason="shared ScanNet data not found")


def smooth_field(xyz: torch.Tensor, dim: int, length: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(3, 32, generator=g, dtype=torch.float64) / length
    phi = torch.rand(32, generator=g, dtype=torch.float64) * 6.283
    mix = torch.randn(32, dim, generator=g, dtype=torch.float64)
    return (torch.cos(xyz.double() @ omega + phi) @ mix).float()


@pytest.fixture(scope="module")
def case():
    """~6k real points of scene0000_00, smooth random lifted features, a box of unseen points, a tiny
    random student."""
    from geopurify.student.network import build_student

    p = np.load(SCENE / "points_xyzrgb.npy")
    p = p[(p[:, 0] < p[:, 0].min() + 1.2) & (p[:, 1] < p[:, 1].min() + 3)]
    scene = Scene("crop", np.ascontiguousarray(p[:, :3]), p[:, 3:6].astype(np.uint8), path=SCENE)
    g = torch.Generator().manual_seed(3)
    C = 12
    text = F.normalize(torch.randn(8, C, generator=g), dim=1)
    feat = torch.randn(len(p), C, generator=g) + 2 * F.normalize(
        smooth_field(torch.from_numpy(p[:, :3]), C, 0.4, 7), dim=1
    )
    lo = p[:, :3].min(0)
    seen = ~torch.from_numpy((p[:, 0] < lo[0] + 0.3) & (p[:, 1] < lo[1] + 0.8))
    lifted = SimpleNamespace(feat=feat.half().float(), seen=seen, info={})
    cfg = load_config(None, {"purify": {"k": 24, "steps": 6}})
    torch.manual_seed(0)
    model = build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 16}, C + 6)
    session = build_session(scene, lifted, model, text, [f"c{i}" for i in range(8)], cfg)
    return scene, lifted, text, cfg, model, session


def test_prompt_column_is_purified_features_dot_unit_prompt(case):
    scene, lifted, text, cfg, model, session = case
    w = torch.randn(lifted.feat.shape[1], generator=torch.Generator().manual_seed(9)) * 3  # not unit on purpose
    stack = prompt_steps(session, w)
    for T in (0, 1, 6, 11):
        cfg_t = load_config(None, {"purify": {"k": 24, "steps": T}})
        feats = purified_features(scene, lifted, model, cfg_t)  # all C channels pooled, then filled
        unit = F.normalize(w, dim=0)
        want = (feats @ unit).numpy()
        got = session.to_points(stack[T])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        # the shown quantity is the cosine scaled by the purified feature's norm
        cos = (F.normalize(feats, dim=1) @ unit).numpy()
        np.testing.assert_allclose(got, cos * feats.norm(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    assert stack.computed == 11  # steps are kept, not recomputed
    np.testing.assert_array_equal(prompt_relevance(session, w), session.to_points(stack[6]))  # default T = config


def test_step_labels_equal_purify_scene_and_knn_mean(case):
    scene, lifted, text, cfg, model, session = case
    for T in (0, 3, 6):
        cfg_t = load_config(None, {"purify": {"k": 24, "steps": T}})
        pur = purify_scene(scene, lifted, model, text, cfg_t, pooling="scores")
        knn = knn_mean_scene(scene, lifted, text, cfg_t, pooling="scores")
        assert (session.labels("purified", T) == pur.labels).mean() >= 0.999
        assert (session.labels("knn_mean", T) == knn.labels).mean() >= 0.999
    np.testing.assert_array_equal(session.raw_labels, pur.raw_labels)
    assert (session.labels("purified", 6) != session.labels("knn_mean", 6)).any()  # different weights


def test_reference_unseen_policy_matches_purify_scene(case):
    """Under purify.unseen: reference the session labels unseen voxels by their own pooled scores and
    shows their own relevance, as purify_scene / purified_features do, not the nearest seen voxel's."""
    scene, lifted, text, cfg, model, _ = case
    over = {"purify": {"k": 24, "steps": 6, "unseen": "reference"}}
    ref_cfg = load_config(None, over)
    session = build_session(scene, lifted, model, text, [f"c{i}" for i in range(8)], ref_cfg)
    unseen = ~lifted.seen.numpy()
    w = torch.randn(lifted.feat.shape[1], generator=torch.Generator().manual_seed(4))
    for T in (0, 3, 6):
        cfg_t = load_config(None, {"purify": {**over["purify"], "steps": T}})
        pur = purify_scene(scene, lifted, model, text, cfg_t, pooling="scores")
        knn = knn_mean_scene(scene, lifted, text, cfg_t, pooling="scores")
        got = session.labels("purified", T)
        assert (got == pur.labels).mean() >= 0.999 and (got[unseen] == pur.labels[unseen]).mean() >= 0.99
        assert (session.labels("knn_mean", T) == knn.labels).mean() >= 0.999
        feats = purified_features(scene, lifted, model, cfg_t)
        want = (feats @ F.normalize(w, dim=0)).numpy()
        np.testing.assert_allclose(session.to_points(prompt_steps(session, w)[T]), want, rtol=1e-4, atol=1e-5)
    near = case[-1]  # the nearest_seen session: unseen points show other voxels' labels there
    assert (near.labels("purified", 6)[unseen] != session.labels("purified", 6)[unseen]).any()


def test_top_scores_at_a_point_match_the_heat_map(case):
    scene, lifted, text, cfg, model, session = case
    prompts = {
        "p0": torch.randn(12, generator=torch.Generator().manual_seed(1)).numpy(),
        "p1": torch.randn(12, generator=torch.Generator().manual_seed(2)).numpy(),
    }
    unseen = int(np.flatnonzero(~lifted.seen.numpy())[0])
    for point in (0, 1234, unseen):
        for T in (0, 5):
            f = feature_at(session, point, T)
            cfg_t = load_config(None, {"purify": {"k": 24, "steps": T}})
            np.testing.assert_allclose(f, purified_features(scene, lifted, model, cfg_t)[point].numpy(), atol=1e-5)
            top = top_scores(session, point, T, prompts, n=3)
            assert len(top["classes"]) == 3 and len(top["prompts"]) == 2
            for name, score in top["prompts"]:
                np.testing.assert_allclose(
                    score, session.to_points(prompt_steps(session, prompts[name])[T])[point], rtol=1e-4, atol=1e-5
                )
            scores = [s for _, s in top["classes"]]
            assert scores == sorted(scores, reverse=True)
            assert top["classes"][0][0] == f"c{session.labels('purified', T)[point]}"


def test_without_a_student_prompts_pool_over_knn_mean(case):
    scene, lifted, text, cfg, model, session = case
    plain = build_session(scene, lifted, None, text, [f"c{i}" for i in range(8)], cfg)
    assert plain.pool["purified"] is None and plain.relevance_pool == "knn_mean"
    with pytest.raises(ValueError, match="no purified weights"):
        plain.labels("purified", 3)
    w = text[2]
    got = prompt_relevance(plain, w, 4)
    want = session.to_points(prompt_steps(session, w, method="knn_mean")[4])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_prompt_and_steps(case):
    session = case[-1]
    with pytest.raises(InputError, match="different VLMs"):
        prompt_steps(session, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="0..36"):
        prompt_steps(session, np.ones(12, np.float32))[MAX_STEPS + 1]


def test_pooling_matrix_blocks_give_the_same_product():
    """Row blocks on threads multiply exactly as one matrix (and as the dense definition)."""
    rng = np.random.default_rng(0)
    V, k = 301, 7
    idx = torch.from_numpy(rng.integers(0, V, (V, k)))
    W = torch.softmax(torch.from_numpy(rng.normal(size=(V, k))).float(), 1)
    x = rng.normal(size=(V, 3)).astype(np.float32)
    one = PoolingMatrix(idx, W, threads=1)
    many = PoolingMatrix(idx, W, threads=4)
    assert len(one.blocks) == 1 and len(many.blocks) == 4
    np.testing.assert_array_equal(one @ x, many @ x)
    dense = np.zeros((V, V))
    np.add.at(dense, (np.repeat(np.arange(V), k), idx.numpy().ravel()), W.numpy().ravel())
    np.testing.assert_allclose(many @ x, dense @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.tocsr().toarray(), dense, atol=1e-7)

"""Lifting: projection, visibility, z-buffer, fusion and feature files.

Real data: ../shared/data/scannet/scene0000_00 (3 real colour frames, no depth) and scene0000_01
(no frames). Tiny in-test VLMs whose "feature" is the frame's colour image (or random maps)
stand in for a real VLM where the test needs a known answer.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geopurify.config import load_config
from geopurify.data.cameras import look_at
from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError
from geopurify.lift.fusion import MeanFusion, TopKFusion, consensus_classes, nearest_fill
from geopurify.lift.multiview import lift_scene
from geopurify.lift.result import LiftResult, load_lifted, save_lifted
from geopurify.ops.project import depth_test, in_image, project, rescale_intrinsic, visible, zbuffer
from geopurify.ops.resize import map_index, resize_nearest
from geopurify.vlm.base import VLM

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scannet"
SCENE0 = DATA / "scene0000_00"
SCENE1 = DATA / "scene0000_01"
needs_data = pytest.mark.skipif(not SCENE0.is_dir(), reason="shared ScanNet test data not present")


# ---------------------------------------------------------------- helpers


def pinhole(f, hw) -> np.ndarray:
    return np.array([[f, 0, (hw[1] - 1) / 2], [0, f, (hw[0] - 1) / 2], [0, 0, 1.0]])


def cam_to_world(pose, pts_cam) -> np.ndarray:
    return (pts_cam @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)


def grid(x0, x1, y0, y1, z, step) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1)


class MemFrame(Frame):
    """A frame whose depth image is in memory (the test needs no PNG round trip)."""

    def __init__(self, *a, depth_img=None, **kw):
        super().__init__(*a, **kw)
        self._depth_img = depth_img

    def depth(self):
        return self._depth_img


class ColorVLM(VLM):
    """In-test VLM: the 'feature' of a pixel is its colour (3-d, not normalised)."""

    name, simulated, dim = "colour-as-feature (test)", False, 3

    def encode_text(self, prompts):
        raise NotImplementedError

    def frame_features(self, scene, i, hw):
        img = Image.fromarray(scene.frames[i].color()).resize((hw[1], hw[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)


class RandomMapVLM(VLM):
    """In-test VLM: unit random maps (dim, h, w), a function of the frame index only."""

    name, simulated = "random maps (test)", False

    def __init__(self, dim=8, patch=4, n_text=5):
        self.dim, self.patch = dim, patch
        g = torch.Generator().manual_seed(123)
        self.text = torch.nn.functional.normalize(torch.randn(n_text, dim, generator=g), dim=1)
        self.calls = 0

    def encode_text(self, prompts):
        return self.text[: len(prompts)]

    def frame_features(self, scene, i, hw):
        self.calls += 1
        g = torch.Generator().manual_seed(1000 + i)
        h, w = math.ceil(hw[0] / self.patch), math.ceil(hw[1] / self.patch)
        return torch.nn.functional.normalize(torch.randn(self.dim, h, w, generator=g), dim=0)


@pytest.fixture(scope="module")
def scene0():
    from geopurify.data.readers import load_scene

    return load_scene(SCENE0, frame_step=1)


def small_scene(seed=0, n=400, n_frames=5, hw=(48, 64), with_depth=False):
    """Points on the inner walls of a 4 x 4 x 3 m box, seen by cameras inside it."""
    rng = np.random.default_rng(seed)
    p = rng.uniform([0, 0, 0], [4, 4, 3], (n, 3))
    face = rng.integers(0, 4, n)
    p[face == 0, 0], p[face == 1, 0], p[face == 2, 1], p[face == 3, 1] = 0, 4, 0, 4
    K = pinhole(40.0, hw)
    frames = []
    for k in range(n_frames):
        pose = look_at(rng.uniform([1.5, 1.5, 1.2], [2.5, 2.5, 1.8]), rng.uniform([0, 0, 0.5], [4, 4, 2.5]))
        d = None
        if with_depth:
            d = zbuffer(torch.from_numpy(p.astype(np.float32)), pose, K, hw, splat=1)[0].numpy()
        frames.append(MemFrame(str(k), pose, K, depth_img=d))
    return Scene("box", p.astype(np.float32), rng.integers(0, 256, (n, 3)).astype(np.uint8), frames=frames)


def cfg_for(hw, **lift):
    cfg = load_config(None)
    cfg["lift"].update({"image_size": [hw[1], hw[0]], "border": 2, **lift})
    return cfg


# ---------------------------------------------------------------- projection


def test_project_matches_numpy_pinhole_single_and_batched():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-3, 3, (500, 3)).astype(np.float32)
    poses = [look_at(rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3) + [0, 5, 0]) for _ in range(3)]
    Ks = [np.array([[300.0 + 10 * k, 0, 160], [0, 290.0, 120], [0, 0, 1]]) for k in range(3)]
    uv_b, z_b = project(torch.from_numpy(xyz), np.stack(poses), np.stack(Ks))
    for k, (pose, K) in enumerate(zip(poses, Ks)):
        cam = (np.linalg.inv(pose) @ np.c_[xyz, np.ones(len(xyz))].T)[:3]
        u = K[0, 0] * cam[0] / cam[2] + K[0, 2]
        v = K[1, 1] * cam[1] / cam[2] + K[1, 2]
        uv, z = project(torch.from_numpy(xyz), pose, K)
        ok = np.abs(cam[2]) > 0.1
        np.testing.assert_allclose(z.numpy(), cam[2], atol=1e-4)
        np.testing.assert_allclose(uv.numpy()[ok], np.c_[u, v][ok], rtol=1e-4, atol=1e-2)
        assert torch.equal(uv, uv_b[k]) and torch.equal(z, z_b[k])


def test_rescale_intrinsic_maps_pixel_centres():
    K0 = np.array([[1169.6, 0, 646.3], [0, 1167.1, 489.9], [0, 0, 1]])
    K = rescale_intrinsic(K0, (968, 1296), (240, 320))
    xyz = torch.from_numpy(np.random.default_rng(1).uniform([-1, -1, 1], [1, 1, 4], (200, 3)).astype(np.float32))
    uv0, _ = project(xyz, np.eye(4), K0)
    uv1, _ = project(xyz, np.eye(4), K)
    expect = (uv0 + 0.5) * torch.tensor([320 / 1296, 240 / 968]) - 0.5
    torch.testing.assert_close(uv1, expect, atol=1e-3, rtol=0)


def test_in_image_border_and_front_masks_match_loop():
    uv = torch.tensor(
        [
            [10.0, 10.0],
            [9.6, 20.0],
            [9.4, 20.0],
            [53.4, 30.0],
            [53.6, 30.0],
            [30.0, 37.4],
            [30.0, 37.6],
            [30.0, 20.0],
            [float("nan"), 3.0],
        ]
    )
    z = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, -1, 1])
    mask, pix = in_image(uv, z, (48, 64), border=10)
    expect = []
    for (u, v), zz in zip(uv.tolist(), z.tolist()):
        c, r = (round(u), round(v)) if math.isfinite(u) else (-1, -1)
        expect.append(zz > 0 and 10 <= c < 64 - 10 and 10 <= r < 48 - 10)
    assert mask.tolist() == expect
    assert pix[0].tolist() == [10, 10] and pix[~mask].abs().sum() == 0


def test_depth_test_relative_threshold_and_missing_depth():
    z = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0])
    d = torch.tensor([2.09, 2.11, 1.91, 1.89, 0.0])
    assert depth_test(z, d, 0.05).tolist() == [True, False, True, False, False]


# ---------------------------------------------------------------- z-buffer


def naive_zbuffer(xyz, pose, K, hw, splat):
    H, W = hw
    cam = (np.linalg.inv(pose) @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T
    depth, index = np.zeros(hw), -np.ones(hw, int)
    best = np.full(hw, np.inf)
    for i, (x, y, z) in enumerate(cam):
        if z <= 0:
            continue
        c, r = round(K[0, 0] * x / z + K[0, 2]), round(K[1, 1] * y / z + K[1, 2])
        for rr in range(r - splat, r + splat + 1):
            for cc in range(c - splat, c + splat + 1):
                if 0 <= rr < H and 0 <= cc < W and z < best[rr, cc]:
                    best[rr, cc], depth[rr, cc], index[rr, cc] = z, z, i
    return depth, index


@pytest.mark.parametrize("splat", [0, 2])
def test_zbuffer_equals_naive_loop(splat):
    rng = np.random.default_rng(splat)
    hw = (24, 32)
    xyz = rng.uniform([-2, -2, -1], [2, 2, 6], (300, 3)).astype(np.float32)
    pose, K = np.eye(4), pinhole(20.0, hw)
    pose[:3, 3] = [0.1, -0.2, -0.5]
    depth, index = zbuffer(torch.from_numpy(xyz), pose, K, hw, splat=splat, chunk=70)
    d_ref, i_ref = naive_zbuffer(xyz, pose, K, hw, splat)
    assert np.array_equal(index.numpy(), i_ref)
    np.testing.assert_allclose(depth.numpy(), d_ref, atol=1e-5)
    # batched views give the same images as single views
    d2, i2 = zbuffer(torch.from_numpy(xyz), np.stack([np.eye(4), pose]), np.stack([K, K]), hw, splat=splat)
    assert torch.equal(i2[1], index) and torch.equal(d2[1], depth)


def occluder_scene():
    """A 1 x 1 m patch 3 m in front of the camera, its left half hidden by a wall of points at 1.5 m."""
    hw = (240, 320)
    K = pinhole(300.0, hw)
    pose = look_at([1.0, 2.0, 1.5], [1.0, 6.0, 1.5])
    patch = grid(-0.5, 0.5, -0.5, 0.5, 3.0, 0.02)
    wall = grid(-0.6, 0.0, -0.6, 0.6, 1.5, 0.02)  # covers x/z < 0 at the patch's depth
    pts_cam = np.r_[patch, wall]
    hidden = np.r_[patch[:, 0] < -0.05, np.zeros(len(wall), bool)]  # clear of the wall's edge
    xyz = cam_to_world(pose, pts_cam)
    inside, _ = in_image(*project(torch.from_numpy(xyz), pose, K), hw, border=10)
    shown = np.r_[patch[:, 0] > 0.05, wall[:, 0] < -0.05] & inside.numpy()
    return hw, K, pose, xyz, pts_cam, hidden, shown


def test_occluder_removed_with_depth_image_and_with_zbuffer():
    hw, K, pose, xyz, pts_cam, hidden, shown = occluder_scene()
    # depth image of the two surfaces, rendered analytically per pixel ray
    r, c = np.mgrid[0 : hw[0], 0 : hw[1]]
    dx, dy = (c - K[0, 2]) / K[0, 0], (r - K[1, 2]) / K[1, 1]
    depth = np.zeros(hw, np.float32)
    on_patch = (np.abs(3 * dx) <= 0.5) & (np.abs(3 * dy) <= 0.5)
    on_wall = (1.5 * dx >= -0.6) & (1.5 * dx <= 0.0) & (np.abs(1.5 * dy) <= 0.6)
    depth[on_patch] = 3.0
    depth[on_wall] = 1.5
    x = torch.from_numpy(xyz)
    for kw in ({"depth": torch.from_numpy(depth)}, {"splat": 2}):
        idx, pix = visible(x, pose, K, hw, border=10, thr=0.05, **kw)
        kept = np.zeros(len(xyz), bool)
        kept[idx.numpy()] = True
        assert not kept[hidden].any(), kw.keys()
        assert kept[shown].mean() > 0.99, kw.keys()
    # without a footprint the sparse wall lets hidden points through its gaps: why the splat exists
    idx0, _ = visible(x, pose, K, hw, border=10, thr=0.05, splat=0)
    assert np.isin(np.flatnonzero(hidden), idx0.numpy()).mean() > 0.3


def test_depth_camera_intrinsics_used_for_the_occlusion_lookup():
    """Depth images made with another camera (ScanNet: depth != colour) are read with K_depth."""
    hw = (120, 160)
    K = pinhole(140.0, hw)
    K_d = np.array([[110.0, 0, 70.0], [0, 105.0, 66.0], [0, 0, 1]])
    pose = look_at([0.0, 0.0, 1.0], [0.0, 5.0, 1.0])
    wall = grid(-2.0, 2.0, -1.5, 1.5, 4.0, 0.02)
    box = grid(-0.3, 0.3, -0.3, 0.3, 2.0, 0.02)
    pts_cam = np.r_[wall, box]
    xyz = cam_to_world(pose, pts_cam)
    r, c = np.mgrid[0 : hw[0], 0 : hw[1]]
    dx, dy = (c - K_d[0, 2]) / K_d[0, 0], (r - K_d[1, 2]) / K_d[1, 1]
    depth = np.where((np.abs(4 * dx) <= 2) & (np.abs(4 * dy) <= 1.5), 4.0, 0.0)
    depth = np.where((np.abs(2 * dx) <= 0.3) & (np.abs(2 * dy) <= 0.3), 2.0, depth).astype(np.float32)
    # truth: a wall point is hidden when its ray crosses the box square at z = 2
    behind = np.r_[(np.abs(wall[:, 0] / 2) <= 0.3) & (np.abs(wall[:, 1] / 2) <= 0.3), np.zeros(len(box), bool)]
    edge = np.r_[
        np.minimum(np.abs(np.abs(wall[:, 0] / 2) - 0.3), np.abs(np.abs(wall[:, 1] / 2) - 0.3)) < 0.03,
        np.zeros(len(box), bool),
    ]
    inside, _ = in_image(*project(torch.from_numpy(xyz), pose, K), hw, border=5)
    uvd, _ = project(torch.from_numpy(xyz), pose, K_d)
    depth_fov = ((uvd.round() >= 0) & (uvd.round() < torch.tensor([hw[1], hw[0]]))).all(1).numpy()
    judge = inside.numpy() & ~edge & depth_fov
    truth = ~behind

    def agreement(K_depth):
        idx, _ = visible(
            torch.from_numpy(xyz), pose, K, hw, border=5, thr=0.05, depth=torch.from_numpy(depth), K_depth=K_depth
        )
        kept = np.zeros(len(xyz), bool)
        kept[idx.numpy()] = True
        return (kept[judge] == truth[judge]).mean()

    assert agreement(K_d) > 0.99
    assert agreement(None) < 0.95  # reading the depth image with the colour intrinsics is wrong


# ---------------------------------------------------------------- real data: scene0000_00


@needs_data
def test_real_frames_points_pick_up_their_own_colours(scene0):
    assert len(scene0.frames) == 3
    rng = np.random.default_rng(0)
    shuffled = scene0.rgb[rng.permutation(scene0.n_points)].astype(float)
    xyz = torch.from_numpy(scene0.xyz)
    for frame in scene0.frames:
        img = frame.color().astype(float)
        hw = img.shape[:2]
        mask, pix = in_image(*project(xyz, frame.pose, frame.intrinsic), hw, border=10)
        m, p = mask.numpy(), pix.numpy()[mask.numpy()]
        assert m.sum() > 3000
        got = img[p[:, 1], p[:, 0]]
        err = np.abs(got - scene0.rgb[m]).mean()
        err_shuffled = np.abs(got - shuffled[m]).mean()
        assert err < 45 and err_shuffled > 55, (frame.name, err, err_shuffled)


@needs_data
def test_lifting_real_colours_recovers_point_colours(scene0):
    cfg = load_config(None)  # 320 x 240, border 10, z-buffer occlusion (no depth frames)
    res = lift_scene(scene0, ColorVLM(), cfg)
    seen = res.seen.numpy()
    assert res.info["frames_with_depth"] == 0 and res.info["n_frames"] == 3
    assert 0.05 < seen.mean() < 0.5 and res.n_views.max() <= 3
    assert np.array_equal(res.n_views.numpy() > 0, seen)
    rgb = scene0.rgb.astype(np.float32)
    shuffled = rgb[np.random.default_rng(0).permutation(len(rgb))]
    err = np.abs(res.feat.numpy()[seen] - rgb[seen]).mean()
    err_shuffled = np.abs(res.feat.numpy()[seen] - shuffled[seen]).mean()
    assert err < 30 and err < 0.5 * err_shuffled, (err, err_shuffled)
    # the z-buffer occlusion test is what removes background points: switching it off is worse
    cfg_off = load_config(None, {"lift": {"occlusion_thr": 1e9}})
    off = lift_scene(scene0, ColorVLM(), cfg_off)
    seen_off = off.seen.numpy()
    err_off = np.abs(off.feat.numpy()[seen_off] - rgb[seen_off]).mean()
    assert seen_off.sum() > seen.sum() and err_off > err + 5, (err, err_off)


@needs_data
def test_frameless_scene_uses_virtual_cameras_only_for_a_simulated_vlm():
    from geopurify.data.readers import load_scene

    scene = load_scene(SCENE1)
    assert not scene.frames
    cfg = load_config(None, {"lift": {"virtual_frames": 6}})
    with pytest.raises(InputError, match="no posed frames"):
        lift_scene(scene, RandomMapVLM(), cfg)

    class PointColourVLM(ColorVLM):
        """Simulated-flagged test VLM: renders the points' own colours through the z-buffer."""

        simulated = True

        def frame_features(self, sc, i, hw):
            f = sc.frames[i]
            _, index = zbuffer(torch.from_numpy(sc.xyz), f.pose, f.intrinsic, hw, splat=2)
            img = torch.zeros(3, *hw)
            hit = index >= 0
            img[:, hit] = torch.from_numpy(sc.rgb[index[hit].numpy()].T.astype(np.float32))
            return img

    res = lift_scene(scene, PointColourVLM(), cfg)
    assert res.info["virtual_frames"] and res.info["n_frames"] == 6
    seen = res.seen.numpy()
    assert seen.mean() > 0.2
    err = np.abs(res.feat.numpy()[seen] - scene.rgb[seen]).mean()
    assert err < 20, err


# ---------------------------------------------------------------- fusion


def random_views(n=60, n_views=7, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = []
    for _ in range(n_views):
        idx = torch.randperm(n, generator=g)[: int(torch.randint(5, n, (1,), generator=g))]
        views.append((idx, torch.randn(len(idx), dim, generator=g)))
    return views


def test_mean_fusion_equals_python_loop():
    n, dim = 60, 6
    views = random_views(n, dim=dim)
    fus = MeanFusion(n, dim)
    for idx, f in views:
        fus.add(idx, f)
    per_point = [[] for _ in range(n)]
    for idx, f in views:
        for j, i in enumerate(idx.tolist()):
            per_point[i].append(f[j])
    for i in range(n):
        assert int(fus.count[i]) == len(per_point[i])
        expect = torch.stack(per_point[i]).mean(0) if per_point[i] else torch.zeros(dim)
        torch.testing.assert_close(fus.mean()[i], expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(fus.mean(), fus.mean(inplace=True))


@pytest.mark.parametrize("group_bytes", [1, 1 << 30])
def test_mean_fusion_of_table_rows_equals_python_loop(group_bytes):
    """Views given as (point, feature-map cell) pairs, folded per view or all in one group."""
    n, dim = 60, 6
    g = torch.Generator().manual_seed(5)
    views = []
    for idx, _ in random_views(n, dim=dim, seed=5):
        table = torch.randn(int(torch.randint(3, 9, (1,), generator=g)), dim, generator=g)
        views.append((idx, torch.randint(0, len(table), (len(idx),), generator=g), table))
    fus = MeanFusion(n, dim, group_bytes=group_bytes)
    for idx, rows, table in views:
        fus.add_table(idx, rows, table)
    sums, counts = torch.zeros(n, dim), [0] * n
    for idx, rows, table in views:
        for i, r in zip(idx.tolist(), rows.tolist()):
            sums[i] += table[r]
            counts[i] += 1
    assert fus.count.tolist() == counts
    expect = sums / torch.tensor(counts).clamp(min=1)[:, None]
    torch.testing.assert_close(fus.mean(), expect, atol=1e-5, rtol=1e-5)


def naive_consensus(views, n, dim, text, k, scale):
    per_point = [[] for _ in range(n)]
    for idx, f in views:
        for j, i in enumerate(idx.tolist()):
            per_point[i].append(f[j])
    out = torch.zeros(n, dim)
    for i, fs in enumerate(per_point):
        if not fs:
            continue
        logits = [scale * (text @ f) for f in fs]  # per view, all classes
        c = int(torch.stack(logits).mean(0).argmax())
        scored = sorted(((float(lg[c]), j) for j, lg in enumerate(logits)), reverse=True)[:k]
        w = torch.softmax(torch.tensor([s for s, _ in scored]), 0)
        out[i] = sum(wi * fs[j] for wi, (_, j) in zip(w, scored))
    return out


@pytest.mark.parametrize("k,scale", [(3, 100.0), (2, 5.0), (1, 1.0)])
def test_consensus_fusion_equals_naive_definition(k, scale):
    n, dim = 60, 6
    views = random_views(n, dim=dim, seed=k)
    text = torch.nn.functional.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(9)), dim=1)
    mean = MeanFusion(n, dim)
    for idx, f in views:
        mean.add(idx, f)
    cls = consensus_classes(mean.mean(), text)
    topk = TopKFusion(text[cls], k=k, logit_scale=scale)
    for idx, f in views:
        topk.add(idx, f)
    got = topk.result()
    torch.testing.assert_close(got, naive_consensus(views, n, dim, text, k, scale), atol=1e-5, rtol=1e-4)
    assert torch.equal(got[~mean.seen], torch.zeros_like(got[~mean.seen]))


def test_nearest_fill_takes_nearest_seen_feature():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, 1, (200, 3)).astype(np.float32)
    feat = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32))
    seen = torch.from_numpy(rng.random(200) < 0.4)
    out = nearest_fill(xyz, feat, seen)
    s = np.flatnonzero(seen.numpy())
    for i in range(200):
        if seen[i]:
            assert torch.equal(out[i], feat[i])
        else:
            j = s[np.argmin(((xyz[s] - xyz[i]) ** 2).sum(1))]
            assert torch.equal(out[i], feat[j])
    none_seen = nearest_fill(xyz, torch.zeros(200, 4), torch.zeros(200, dtype=torch.bool))
    assert torch.equal(none_seen, torch.zeros(200, 4))


# ---------------------------------------------------------------- lift_scene


def test_map_index_and_resize_nearest_match_references():
    H, W, h, w = 37, 50, 5, 7
    cols, rows = np.meshgrid(np.arange(W), np.arange(H))
    pix = torch.from_numpy(np.c_[cols.ravel(), rows.ravel()])
    flat = map_index(pix, (H, W), (h, w)).numpy()
    expect = [int((r + 0.5) * h / H) * w + int((c + 0.5) * w / W) for c, r in pix.tolist()]
    assert flat.tolist() == expect
    img = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    for hw in [(24, 32), (30, 41), (96, 128)]:
        got = resize_nearest(torch.from_numpy(img), hw).numpy()
        loop = [
            [img[int((r + 0.5) * 48 / hw[0]), int((c + 0.5) * 64 / hw[1])] for c in range(hw[1])] for r in range(hw[0])
        ]
        assert np.array_equal(got, np.array(loop))
        if 48 % hw[0] == 0 or hw[0] % 48 == 0:  # integer ratios: PIL's nearest agrees
            ref = np.asarray(Image.fromarray(img, mode="F").resize((hw[1], hw[0]), Image.NEAREST))
            assert np.array_equal(got, ref)


@pytest.mark.parametrize("with_depth", [False, True])
def test_lift_scene_fuses_exactly_the_visible_samples(with_depth):
    hw = (48, 64)
    scene = small_scene(hw=hw, with_depth=with_depth)
    vlm = RandomMapVLM()
    cfg = cfg_for(hw, zbuffer_splat=1, chunk_points=150, group_mb=0 if with_depth else 256)
    views = []
    for i, fr in enumerate(scene.frames):
        idx, pix = visible(
            torch.from_numpy(scene.xyz),
            fr.pose,
            fr.intrinsic,
            hw,
            border=2,
            thr=0.05,
            depth=None if fr.depth() is None else torch.from_numpy(fr.depth()),
            splat=1,
        )
        fmap = vlm.frame_features(scene, i, hw)
        views.append((idx, fmap.reshape(vlm.dim, -1).t()[map_index(pix, hw, tuple(fmap.shape[1:]))]))
    n, dim = scene.n_points, vlm.dim
    per_point = [[] for _ in range(n)]
    for idx, f in views:
        for j, i in enumerate(idx.tolist()):
            per_point[i].append(f[j])
    seen = torch.tensor([len(p) > 0 for p in per_point])
    assert 0.2 < seen.float().mean() < 1.0
    res = lift_scene(scene, vlm, cfg)
    assert torch.equal(res.seen, seen) and res.n_views.tolist() == [len(p) for p in per_point]
    assert res.info["frames_with_depth"] == (len(scene.frames) if with_depth else 0)
    mean_ref = torch.stack([torch.stack(p).mean(0) if p else torch.zeros(dim) for p in per_point])
    torch.testing.assert_close(res.feat[seen], mean_ref[seen], atol=1e-5, rtol=1e-5)
    filled = nearest_fill(scene.xyz, mean_ref, seen)
    torch.testing.assert_close(res.feat, filled, atol=1e-5, rtol=1e-5)

    cfg_c = cfg_for(hw, zbuffer_splat=1, fusion="consensus", consensus_topk=2)
    res_c = lift_scene(scene, vlm, cfg_c, text_emb=vlm.text)
    ref_c = nearest_fill(scene.xyz, naive_consensus(views, n, dim, vlm.text, 2, 100.0), seen)
    torch.testing.assert_close(res_c.feat, ref_c, atol=1e-5, rtol=1e-4)
    assert res_c.info["fusion"] == "consensus"


def test_consensus_reuses_first_pass_views_within_the_budget():
    """Consensus fusion's second pass takes the first pass's feature maps while they fit in
    lift.reuse_mb (one VLM call per view), asks the VLM again for the others, and gives the same
    features bit for bit whatever the budget."""
    hw = (48, 64)
    scene = small_scene(hw=hw)
    n_views = len(scene.frames)
    got = {}
    for reuse_mb, calls in ((0, 2 * n_views), (1024, n_views)):
        vlm = RandomMapVLM()
        cfg = cfg_for(hw, zbuffer_splat=1, fusion="consensus", consensus_topk=2, reuse_mb=reuse_mb)
        got[reuse_mb] = lift_scene(scene, vlm, cfg, text_emb=vlm.text).feat
        assert vlm.calls == calls
    assert torch.equal(got[0], got[1024])


def test_lift_scene_hands_over_to_backends_with_per_point_features():
    scene = small_scene(n_frames=0)
    expect = LiftResult(
        torch.ones(scene.n_points, 3),
        torch.ones(scene.n_points, dtype=torch.bool),
        torch.ones(scene.n_points, dtype=torch.int64),
        {"vlm": "pre-fused"},
    )

    class PointFeatureVLM(ColorVLM):
        lifts_points = True

        def lift(self, sc):
            assert sc is scene
            return expect

    res = lift_scene(scene, PointFeatureVLM(), cfg_for((48, 64)))
    assert torch.equal(res.feat, expect.feat) and res.info == {"vlm": "pre-fused", "device": "cpu"}


def test_lift_rejects_unknown_fusion_and_bad_feature_maps():
    hw = (48, 64)
    scene = small_scene(hw=hw, n_frames=2)
    with pytest.raises(InputError, match="fusion"):
        lift_scene(scene, RandomMapVLM(), cfg_for(hw, fusion="median"))

    class BadVLM(RandomMapVLM):
        def frame_features(self, sc, i, hw):
            return torch.zeros(self.dim + 1, 4, 4)

    with pytest.raises(InputError, match="feature map of shape"):
        lift_scene(scene, BadVLM(), cfg_for(hw))


# ---------------------------------------------------------------- feature files


def make_result(n=50, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LiftResult(
        torch.randn(n, dim, generator=g),
        torch.rand(n, generator=g) > 0.3,
        torch.randint(0, 5, (n,), generator=g),
        {"vlm": "v", "simulated": True, "fusion": "mean", "scene": "s"},
    )


def test_save_load_round_trip(tmp_path):
    res = make_result()
    path = tmp_path / "a" / "s.lift.pt"
    save_lifted(path, res, {"scene": "scene0000_00"})
    raw = torch.load(path, weights_only=True)
    assert (
        raw["feat"].dtype == torch.float16 and raw["n_views"].dtype == torch.int16 and raw["seen"].dtype == torch.bool
    )
    assert sorted(raw) == sorted(["feat", "seen", "n_views", "vlm", "simulated", "fusion", "scene"])
    back = load_lifted(path, n_points=50, dim=8)
    torch.testing.assert_close(back.feat, res.feat, atol=2e-3, rtol=1e-3)
    assert torch.equal(back.seen, res.seen) and torch.equal(back.n_views, res.n_views)
    assert back.info == {"vlm": "v", "simulated": True, "fusion": "mean", "scene": "scene0000_00"}
    assert [p.name for p in path.parent.iterdir()] == ["s.lift.pt"]  # no temp file left behind


def test_load_lifted_rejects_bad_files(tmp_path):
    good = tmp_path / "good.lift.pt"
    save_lifted(good, make_result())
    with pytest.raises(InputError, match="50 points, the scene has 49"):
        load_lifted(good, n_points=49)
    with pytest.raises(InputError, match="8-d, expected 384-d"):
        load_lifted(good, dim=384)
    with pytest.raises(InputError, match="not found"):
        load_lifted(tmp_path / "missing.lift.pt")
    garbage = tmp_path / "garbage.lift.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable"):
        load_lifted(garbage)
    obj = torch.load(good, weights_only=True)
    cases = {
        "nan": {**obj, "feat": obj["feat"].clone().index_fill_(0, torch.tensor([3]), float("nan"))},
        "missing": {k: v for k, v in obj.items() if k != "seen"},
        "shape": {**obj, "seen": obj["seen"][:10]},
        "type": {**obj, "simulated": "yes"},
    }
    msgs = {"nan": "NaN", "missing": "lacks 'seen'", "shape": "'seen' must be", "type": "'simulated' must be bool"}
    for name, bad in cases.items():
        p = tmp_path / f"{name}.lift.pt"
        torch.save(bad, p)
        with pytest.raises(InputError, match=msgs[name]) as e:
            load_lifted(p)
        assert str(p) in str(e.value)


def test_lifted_files_record_their_views_and_z_buffered_count(tmp_path):
    """`frames`: the frame names lifted from, in order; `z_buffered`: how many had no depth image
    (occlusion against the points' z-buffer). Files without them (older ones) still load."""
    scene = small_scene(seed=4, n_frames=5, with_depth=True)
    for i in (1, 3):
        scene.frames[i]._depth_img = None
    res = lift_scene(scene, RandomMapVLM(), cfg_for((48, 64)))
    assert res.info["frames"] == ["0", "1", "2", "3", "4"] and res.info["z_buffered"] == 2
    assert res.info["frames_with_depth"] == 3
    path = tmp_path / "box.lift.pt"
    save_lifted(path, res)
    raw = torch.load(path, weights_only=True)
    assert raw["frames"] == ["0", "1", "2", "3", "4"] and raw["z_buffered"] == 2
    back = load_lifted(path, n_points=scene.n_points)
    assert back.info["frames"] == res.info["frames"] and back.info["z_buffered"] == 2
    old = {k: v for k, v in raw.items() if k not in ("frames", "z_buffered")}
    torch.save(old, tmp_path / "old.lift.pt")
    assert "frames" not in load_lifted(tmp_path / "old.lift.pt").info
    for bad, msg in (({"frames": "0,1"}, "list of frame names"), ({"z_buffered": 6}, r"0\.\.5")):
        torch.save({**raw, **bad}, tmp_path / "bad.lift.pt")
        with pytest.raises(InputError, match=msg):
            load_lifted(tmp_path / "bad.lift.pt")


def test_lift_cli_prints_the_views(tmp_path, capsys):
    """`geopurify lift` says which raw frames it lifted and how many used the z-buffer."""
    from geopurify.cli import main
    from geopurify.standins.rooms import make_room, write_room

    write_room(make_room(5, n_points=2000, n_frames=6, image_hw=(60, 80)), tmp_path / "room")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  frame_step: 2\nlift:\n  image_size: [80, 60]\n")
    assert (
        main(["lift", "--scene", str(tmp_path / "room"), "--out", str(tmp_path / "r.lift.pt"), "--config", str(cfg)])
        == 0
    )
    assert "3 views (frames 0, 2, 4; 0 z-buffered)" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "room" / "depth")  # colour only, as the shared ScanNet frames
    assert (
        main(["lift", "--scene", str(tmp_path / "room"), "--out", str(tmp_path / "r.lift.pt"), "--config", str(cfg)])
        == 0
    )
    assert "3 views (frames 0, 2, 4; 3 z-buffered)" in capsys.readouterr().out
    assert load_lifted(tmp_path / "r.lift.pt").info["z_buffered"] == 3

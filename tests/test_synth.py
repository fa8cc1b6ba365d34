"""Procedural rooms (the synthetic ScanNet stand-in) and virtual cameras.

Rooms here are small (few points, few frames, low resolution) to keep the file fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from geopurify.data.cameras import intrinsic_matrix, look_at, virtual_frames
from geopurify.errors import InputError
from geopurify.standins import rooms as synth
from geopurify.standins.rooms import N_SHELL, backproject, make_room, render_surfaces, synthesize

HW = (96, 128)
SCANNET = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet"


@pytest.fixture(scope="module")
def room():
    return make_room(3, n_points=20_000, n_frames=5, image_hw=HW)


def _label_agreement(room, view, pose) -> float:
    """Share of valid pixels whose label equals that of the cloud point nearest their back-projection."""
    valid = view.depth > 0
    pts = backproject(pose, room.intrinsic, view.depth.astype(np.float64))[valid]
    _, j = cKDTree(room.xyz).query(pts)
    return float((room.labels[j] == view.label[valid]).mean())


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_same_seed_same_bytes_other_seed_differs():
    a = make_room(11, n_points=3000, n_frames=2, image_hw=(48, 64))
    b = make_room(11, n_points=3000, n_frames=2, image_hw=(48, 64))
    c = make_room(12, n_points=3000, n_frames=2, image_hw=(48, 64))
    for name in ("xyz", "rgb", "labels", "instances", "poses", "intrinsic", "prim_lo", "prim_hi"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    va, vb = a.render(1), b.render(1)
    for name in ("color", "depth", "label", "instance"):
        assert getattr(va, name).tobytes() == getattr(vb, name).tobytes(), name
    assert a.xyz.shape != c.xyz.shape or not np.array_equal(a.xyz, c.xyz)
    assert not np.array_equal(a.render(1).depth, a.render(0).depth)


def test_rendered_labels_match_nearest_points_and_a_wrong_pose_fails(room):
    for i in range(room.n_frames):
        view = room.render(i)
        assert (view.depth > 0).mean() > 0.98  # a closed room: every ray returns but for sensor dropout
        good = _label_agreement(room, view, room.poses[i])
        wrong = room.poses[i].copy()
        wrong[:3, :3] = _rot_z(8.0) @ wrong[:3, :3]
        wrong[:3, 3] += [0.15, -0.1, 0.0]
        bad = _label_agreement(room, view, wrong)
        assert good > 0.95, (i, good)
        assert bad < good - 0.05, (i, good, bad)


def test_culled_render_equals_brute_force_and_hits_lie_on_surfaces(room):
    pose = room.poses[2]
    t, sid, n = render_surfaces(room, pose, room.intrinsic, HW)
    t0, sid0, n0 = render_surfaces(room, pose, room.intrinsic, HW, cull=False)
    np.testing.assert_array_equal(sid, sid0)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(n, n0)
    p = backproject(pose, room.intrinsic, t)
    # shell hits lie on their face plane
    for face, (axis, value) in enumerate(
        [(0, 0), (0, room.size[0]), (1, 0), (1, room.size[1]), (2, 0), (2, room.size[2])]
    ):
        m = sid == face
        if m.any():
            assert np.abs(p[m][:, axis] - value).max() < 1e-4
    # primitive hits lie on the primitive's boundary, with a unit normal facing the camera
    m = sid >= N_SHELL
    assert m.sum() > 100
    i = sid[m] - N_SHELL
    lo, hi, q = room.prim_lo[i], room.prim_hi[i], p[m]
    box = room.prim_kind[i] == synth.BOX
    dist_box = np.minimum(np.abs(q - lo), np.abs(q - hi)).min(1)
    inside = ((q > lo - 1e-4) & (q < hi + 1e-4)).all(1)
    assert inside.all() and dist_box[box].max() < 1e-4
    ctr, r = (lo[:, :2] + hi[:, :2]) / 2, (hi[:, 0] - lo[:, 0]) / 2
    radial = np.abs(np.linalg.norm(q[:, :2] - ctr, axis=1) - r)
    cap = np.minimum(np.abs(q[:, 2] - lo[:, 2]), np.abs(q[:, 2] - hi[:, 2]))
    assert np.minimum(radial, cap)[~box].max(initial=0) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(n[sid >= 0], axis=1), 1.0, atol=1e-6)
    view_dir = p - pose[:3, 3]
    assert ((n * view_dir).sum(-1)[sid >= 0] <= 1e-9).all()


def test_primitives_do_not_intersect_and_stay_in_the_room():
    for seed in range(12):
        r = make_room(seed, n_points=500, n_frames=3, image_hw=(24, 32))
        lo, hi = r.prim_lo, r.prim_hi
        inst = r.surf_instance[N_SHELL:]
        overlap = np.prod(np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None), -1)
        other = inst[:, None] != inst[None]
        assert overlap[other].max(initial=0) < 1e-9, seed
        assert (lo >= -1e-9).all() and (hi <= r.size + 1e-9).all(), seed
        assert (hi - lo > 0).all(), seed
        for pose in r.poses:  # cameras stand in free space, inside the room
            assert synth.camera_free(r, pose[:3, 3])


def test_point_labels_cover_several_classes_and_instances_have_one_label():
    scannet20 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39}
    seen_types, seen_classes = set(), set()
    for seed in range(6):
        r = make_room(seed, n_points=8000, n_frames=1, image_hw=(24, 32))
        present = set(np.unique(r.labels).tolist())
        assert {1, 2, 22, 8} <= present, (seed, present)  # wall, floor, ceiling, door
        assert len(present & scannet20 - {1, 2}) >= 3, (seed, present)
        for inst in np.unique(r.instances):
            assert len(np.unique(r.labels[r.instances == inst])) == 1
        listed = {o["instance"]: o["label"] for o in r.objects}
        assert all(listed[int(k)] == int(v) for k, v in zip(r.instances[:50], r.labels[:50]))
        seen_types.add(r.room_type)
        seen_classes |= present
    assert len(seen_types) >= 3 and len(seen_classes & scannet20) >= 12


def test_points_are_area_uniform_on_visible_surfaces():
    """The ceiling has nothing attached: its point density must equal that of the free top band of the walls."""
    r = make_room(5, n_points=60_000, n_frames=0)
    Lx, Ly, H = r.size
    on_ceiling = (r.labels == 22).sum() / (Lx * Ly)
    band = 0.08
    near_wall = np.minimum.reduce([r.xyz[:, 0], Lx - r.xyz[:, 0], r.xyz[:, 1], Ly - r.xyz[:, 1]]) < 1e-4
    top_band = (r.labels == 1) & near_wall & (r.xyz[:, 2] > H - band)
    on_band = top_band.sum() / (2 * (Lx + Ly) * band)
    assert abs(on_ceiling / on_band - 1) < 0.12
    # nothing sampled inside a solid or outside the room
    assert synth.visible_mask(r, r.xyz.astype(np.float64), _surface_ids(r)).all()
    assert ((r.xyz >= -1e-5) & (r.xyz <= r.size + 1e-5)).all()


def _surface_ids(r) -> np.ndarray:
    """Recover each point's surface id from its instance and position (the primitive that holds it)."""
    sid = np.full(len(r.xyz), -1)
    shell = np.nonzero(r.instances <= 6)[0]
    x = r.xyz[shell].astype(np.float64)
    gaps = np.stack([x[:, 0], r.size[0] - x[:, 0], x[:, 1], r.size[1] - x[:, 1], x[:, 2], r.size[2] - x[:, 2]], 1)
    sid[shell] = np.argmin(gaps, 1)
    rest = np.nonzero(r.instances > 6)[0]
    for j in range(len(r.prim_kind)):
        cand = rest[r.surf_instance[N_SHELL + j] == r.instances[rest]]
        q = r.xyz[cand].astype(np.float64)
        on = ((q > r.prim_lo[j] - 1e-5) & (q < r.prim_hi[j] + 1e-5)).all(1)
        sid[cand[on & (sid[cand] < 0)]] = N_SHELL + j
    assert (sid >= 0).all()
    return sid


def test_point_colours_match_the_pixels_they_project_to(room):
    view = room.render(0, noise=False)
    pose, K = room.poses[0], room.intrinsic
    cam = (room.xyz.astype(np.float64) - pose[:3, 3]) @ pose[:3, :3]
    z = cam[:, 2]
    front = z > 0.1
    u = np.rint(K[0, 0] * cam[front, 0] / z[front] + K[0, 2]).astype(int)
    v = np.rint(K[1, 1] * cam[front, 1] / z[front] + K[1, 2]).astype(int)
    ok = (u >= 0) & (u < HW[1]) & (v >= 0) & (v < HW[0])
    idx = np.nonzero(front)[0][ok]
    u, v = u[ok], v[ok]
    visible = np.abs(view.depth[v, u] - z[idx]) < 0.01 * z[idx]
    diff = np.abs(room.rgb[idx[visible]].astype(int) - view.color[v[visible], u[visible]].astype(int)).mean()
    shuffled = np.abs(room.rgb[idx[visible]][::-1].astype(int) - view.color[v[visible], u[visible]].astype(int)).mean()
    assert visible.sum() > 500
    assert diff < 12 and shuffled > 2 * diff
    assert (room.labels[idx[visible]] == view.label[v[visible], u[visible]]).mean() > 0.95


def test_depth_noise_is_small_and_grows_with_depth(room):
    exact = room.render(1, noise=False).depth
    noisy = room.render(1).depth
    dropped = noisy == 0
    assert 0.002 < dropped.mean() < 0.01  # a few holes, as in real depth
    exact, noisy = exact[~dropped], noisy[~dropped]
    rel = (noisy - exact) / exact
    assert 0.002 < rel.std() < 0.004 and abs(rel.mean()) < 5e-4
    near, far = exact < np.median(exact), exact >= np.median(exact)
    assert np.abs(noisy - exact)[far].mean() > np.abs(noisy - exact)[near].mean()


def test_intrinsics_are_scannet_like_and_trajectory_looks_into_the_room(room):
    K = make_room(0, n_points=100, n_frames=1).intrinsic
    assert K[0, 0] == pytest.approx(577.87) and (K[0, 2], K[1, 2]) == (319.5, 239.5)
    centre = np.array([*room.size[:2] / 2, 1.0])
    for pose in room.poses:
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
        fwd = pose[:3, 2]
        assert fwd[2] < 0  # looking slightly down
        assert fwd @ (centre - pose[:3, 3]) > 0  # towards the room, not into the nearest wall
        assert 1.2 < pose[2, 3] < 1.7


def test_look_at_projects_target_to_principal_point():
    K = intrinsic_matrix((60, 80))
    eye, target = np.array([1.0, 2.0, 1.5]), np.array([3.0, -1.0, 0.5])
    pose = look_at(eye, target, roll=0.05)
    cam = np.linalg.inv(pose) @ np.array([*target, 1.0])
    uv = K @ cam[:3] / cam[2]
    np.testing.assert_allclose(uv[:2], [K[0, 2], K[1, 2]], atol=1e-9)
    assert cam[2] > 0
    up_in_cam = pose[:3, :3].T @ np.array([0, 0, 1.0])
    assert up_in_cam[1] < 0  # world up is image up (OpenCV y points down)


def test_write_load_roundtrip_and_skip(tmp_path):
    from geopurify.data.readers import load_scene

    paths = synthesize(tmp_path, 2, seed=4, n_points=2000, n_frames=3, image_hw=(48, 64), progress=False)
    assert [p.name for p in paths] == ["synth_0000", "synth_0001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    room = make_room(synth.scene_seed(4, 1), n_points=2000, n_frames=3, image_hw=(48, 64))
    scene = load_scene(paths[1])
    assert scene.source == synth.SOURCE and json.loads((paths[1] / "meta.json").read_text())["source"] == synth.SOURCE
    np.testing.assert_array_equal(scene.xyz, room.xyz)
    np.testing.assert_array_equal(scene.rgb, room.rgb)
    np.testing.assert_array_equal(scene.labels, room.labels)
    np.testing.assert_array_equal(scene.instances, room.instances)
    assert len(scene.frames) == 3
    for i, fr in enumerate(scene.frames):
        v = room.render(i)
        np.testing.assert_allclose(fr.pose, room.poses[i], atol=1e-9)
        np.testing.assert_allclose(fr.intrinsic, room.intrinsic, atol=1e-9)
        np.testing.assert_array_equal(fr.label_image(), v.label)
        assert np.abs(fr.depth() - v.depth).max() <= 0.0005 + 1e-6
        assert np.abs(fr.color().astype(int) - v.color).mean() < 4  # JPEG
    # a second call skips complete scenes; other parameters are refused
    mtime = (paths[0] / "points_xyzrgb.npy").stat().st_mtime_ns
    stale = tmp_path / ".synth_0002.partial-999999999"  # left by a killed run (no such process)
    (stale / "pose").mkdir(parents=True)
    again = synthesize(tmp_path, 3, seed=4, n_points=2000, n_frames=3, image_hw=(48, 64), progress=False)
    assert again[:2] == paths and (paths[0] / "points_xyzrgb.npy").stat().st_mtime_ns == mtime
    assert load_scene(again[2]).n_points == 2000 and not stale.exists()
    with pytest.raises(InputError, match="other generator parameters"):
        synthesize(tmp_path, 1, seed=4, n_points=1000, n_frames=3, image_hw=(48, 64), progress=False)


def test_cli_synth(tmp_path, capsys):
    from geopurify.cli import main

    rc = main(
        [
            "synth",
            "--out",
            str(tmp_path / "d"),
            "--scenes",
            "1",
            "--seed",
            "2",
            "--points",
            "1500",
            "--frames",
            "1",
            "--height",
            "24",
            "--width",
            "32",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "STAND-IN" in out and (tmp_path / "d" / "synth_0000" / "depth" / "0.png").is_file()
    assert main(["synth", "--out", str(tmp_path / "e"), "--scenes", "0"]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err


@pytest.mark.skipif(not (SCANNET / "scene0000_01").is_dir(), reason="shared ScanNet test data not present")
def test_virtual_frames_look_at_a_real_scan():
    xyz = np.load(SCANNET / "scene0000_01" / "points_xyzrgb.npy")[:, :3].astype(np.float64)
    hw = (240, 320)
    frames = virtual_frames(xyz, 16, image_hw=hw, seed=0)
    again = virtual_frames(xyz, 16, image_hw=hw, seed=0)
    assert all(np.array_equal(a.pose, b.pose) for a, b in zip(frames, again))
    assert len(frames) == 16 and all(f.color_path is None and f.depth_path is None for f in frames)

    def coverage(poses) -> float:
        seen = np.zeros(len(xyz), bool)
        for pose in poses:
            cam = (xyz - pose[:3, 3]) @ pose[:3, :3]
            z = cam[:, 2]
            u = frames[0].intrinsic[0, 0] * cam[:, 0] / z + frames[0].intrinsic[0, 2]
            v = frames[0].intrinsic[1, 1] * cam[:, 1] / z + frames[0].intrinsic[1, 2]
            seen |= (z > 0.1) & (u >= 0) & (u <= hw[1] - 1) & (v >= 0) & (v <= hw[0] - 1)
        return float(seen.mean())

    assert coverage([f.pose for f in frames]) > 0.9
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)
    tree = cKDTree(xyz)
    for f in frames:
        eye = f.pose[:3, 3]
        assert (eye[:2] > lo[:2]).all() and (eye[:2] < hi[:2]).all()
        assert 1.2 < eye[2] - np.percentile(xyz[:, 2], 1) < 1.7
        assert tree.query(eye)[0] > 0.1
    # the same cameras lifted 10 m see (almost) nothing: coverage measures where they look
    moved = [f.pose.copy() for f in frames]
    for p in moved:
        p[:3, 3] += [0.0, 0.0, 10.0]
    assert coverage(moved) < 0.1


def test_virtual_frames_reject_bad_points():
    with pytest.raises(InputError):
        virtual_frames(np.zeros((5, 2)), 3)
    with pytest.raises(InputError):
        virtual_frames(np.array([[0.0, np.nan, 1.0]]), 3)

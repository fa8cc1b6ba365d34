"""Teachers: the interface, build_teacher, and the geometric stand-in (its pieces against plain
loops, its affinities on a procedural wall / floor / chair leg and on a real ScanNet scan)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from geopurify.config import defaults
from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.standins import geometric_teacher as geo
from geopurify.standins.geometric_teacher import GeometricTeacher
from geopurify.teacher import Teacher, build_teacher

S00 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet" / "scene0000_00"
needs_scannet = pytest.mark.skipif(not S00.is_dir(), reason="../shared/data/scannet not present")

FLOOR, WALL, LEG = 0, 1, 2


def toy_room(seed: int = 0):
    """A 2 m floor (z = 0), a 2 m wall (x = 0) and a chair leg (2 cm radius cylinder, 45 cm
    tall) at 2 mm jitter, coloured per part; returns (Scene, part id per point)."""
    rng = np.random.default_rng(seed)
    s = np.arange(0, 2, 0.02)
    a, b = (m.ravel() for m in np.meshgrid(s, s, indexing="ij"))
    floor = np.stack([a, b, np.zeros_like(a)], 1)
    wall = np.stack([np.zeros_like(a), a, b + 0.02], 1)
    th, z = (
        m.ravel()
        for m in np.meshgrid(np.linspace(0, 2 * np.pi, 16, endpoint=False), np.arange(0.02, 0.46, 0.01), indexing="ij")
    )
    leg = np.stack([1.2 + 0.02 * np.cos(th), 1.0 + 0.02 * np.sin(th), z], 1)
    part = np.repeat([FLOOR, WALL, LEG], [len(floor), len(wall), len(leg)])
    xyz = np.concatenate([floor, wall, leg]) + rng.normal(0, 0.002, (len(part), 3))
    base = np.array([[150, 110, 70], [205, 200, 190], [60, 40, 30]])
    rgb = np.clip(base[part] + rng.normal(0, 6, (len(part), 3)), 0, 255).astype(np.uint8)
    return Scene("toy_room", xyz.astype(np.float32), rgb), part


@pytest.fixture(scope="module")
def toy():
    scene, part = toy_room()
    return scene, part, GeometricTeacher().embed(scene)


def test_embed_contract(toy):
    scene, _, emb = toy
    t = GeometricTeacher()
    assert isinstance(t, Teacher) and t.stand_in and "stand-in" in t.describe()
    assert emb.shape == (scene.n_points, t.dim) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not emb.requires_grad and emb.is_contiguous()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(scene.n_points), rtol=0, atol=1e-5)
    assert torch.equal(GeometricTeacher().embed(scene), emb)  # deterministic


def test_chunking_does_not_change_the_embedding(toy):
    scene, _, emb = toy
    assert torch.equal(GeometricTeacher(chunk=997).embed(scene), emb)


def test_geometric_affinities_separate_wall_floor_and_chair_leg(toy):
    scene, part, emb = toy
    e, xyz = emb.numpy(), scene.xyz
    rng = np.random.default_rng(1)
    inner = (xyz[:, 1] > 0.2) & (xyz[:, 1] < 1.8)  # away from the room's open edges
    wall = rng.choice(np.flatnonzero((part == WALL) & inner & (xyz[:, 2] > 0.3) & (xyz[:, 2] < 1.8)), 300)
    floor = rng.choice(
        np.flatnonzero(
            (part == FLOOR)
            & inner
            & (xyz[:, 0] > 0.3)
            & (xyz[:, 0] < 1.8)
            & (np.hypot(xyz[:, 0] - 1.2, xyz[:, 1] - 1.0) > 0.3)
        ),
        300,
    )
    leg = np.flatnonzero((part == LEG) & (xyz[:, 2] > 0.08) & (xyz[:, 2] < 0.4))  # off the floor
    ww, ll, wl, wf = e[wall] @ e[wall].T, e[leg] @ e[leg].T, e[wall] @ e[leg].T, e[wall] @ e[floor].T
    assert ww.mean() > 0.6 and np.percentile(ww, 5) > 0.3  # one planar surface: high
    assert ll.mean() > 0.5
    assert wl.mean() < 0.05 and np.percentile(wl, 95) < 0.25  # wall vs leg: low
    assert wf.mean() < -0.2  # perpendicular planes, different colour
    assert (e[floor] @ e[floor].T).mean() > 0.6


@pytest.fixture(scope="module")
def scannet():
    d = np.load(S00 / "points_xyzrgb.npy")
    scene = Scene("scene0000_00", d[:, :3].astype(np.float32), d[:, 3:].astype(np.uint8))
    return (
        scene,
        np.load(S00 / "labels_nyu40.npy"),
        np.load(S00 / "instances.npy"),
        GeometricTeacher().embed(scene).numpy(),
    )


@needs_scannet
def test_real_scan_same_surface_high_different_objects_low(scannet):
    """scene0000_00: nearby points on one wall (instances 20, 22) or on the floor (NYU40 2) are
    similar; a wall against the table (instance 3) or against the floor is not."""
    scene, lab, ins, e = scannet
    xyz = scene.xyz
    rng = np.random.default_rng(0)

    def local(mask, radius=0.3, n=200):
        idx = np.flatnonzero(mask)
        anchors = rng.choice(idx, n, replace=False)
        nbrs = cKDTree(xyz[idx]).query_ball_point(xyz[anchors], radius)
        return np.mean([(e[a] * e[idx[np.array(b)]]).sum(1).mean() for a, b in zip(anchors, nbrs)])

    def cross(m1, m2, n=400):
        return (e[rng.choice(np.flatnonzero(m1), n)] @ e[rng.choice(np.flatnonzero(m2), n)].T).mean()

    same = [local(ins == 20), local(ins == 22), local(lab == 2)]
    assert min(same) > 0.5, same
    assert cross(ins == 20, ins == 3) < 0.0 and cross(lab == 1, lab == 2) < 0.0
    assert local(ins == 20) - cross(ins == 20, ins == 3) > 0.5


def test_eigen_features_equal_loop():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(300, 3)) * [1.0, 0.5, 0.1]
    _, idx = geo.knn(xyz, 20)
    got = geo.eigen_features(xyz, idx[:12], scales=(5, 9, 20))
    for i in range(12):
        row = []
        for k in (5, 9, 20):
            lam, vec = np.linalg.eigh(np.cov(xyz[idx[i, :k]].T, bias=True))
            l3, l2, l1 = np.clip(lam, 0, None)
            row += [(l1 - l2) / l1, (l2 - l3) / l1, l3 / l1, l3 / (l1 + l2 + l3), abs(vec[2, 0]), abs(vec[2, 2])]
        np.testing.assert_allclose(got[i], row, rtol=1e-4, atol=1e-5)


def test_eigen_features_of_a_line_and_a_plane():
    t = np.linspace(0, 1, 40)
    line = np.stack([np.zeros_like(t), np.zeros_like(t), t], 1)  # vertical line: linear, principal axis z
    u, v = (m.ravel() for m in np.meshgrid(t[:8], t[:8]))
    plane = np.stack([u, v, np.zeros_like(u)], 1)  # horizontal plane: planar, normal z
    f_line = geo.eigen_features(line, np.arange(40)[None], scales=(40,))[0]
    f_plane = geo.eigen_features(plane, np.arange(64)[None], scales=(64,))[0]
    np.testing.assert_allclose(f_line[[0, 5]], [1, 1], atol=1e-6)
    np.testing.assert_allclose(f_plane[[1, 2, 4]], [1, 0, 1], atol=1e-6)


def test_spfh_equals_loop():
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(200, 3))
    nrm = rng.normal(size=(200, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    _, idx = geo.knn(xyz, 9)
    centre, nb = np.arange(10), idx[:10, 1:]
    nb[0, 3] = 0  # the point itself: skipped
    bins = 4
    got = geo.spfh(xyz, nrm, centre, nb, bins)
    for i in centre:
        hist = np.zeros((3, bins))
        count = 0
        for j in nb[i]:
            d = xyz[j] - xyz[i]
            if np.linalg.norm(d) < 1e-9:
                continue
            count += 1
            d /= np.linalg.norm(d)
            vals = [
                np.arccos(min(abs(nrm[i] @ nrm[j]), 1)),
                np.arcsin(min(abs(nrm[i] @ d), 1)),
                np.arcsin(min(abs(nrm[j] @ d), 1)),
            ]
            for a, val in enumerate(vals):
                pos = val / (np.pi / 2) * (bins - 1)
                lo = min(int(np.floor(pos)), bins - 2)
                hist[a, lo] += 1 - (pos - lo)
                hist[a, lo + 1] += pos - lo
        np.testing.assert_allclose(got[i], hist.ravel() / count, atol=1e-9)
        np.testing.assert_allclose(got[i].reshape(3, bins).sum(1), 1.0)


def test_srgb_to_lab_known_values():
    lab = geo.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8))
    np.testing.assert_allclose(lab, [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]], atol=0.02)


def test_standardise_gives_each_block_its_weight():
    rng = np.random.default_rng(4)
    block = rng.normal(size=(5000, 7)) * [1, 2, 3, 4, 5, 6, 7] + 10
    block[:, 3] = 2.0  # constant column -> 0
    z = geo.standardise(block, 0.7)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    assert np.all(z[:, 3] == 0)
    np.testing.assert_allclose((z**2).sum(1).mean(), 0.49 * 6 / 7, rtol=1e-4)


def test_build_teacher():
    cfg = defaults()
    assert cfg["teacher"]["name"] == "geometric"
    assert isinstance(build_teacher(cfg), GeometricTeacher)
    cfg["teacher"]["name"] = "pointnet"
    with pytest.raises(InputError, match="teacher.name"):
        build_teacher(cfg)


def test_build_teacher_loads_sonata_lazily(monkeypatch):
    """ "sonata" imports geopurify.teacher.sonata only when asked, passing the checkpoint path
    (a tiny module stands in for it here)."""
    fake = types.ModuleType("geopurify.teacher.sonata")

    class SonataTeacher(Teacher):
        name, stand_in, dim = "sonata", False, 4

        def __init__(self, ckpt, device="cpu", **settings):
            self.ckpt, self.device, self.settings = ckpt, device, settings

        def embed(self, scene):
            raise NotImplementedError

    fake.SonataTeacher = SonataTeacher
    monkeypatch.setitem(sys.modules, "geopurify.teacher.sonata", fake)
    cfg = defaults()
    cfg["teacher"].update(name="sonata", ckpt="/models/sonata.pth")
    t = build_teacher(cfg)
    assert isinstance(t, SonataTeacher) and t.ckpt == "/models/sonata.pth" and t.describe() == "sonata"
    assert t.device == "cpu" and build_teacher(cfg, device="cuda:2").device == "cuda:2"
    assert t.settings == {"color_scale": "sonata", "missing_normals": "zero"}  # the config's input switches
    cfg["teacher"].update(color_scale="reference", missing_normals="pca")
    assert build_teacher(cfg).settings == {"color_scale": "reference", "missing_normals": "pca"}

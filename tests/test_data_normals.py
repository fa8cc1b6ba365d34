"""geopurify.data.normals: PCA normals against known surfaces and a plain-loop definition."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geopurify.data.normals import default_viewpoint, estimate_normals

S00 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet" / "scene0000_00"


def test_plane_normals():
    rng = np.random.default_rng(0)
    uv = rng.uniform(-1, 1, (3000, 2))
    n_true = np.array([0.2, -0.3, 1.0])
    n_true /= np.linalg.norm(n_true)
    a = np.cross(n_true, [1.0, 0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(n_true, a)
    xyz = uv[:, :1] * a + uv[:, 1:] * b + [0.5, 0.1, 0.8]
    n = estimate_normals(xyz, k=16)
    assert n.dtype == np.float32 and n.shape == (3000, 3)
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert (n @ n_true > 0.9999).all()  # exact direction, oriented up toward the viewpoint above


def test_sphere_normals_radial_and_facing_viewpoint():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(4000, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    xyz = 2.0 * p + [1.0, -1.0, 0.5]
    n = estimate_normals(xyz, k=16)
    assert np.abs(np.einsum("ij,ij->i", n, p)).min() > 0.98  # radial up to sign
    vp = default_viewpoint(xyz)
    assert np.allclose(vp, [1.0, -1.0, 0.5 + 2.0 + 4.0], atol=0.05)  # above the centre by the xy extent
    assert (np.einsum("ij,ij->i", n, vp - xyz) >= 0).all()
    # explicit viewpoint at the centre: every normal points inward
    n_in = estimate_normals(xyz, k=16, viewpoint=[1.0, -1.0, 0.5])
    assert (np.einsum("ij,ij->i", n_in, p) < -0.98).all()


def test_matches_plain_loop_and_chunking():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(300, 3)) * [1.0, 1.0, 0.2]
    vp = np.array([0.0, 0.0, 5.0])
    ref = np.empty((300, 3))
    for i in range(300):  # the definition, one point at a time with brute-force neighbours
        nb = xyz[np.argsort(np.linalg.norm(xyz - xyz[i], axis=1))[:10]]
        c = np.cov(nb.T, bias=True)
        w, v = np.linalg.eigh(c)
        ni = v[:, 0]
        ref[i] = ni if ni @ (vp - xyz[i]) >= 0 else -ni
    got = estimate_normals(xyz, k=10, viewpoint=vp)
    assert np.allclose(got, ref, atol=1e-5)
    assert np.array_equal(estimate_normals(xyz, k=10, viewpoint=vp, chunk=7), got)


def test_small_and_bad_inputs():
    assert estimate_normals(np.zeros((0, 3))).shape == (0, 3)
    n = estimate_normals(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), k=16)  # k clipped to N
    assert np.allclose(np.abs(n[:, 2]), 1)
    with pytest.raises(ValueError):
        estimate_normals(np.array([[0.0, np.nan, 0]] * 5))
    with pytest.raises(ValueError):
        estimate_normals(np.zeros((5, 2)))


@pytest.mark.skipif(not S00.is_dir(), reason="../shared/data not present")
def test_real_room_orientation():
    """On the real scan: floors point up, walls are vertical and point into the room."""
    pts = np.load(S00 / "points_xyzrgb.npy")
    lab = np.load(S00 / "labels_nyu40.npy")
    xyz = pts[:, :3]
    n = estimate_normals(xyz)
    floor, wall = lab == 2, lab == 1
    assert np.median(n[floor, 2]) > 0.98
    assert np.median(np.abs(n[wall, 2])) < 0.1
    centre = (xyz.min(0) + xyz.max(0)) / 2
    inward = np.einsum("ij,ij->i", n[wall, :2], centre[:2] - xyz[wall, :2])
    assert (inward > 0).mean() > 0.9  # 94% on scene0000_00

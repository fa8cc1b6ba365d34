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


# ---------------------------------------------------------------- mesh normals
def test_mesh_normals_match_the_definition():
    """Area-weighted face normals summed at the vertices, normalised (a plain loop over faces)."""
    from geopurify.data.normals import mesh_normals

    rng = np.random.default_rng(3)
    v = rng.normal(size=(40, 3))
    f = np.array([rng.choice(39, 3, replace=False) for _ in range(60)])  # vertex 39 is on no face
    f = np.vstack([f, [[0, 1, 1], [2, 2, 2]]])  # degenerate (zero-area) faces add nothing
    acc = np.zeros((40, 3))
    for a, b, c in f:
        cross = np.cross(v[b] - v[a], v[c] - v[a])  # = unit normal x 2 x area
        for i in (a, b, c):
            acc[i] += cross
    ref = acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-300)
    got = mesh_normals(v, f)
    assert got.dtype == np.float32 and got.shape == (40, 3)
    np.testing.assert_allclose(got[:39], ref[:39], atol=1e-6)
    assert np.array_equal(got[39], np.zeros(3))  # no face: no direction
    # area weighting: a vertex shared by a large +z face and a small +x face leans to +z
    v2 = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.1, 0], [0, 0, 0.1]], float)
    n = mesh_normals(v2, np.array([[0, 1, 2], [0, 3, 4]]))
    np.testing.assert_allclose(n[0], np.array([0.01, 0, 1]) / np.linalg.norm([0.01, 0, 1]), atol=1e-6)
    assert mesh_normals(v2, np.zeros((0, 3), int)).tolist() == np.zeros((5, 3)).tolist()
    with pytest.raises(ValueError):
        mesh_normals(v2, np.array([[0, 1, 7]]))


def rect(o, e1, e2, n=12):
    """A grid-triangulated rectangle o + s e1 + t e2; faces wound so their normal is e1 x e2."""
    s, t = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1), indexing="ij")
    v = np.asarray(o, float) + s.reshape(-1, 1) * np.asarray(e1, float) + t.reshape(-1, 1) * np.asarray(e2, float)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


# a 4 x 3 x 2.5 m room: floor, ceiling, four walls and a table (3 cm top) as a scan mesh, faces
# wound to face the side the scanner saw; part -> (origin, e1, e2, true normal)
ROOM = {
    "floor": ((0, 0, 0), (4, 0, 0), (0, 3, 0), (0, 0, 1)),
    "ceiling": ((0, 0, 2.5), (0, 3, 0), (4, 0, 0), (0, 0, -1)),
    "wall_x0": ((0, 0, 0), (0, 3, 0), (0, 0, 2.5), (1, 0, 0)),
    "wall_x4": ((4, 0, 0), (0, 0, 2.5), (0, 3, 0), (-1, 0, 0)),
    "wall_y0": ((0, 0, 0), (0, 0, 2.5), (4, 0, 0), (0, 1, 0)),
    "wall_y3": ((0, 3, 0), (4, 0, 0), (0, 0, 2.5), (0, -1, 0)),
    "table_top": ((1.5, 1, 0.75), (1, 0, 0), (0, 0.8, 0), (0, 0, 1)),
    "table_underside": ((1.5, 1, 0.72), (0, 0.8, 0), (1, 0, 0), (0, 0, -1)),
}


def room_mesh():
    """(vertices, faces, part of each vertex, true normal of each vertex) of ROOM."""
    vs, fs, part, true, off = [], [], [], [], 0
    for name, (o, e1, e2, nrm) in ROOM.items():
        v, f = rect(o, e1, e2)
        vs.append(v)
        fs.append(f + off)
        part += [name] * len(v)
        true.append(np.tile(nrm, (len(v), 1)))
        off += len(v)
    return np.concatenate(vs), np.concatenate(fs), np.array(part), np.concatenate(true).astype(float)


def write_scan(scan: Path, A: np.ndarray):
    """The room as a raw ScanNet scan: <scene>_vh_clean_2.ply (original frame, faces) + axisAlignment."""
    from plyfile import PlyData, PlyElement

    v, f, _, _ = room_mesh()
    orig = (np.linalg.inv(A) @ np.c_[v, np.ones(len(v))].T).T[:, :3]
    scan.mkdir(parents=True)
    vert = np.empty(
        len(v),
        dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")],
    )
    vert["x"], vert["y"], vert["z"] = orig.T
    vert["red"], vert["green"], vert["blue"], vert["alpha"] = 120, 130, 140, 255
    face = np.empty(len(f), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = f
    PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")]).write(
        str(scan / f"{scan.name}_vh_clean_2.ply")
    )
    (scan / f"{scan.name}.txt").write_text("axisAlignment = " + " ".join(f"{x:.9g}" for x in A.ravel()) + "\n")


def _align():
    a = np.deg2rad(30.0)
    A = np.eye(4)
    A[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    A[:3, 3] = (1.5, -2.0, 0.1)
    return A


def test_mesh_normals_face_the_room_where_pca_flips_them(tmp_path):
    """Mesh scene -> the mesh's normals (rotated by the axis alignment): ceilings and table
    undersides point down, floors up, walls into the room. PCA normals, oriented towards a point
    above the room (what every scene got before), point the ceiling and the underside up."""
    from geopurify.data.readers import load_scene
    from geopurify.data.scene import Scene

    _, _, part, true = room_mesh()
    write_scan(tmp_path / "scene0042_00", _align())
    scene = load_scene(tmp_path / "scene0042_00")
    n = scene.normals
    assert n.dtype == np.float32 and n.shape == (len(part), 3)
    for name in ROOM:
        cos = np.einsum("ij,ij->i", n[part == name], true[part == name])
        assert cos.min() > 0.9999, name  # every vertex, walls included (the rotation applies to normals too)
    assert scene.normals_source == "mesh" and scene.meta["normals"] == "mesh"
    pca = Scene("bare", scene.xyz, scene.rgb)
    assert pca.normals_source == "pca"
    for name in ("ceiling", "table_underside"):
        assert np.median(pca.normals[part == name, 2]) > 0.99, name  # flipped: facing up


def test_prepared_scans_store_mesh_normals_and_say_so(tmp_path):
    import json

    from geopurify.data.prepare import prepare_scannet_scan
    from geopurify.data.readers import load_scene

    write_scan(tmp_path / "raw" / "scene0042_00", _align())
    mesh_scene = load_scene(tmp_path / "raw" / "scene0042_00")
    out = prepare_scannet_scan(tmp_path / "raw" / "scene0042_00", tmp_path / "out" / "scene0042_00", progress=False)
    assert json.loads((out / "meta.json").read_text())["normals"] == "mesh"
    stored = np.load(out / "normals.npy")
    assert stored.dtype == np.float32 and stored.shape == (mesh_scene.n_points, 3)
    scene = load_scene(out)
    assert scene.normals_source == "mesh" and scene.meta["normals"] == "mesh"
    np.testing.assert_allclose(scene.normals, mesh_scene.normals, atol=1e-6)
    _, _, part, _ = room_mesh()
    assert (scene.normals[part == "ceiling", 2] < -0.9999).all()


@pytest.mark.skipif(not S00.is_dir(), reason="../shared/data not present")
def test_bare_point_clouds_get_pca_normals():
    from geopurify.data.readers import load_scene

    scene = load_scene(S00)
    assert scene.normals_source == "pca" and scene.meta["normals"] == "pca"
    np.testing.assert_allclose(scene.normals, estimate_normals(scene.xyz), atol=0)
    assert scene.normals_source == "pca"


def test_procedural_rooms_store_their_analytic_normals(tmp_path):
    from geopurify.data.readers import load_scene
    from geopurify.standins.rooms import make_room, write_room

    room = make_room(3, n_points=3000, n_frames=0)
    write_room(room, tmp_path / "room")
    scene = load_scene(tmp_path / "room")
    assert scene.normals_source == "analytic" and scene.meta["normals"] == "analytic"
    assert np.array_equal(scene.normals, room.normals)
    ceiling = room.labels == 22
    assert ceiling.any() and (scene.normals[ceiling, 2] == -1).all()


def test_normals_file_problems_name_the_file(tmp_path):
    import json

    from geopurify.data.readers import load_scene
    from geopurify.data.writers import write_scene
    from geopurify.errors import InputError

    rng = np.random.default_rng(0)
    d = tmp_path / "s"
    nrm = rng.normal(size=(30, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    write_scene(d, rng.random((30, 3)), rng.integers(0, 256, (30, 3)), normals=nrm, normals_source="mesh")
    assert load_scene(d).normals_source == "mesh"
    np.save(d / "normals.npy", (2 * nrm).astype(np.float32))
    with pytest.raises(InputError, match="neither unit length nor zero") as e:
        load_scene(d)
    assert str(d / "normals.npy") in str(e.value)
    np.save(d / "normals.npy", nrm[:20].astype(np.float32))
    with pytest.raises(InputError, match=r"\(30, 3\)"):
        load_scene(d)
    (d / "normals.npy").unlink()
    with pytest.raises(InputError, match="missing: meta.json says") as e:
        load_scene(d)
    assert str(d / "normals.npy") in str(e.value)
    write_scene(d, rng.random((30, 3)), rng.integers(0, 256, (30, 3)))  # rewritten without normals
    assert json.loads((d / "meta.json").read_text())["normals"] == "pca" and load_scene(d).normals_source == "pca"


def test_cache_keys_follow_the_normals(tmp_path):
    """Teacher features depend on the normals: other normals, another cache file."""
    from geopurify.data.normals import mesh_normals
    from geopurify.data.scene import Scene
    from geopurify.standins.geometric_teacher import GeometricTeacher
    from geopurify.teacher.cache import teacher_cache_path

    v, f, _, _ = room_mesh()

    t = GeometricTeacher()
    rgb = np.zeros((len(v), 3), np.uint8)
    pca = Scene("s", v.astype(np.float32), rgb)
    mesh = Scene("s", v.astype(np.float32), rgb)
    mesh.set_normals(mesh_normals(v, f), "mesh")
    flipped = Scene("s", v.astype(np.float32), rgb)
    flipped.set_normals(-mesh_normals(v, f), "mesh")
    paths = {teacher_cache_path(s, t, tmp_path) for s in (pca, mesh, flipped)}
    assert len(paths) == 3
    assert teacher_cache_path(pca, t, tmp_path) == teacher_cache_path(Scene("s", pca.xyz, rgb), t, tmp_path)

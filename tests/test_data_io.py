"""geopurify.data: images, PLY, scene readers and writers, on real ScanNet data and fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from geopurify.data.images import read_color, read_depth, read_label_image, write_color, write_depth, write_label_image
from geopurify.data.ply import read_ply, write_ply
from geopurify.data.readers import list_scenes, load_scene, natural_key
from geopurify.data.writers import write_axis_alignment, write_frame, write_scene
from geopurify.errors import InputError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet"
S00 = SHARED / "scene0000_00"
S01 = SHARED / "scene0000_01"
needs_data = pytest.mark.skipif(not S00.is_dir(), reason="../shared/data/scannet not present")

K = np.array([[300.0, 0, 160.0], [0, 310.0, 120.0], [0, 0, 1]])


def rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


def a_pose(i: int) -> np.ndarray:
    p = rot_z(17.0 * i)
    p[:3, 3] = [0.5 * i, -0.25, 1.5]
    return p


def raises_naming(path, match: str | None = None):
    """Context: an InputError whose path is `path` (and whose problem matches `match`)."""

    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(InputError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self.ctx.__exit__(*exc)
            assert Path(self.info.value.path) == Path(path), f"error names {self.info.value.path}, expected {path}"
            assert "\n" not in str(self.info.value)
            return ok

    return _Ctx()


# ---------------------------------------------------------------- images
def test_image_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    col = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_color(tmp_path / "c.png", col)
    assert np.array_equal(read_color(tmp_path / "c.png"), col)
    smooth = np.repeat(np.repeat(col[::8, ::8], 8, 0), 8, 1)  # blocky image: JPEG keeps it closely
    write_color(tmp_path / "c.jpg", smooth)
    back = read_color(tmp_path / "c.jpg")
    assert back.shape == smooth.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - smooth).mean() < 6

    depth_mm = rng.integers(1, 9000, (24, 32))
    depth_mm[0, :5] = 0
    depth = depth_mm / 1000.0
    write_depth(tmp_path / "d.png", depth)  # millimetres
    raw = np.asarray(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16 and np.array_equal(raw, depth_mm)  # the PNG holds mm as uint16
    got = read_depth(tmp_path / "d.png", 1000.0)
    assert got.dtype == np.float32 and np.allclose(got, depth, atol=1e-6) and (got[0, :5] == 0).all()
    write_depth(tmp_path / "d4.png", depth, scale=4000.0)  # Matterport's scale
    assert np.allclose(read_depth(tmp_path / "d4.png", 4000.0), depth, atol=1.25e-4)

    bad = np.array([[np.nan, -1.0, 70.0, 0.0004, 2.0]])  # invalid, negative, beyond uint16 mm, < 0.5 mm
    write_depth(tmp_path / "b.png", bad)
    assert np.array_equal(read_depth(tmp_path / "b.png"), np.array([[0, 0, 0, 0, 2.0]], np.float32))

    lab = rng.integers(0, 1200, (24, 32))
    write_label_image(tmp_path / "l.png", lab)
    got = read_label_image(tmp_path / "l.png")
    assert got.dtype == np.int32 and np.array_equal(got, lab)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # atomic writes leave no temp files


def test_image_errors_name_the_file(tmp_path):
    with raises_naming(tmp_path / "none.png", "not found"):
        read_color(tmp_path / "none.png")
    (tmp_path / "junk.jpg").write_bytes(b"definitely not a jpeg" * 10)
    with raises_naming(tmp_path / "junk.jpg", "not a readable image"):
        read_color(tmp_path / "junk.jpg")
    write_color(tmp_path / "c.png", np.zeros((40, 40, 3), np.uint8) + 77)
    data = (tmp_path / "c.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with raises_naming(tmp_path / "cut.png"):
        read_color(tmp_path / "cut.png")
    with raises_naming(tmp_path / "c.png", "16-bit"):  # an 8-bit RGB image is not a depth map
        read_depth(tmp_path / "c.png")


# ---------------------------------------------------------------- PLY
def test_ply_round_trip_binary(tmp_path):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(500, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    lab = rng.integers(-1, 200, 500)
    conf = rng.random(500).astype(np.float32)
    write_ply(tmp_path / "a.ply", xyz, rgb, lab, scalars={"confidence": conf})
    head = (tmp_path / "a.ply").read_bytes()[:400]
    assert b"format binary_little_endian 1.0" in head
    for line in (b"property float x", b"property uchar red", b"property int label", b"property float confidence"):
        assert line in head
    out = read_ply(tmp_path / "a.ply")
    assert np.array_equal(out["xyz"], xyz) and np.array_equal(out["rgb"], rgb)
    assert np.array_equal(out["labels"], lab) and out["labels"].dtype == np.int32
    assert np.array_equal(out["confidence"], conf)
    write_ply(tmp_path / "b.ply", xyz)  # geometry only
    assert set(read_ply(tmp_path / "b.ply")) == {"xyz"}


def test_ply_errors_name_the_file(tmp_path):
    xyz = np.random.default_rng(2).normal(size=(300, 3))
    write_ply(tmp_path / "ok.ply", xyz, np.zeros((300, 3), np.uint8))
    data = (tmp_path / "ok.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 500])
    with raises_naming(tmp_path / "cut.ply", "not a readable PLY"):
        read_ply(tmp_path / "cut.ply")
    (tmp_path / "garbled.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex ten\nend_header\n")
    with raises_naming(tmp_path / "garbled.ply", "not a readable PLY"):
        read_ply(tmp_path / "garbled.ply")
    v = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("nx", "f4")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "noz.ply"))
    with raises_naming(tmp_path / "noz.ply", "lack coordinate"):
        read_ply(tmp_path / "noz.ply")
    with raises_naming(tmp_path / "missing.ply", "not found"):
        read_ply(tmp_path / "missing.ply")


# ---------------------------------------------------------------- the real ScanNet scenes
@needs_data
def test_scene0000_00_frames_and_poses():
    s = load_scene(S00)
    pts = np.load(S00 / "points_xyzrgb.npy")
    assert s.n_points == 81369 and s.source == "scannet" and s.label_space == "nyu40"
    assert np.array_equal(s.xyz, pts[:, :3]) and np.array_equal(s.rgb, pts[:, 3:].astype(np.uint8))
    assert np.array_equal(s.labels, np.load(S00 / "labels_nyu40.npy"))
    assert np.array_equal(s.instances, np.load(S00 / "instances.npy"))
    assert [f.name for f in s.frames] == ["0", "11", "102"]  # numeric, not lexicographic, order
    axis = np.loadtxt(S00 / "axis_align_matrix.txt")
    k = np.loadtxt(S00 / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    for f in s.frames:
        assert np.array_equal(f.pose, axis @ np.loadtxt(S00 / "pose" / f"{f.name}.txt"))
        assert np.array_equal(f.intrinsic, k) and f.depth() is None and f.label_image() is None
    assert s.meta["skipped_frames"] == 0 and s.meta["depth_scale"] == 1000.0
    assert s.frames[0].color().shape == (968, 1296, 3)


def _mean_colour_error(xyz, rgb, frame, img):
    """Mean |image colour - point colour| over points projecting into the image (no occlusion)."""
    w2c = np.linalg.inv(frame.pose)
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    front = z > 0.1
    u = np.rint(pc[front, 0] * frame.intrinsic[0, 0] / z[front] + frame.intrinsic[0, 2]).astype(int)
    v = np.rint(pc[front, 1] * frame.intrinsic[1, 1] / z[front] + frame.intrinsic[1, 2]).astype(int)
    inside = (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0])
    assert inside.sum() > 1000
    return np.abs(img[v[inside], u[inside]].astype(float) - rgb[front][inside]).mean()


@needs_data
def test_scene0000_00_poses_put_points_on_their_pixels():
    """With the axis alignment folded into the poses, projected points land on pixels of their own
    colour (~34 grey levels off; shuffled colours ~71, see ../shared/data/README.md)."""
    s = load_scene(S00)
    shuffled = s.rgb[np.random.default_rng(0).permutation(s.n_points)]
    for f in s.frames:
        img = f.color()
        assert _mean_colour_error(s.xyz, s.rgb, f, img) < 45
        assert _mean_colour_error(s.xyz, shuffled, f, img) > 60


@needs_data
def test_scene0000_01_has_no_frames():
    s = load_scene(S01, frame_step=20)
    assert s.n_points == 80583 and s.frames == [] and s.labels.shape == (80583,)
    assert list_scenes(SHARED) == [S00, S01]


# ---------------------------------------------------------------- ScanNet's own formats
def _write_vh_clean_2(scene_dir: Path, xyz, rgb, labels):
    """Fixture in ScanNet's exact PLY formats: binary vertex x,y,z float + red,green,blue,alpha uchar
    with uchar-int vertex_indices faces; the .labels.ply adds a ushort `label` (NYU40)."""
    n = len(xyz)
    faces = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], 1).astype(np.int32)
    fe = np.empty(len(faces), dtype=[("vertex_indices", "O")])
    fe["vertex_indices"] = list(faces)
    name = scene_dir.name
    for suffix, with_label in (("_vh_clean_2.ply", False), ("_vh_clean_2.labels.ply", True)):
        fields = [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("alpha", "u1"),
        ] + ([("label", "<u2")] if with_label else [])
        v = np.empty(n, dtype=fields)
        v["x"], v["y"], v["z"] = xyz.T
        v["red"], v["green"], v["blue"] = rgb.T if not with_label else np.full((3, n), 9)  # labels.ply: label colours
        v["alpha"] = 255
        if with_label:
            v["label"] = labels
        PlyData(
            [
                PlyElement.describe(v, "vertex"),
                PlyElement.describe(fe, "face", val_types={"vertex_indices": "i4"}, len_types={"vertex_indices": "u1"}),
            ],
            text=False,
            byte_order="<",
        ).write(str(scene_dir / f"{name}{suffix}"))


@needs_data
def test_scannet_mesh_and_sensreader_export(tmp_path):
    """A raw ScanNet scan directory: vh_clean_2 meshes (original frame), <scene>.txt with the
    axisAlignment line, and SensReader frames. Points come out axis-aligned, equal to the npy."""
    d = tmp_path / "scene0000_00"
    d.mkdir()
    pts = np.load(S00 / "points_xyzrgb.npy")[:3000]
    labels = np.load(S00 / "labels_nyu40.npy")[:3000]
    axis = np.loadtxt(S00 / "axis_align_matrix.txt")
    inv = np.linalg.inv(axis)
    orig = pts[:, :3].astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
    _write_vh_clean_2(d, orig.astype(np.float32), pts[:, 3:].astype(np.uint8), labels.astype(np.uint16))
    (d / "scene0000_00.txt").write_text(
        "colorHeight = 968\naxisAlignment = " + " ".join(f"{v:.6f}" for v in axis.ravel()) + "\nnumDepthFrames = 5578\n"
    )
    for sub in ("color", "pose", "intrinsic"):
        shutil.copytree(S00 / sub, d / sub)
    s = load_scene(d)
    assert s.meta["points_file"].endswith("_vh_clean_2.ply")
    assert np.allclose(s.xyz, pts[:, :3], atol=1e-4)
    assert np.array_equal(s.rgb, pts[:, 3:].astype(np.uint8))  # colours from the mesh, not labels.ply
    assert np.array_equal(s.labels, labels)
    assert [f.name for f in s.frames] == ["0", "11", "102"]
    assert np.allclose(s.frames[1].pose, axis @ np.loadtxt(S00 / "pose" / "11.txt"), atol=1e-6)
    mesh = read_ply(d / "scene0000_00_vh_clean_2.ply")
    assert mesh["faces"].shape == (2998, 3) and "alpha" not in mesh

    (d / "scene0000_00_vh_clean_2.labels.ply").write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 2\n"
        b"property float x\nproperty float y\nproperty float z\n"
        b"property ushort label\nend_header\n0 0 0 1\n1 1 1 2\n"
    )
    with raises_naming(d / "scene0000_00_vh_clean_2.labels.ply", "2 labelled vertices for 3000"):
        load_scene(d)


def test_sensreader_depth_frames_and_frame_step(tmp_path, caplog):
    """Depth in millimetres with its own intrinsics; views are the raw frame ids that are multiples
    of frame_step (geopurify.data.frames)."""
    d = tmp_path / "room"
    rng = np.random.default_rng(3)
    write_scene(d, rng.random((100, 3)), rng.integers(0, 256, (100, 3)))
    kd = np.array([[150.0, 0, 80], [0, 150, 60], [0, 0, 1]])
    depths = {}
    for i in (0, 5, 10, 15, 20, 100):
        depths[i] = np.round(rng.uniform(0.5, 4.0, (120, 160)), 3)
        write_frame(
            d,
            i,
            a_pose(i),
            K,
            color=rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
            depth=depths[i],
            depth_intrinsic=kd,
        )
    s = load_scene(d, frame_step=10)
    assert [f.name for f in s.frames] == ["0", "10", "20", "100"]  # raw ids, not every 10th file
    assert s.meta["n_pose_files"] == 6 and "frames were exported" not in caplog.text
    f = s.frames[1]
    assert np.allclose(f.pose, a_pose(10), atol=1e-10) and np.allclose(f.intrinsic, K)
    assert np.allclose(f.K_depth, kd) and np.allclose(f.depth(), depths[10], atol=1e-6)
    assert [f.name for f in load_scene(d).frames] == ["0", "5", "10", "15", "20", "100"]
    # ids exported every 5th: a step of 4 can only give the multiples of 20, and says so
    assert [f.name for f in load_scene(d, frame_step=4).frames] == ["0", "20", "100"]
    assert "exported every 5 raw frames, and data.frame_step 4 is not a multiple of 5" in caplog.text


# ---------------------------------------------------------------- writers -> readers
def test_write_then_load_round_trip(tmp_path):
    d = tmp_path / "synthetic_room"
    rng = np.random.default_rng(4)
    n = 1000
    xyz = rng.uniform(-2, 2, (n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    lab = rng.integers(0, 41, n)
    inst = rng.integers(0, 9, n)
    write_scene(d, xyz, rgb, lab, inst, meta={"source": "synthetic (procedural room)"})
    col = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    dep = np.round(rng.uniform(0.3, 5, (240, 320)) * 4000) / 4000
    limg = rng.integers(0, 41, (240, 320))
    k2 = K.copy()
    k2[0, 0] = 280.0
    write_frame(d, 0, a_pose(0), K, color=col, depth=dep, depth_scale=4000.0, label_image=limg, color_ext=".png")
    write_frame(d, 1, a_pose(1), k2, color=col, depth=dep, depth_scale=4000.0, label_image=limg, color_ext=".png")
    with pytest.raises(ValueError, match="depth_scale"):
        write_frame(d, 2, a_pose(2), K, depth=dep, depth_scale=1000.0)
    assert not (d / "pose" / "2.txt").exists()  # a refused frame writes nothing
    s = load_scene(d)
    assert s.source == "synthetic (procedural room)" and s.meta["depth_scale"] == 4000.0
    assert np.array_equal(s.xyz, xyz) and np.array_equal(s.rgb, rgb)
    assert np.array_equal(s.labels, lab) and np.array_equal(s.instances, inst)
    assert s.labels.dtype == np.int32 and s.instances.dtype == np.int32
    assert [f.name for f in s.frames] == ["0", "1"]
    f0, f1 = s.frames
    assert np.allclose(f0.pose, a_pose(0), atol=1e-10) and np.allclose(f1.pose, a_pose(1), atol=1e-10)
    assert np.allclose(f0.intrinsic, K) and np.allclose(f1.intrinsic, k2)  # per-frame intrinsics kept
    assert np.array_equal(f0.color(), col) and np.allclose(f0.depth(), dep, atol=1e-6)
    assert np.array_equal(f0.label_image(), limg) and f0.depth_scale == 4000.0

    write_scene(d, xyz[:10], rgb[:10])  # rewriting without labels removes the stale label files
    s = load_scene(d)
    assert s.n_points == 10 and s.labels is None and s.instances is None


def test_axis_alignment_written_before_frames_round_trips(tmp_path):
    d = tmp_path / "aligned"
    write_scene(d, np.random.default_rng(5).random((50, 3)), np.zeros((50, 3)))
    axis = rot_z(30.0)
    axis[:3, 3] = [-1.0, 2.0, 0.1]
    write_axis_alignment(d, axis)
    write_frame(d, 7, a_pose(3), K, color=np.zeros((240, 320, 3), np.uint8))
    stored = np.loadtxt(d / "pose" / "7.txt")
    assert np.allclose(axis @ stored, a_pose(3), atol=1e-10) and not np.allclose(stored, a_pose(3))
    assert np.allclose(load_scene(d).frames[0].pose, a_pose(3), atol=1e-10)


# ---------------------------------------------------------------- bad input
def _two_frame_scene(d: Path) -> None:
    rng = np.random.default_rng(6)
    write_scene(d, rng.random((200, 3)), rng.integers(0, 256, (200, 3)), rng.integers(0, 41, 200))
    for i in (0, 1):
        write_frame(d, i, a_pose(i), K, color=np.full((240, 320, 3), 100, np.uint8))


def test_fatal_problems_name_the_file(tmp_path):
    d = tmp_path / "s"
    _two_frame_scene(d)
    pts = np.load(d / "points_xyzrgb.npy")
    pts[5, 1] = np.nan
    np.save(d / "points_xyzrgb.npy", pts)
    with raises_naming(d / "points_xyzrgb.npy", "NaN/inf"):
        load_scene(d)
    np.save(d / "points_xyzrgb.npy", pts[:, :5])
    with raises_naming(d / "points_xyzrgb.npy", r"\(N, 6\)"):
        load_scene(d)
    pts[5, 1] = 0.0
    np.save(d / "points_xyzrgb.npy", pts)
    np.save(d / "labels_nyu40.npy", np.zeros(199, np.int32))
    with raises_naming(d / "labels_nyu40.npy", "199 labels for 200 points"):
        load_scene(d)
    np.save(d / "labels_nyu40.npy", np.zeros(200, np.int32))
    load_scene(d)
    (d / "intrinsic" / "intrinsic_color.txt").write_text("300 0 160\n0 300 120\n")
    with raises_naming(d / "intrinsic" / "intrinsic_color.txt", "3x3 or 4x4"):
        load_scene(d)
    (d / "intrinsic" / "intrinsic_color.txt").write_text("300 0 160\n0 nan 120\n0 0 1\n")
    with raises_naming(d / "intrinsic" / "intrinsic_color.txt", "NaN"):
        load_scene(d)
    (d / "intrinsic" / "intrinsic_color.txt").unlink()
    with raises_naming(d / "intrinsic" / "intrinsic_color.txt", "missing"):
        load_scene(d)
    with raises_naming(tmp_path / "nope", "not found"):
        load_scene(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with raises_naming(tmp_path / "empty", "not a scene directory"):
        load_scene(tmp_path / "empty")


def test_bad_frames_are_skipped_and_recorded(tmp_path):
    d = tmp_path / "s"
    _two_frame_scene(d)
    (d / "pose" / "1.txt").write_text("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    s = load_scene(d)
    assert [f.name for f in s.frames] == ["0"] and s.meta["skipped_frames"] == 1
    assert s.meta["skip_reasons"][0].startswith(str(d / "pose" / "1.txt") + ": ") and "NaN" in s.meta["skip_reasons"][0]

    (d / "pose" / "1.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")  # scaled: not a camera pose
    assert "rigid" in load_scene(d).meta["skip_reasons"][0]
    (d / "pose" / "1.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    (d / "color" / "1.jpg").write_bytes(b"\x00" * 64)  # unreadable image
    s = load_scene(d)
    assert s.meta["skipped_frames"] == 1 and str(d / "color" / "1.jpg") in s.meta["skip_reasons"][0]
    (d / "color" / "1.jpg").unlink()  # missing image
    s = load_scene(d)
    assert s.meta["skipped_frames"] == 1 and "missing" in s.meta["skip_reasons"][0]

    (d / "pose" / "0.txt").write_text("-inf -inf -inf -inf\n" * 3 + "0 0 0 1\n")  # ScanNet's lost tracking
    with raises_naming(d / "pose" / "0.txt", "all 2 frames"):
        load_scene(d)


def test_nan_pose_in_single_frame_scene(tmp_path):
    d = tmp_path / "one"
    write_scene(d, np.random.default_rng(7).random((20, 3)), np.zeros((20, 3)))
    write_frame(d, 3, a_pose(0), K, color=np.zeros((240, 320, 3), np.uint8))
    (d / "pose" / "3.txt").write_text("1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with raises_naming(d / "pose" / "3.txt", "NaN/inf"):
        load_scene(d)


def test_intrinsics_not_matching_images_are_reported(tmp_path):
    d = tmp_path / "s"
    write_scene(d, np.random.default_rng(8).random((20, 3)), np.zeros((20, 3)))
    big_k = np.array([[1169.6, 0, 646.3], [0, 1167.1, 489.9], [0, 0, 1]])  # ScanNet colour K, 320x240 image
    write_frame(d, 0, a_pose(0), big_k, color=np.zeros((240, 320, 3), np.uint8))
    with raises_naming(d / "color" / "0.jpg", "principal point"):
        load_scene(d)


def test_list_scenes(tmp_path):
    for name in ("scene10", "scene2", "scene1"):
        write_scene(tmp_path / name, np.ones((3, 3)), np.zeros((3, 3)))
    (tmp_path / "not_a_scene").mkdir()
    assert [p.name for p in list_scenes(tmp_path)] == ["scene1", "scene2", "scene10"]
    lst = tmp_path / "val.txt"
    lst.write_text("# held-out scenes\nscene10\n\nscene1  # first\n")
    assert [p.name for p in list_scenes(tmp_path, lst)] == ["scene10", "scene1"]
    lst.write_text("scene1\nscene7\n")
    with raises_naming(lst, "scene 'scene7' not found"):
        list_scenes(tmp_path, lst)
    with raises_naming(tmp_path / "not_a_scene", "no scene directories"):
        list_scenes(tmp_path / "not_a_scene")


def test_natural_key():
    keys = ["10", "2", "frame-10", "frame-9", "1", "a"]
    assert sorted(keys, key=natural_key) == ["1", "2", "10", "a", "frame-9", "frame-10"]

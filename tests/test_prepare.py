"""Raw-data preparation: ScanNet .sens export, raw scans, Matterport houses, resume, split lists."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from geopurify.data import matterport as MP
from geopurify.data import prepare as P
from geopurify.data import sens as S
from geopurify.data.cameras import look_at
from geopurify.data.readers import load_scene
from geopurify.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "scannet" / "scene0000_00"


# ------------------------------------------------------------------------------------- test writers
def write_sens(
    path: Path,
    poses,
    colors: list[bytes],
    depths: list[np.ndarray],
    k_color,
    k_depth,
    color_wh,
    depth_wh,
    depth_shift=1000.0,
    name="StructureSensor",
    ext_color=None,
    ext_depth=None,
):
    """A ScanNet SensorData v4 file, written field by field from the format description."""
    ext_color = np.eye(4) if ext_color is None else ext_color
    ext_depth = np.eye(4) if ext_depth is None else ext_depth
    out = bytearray()
    out += struct.pack("<I", 4) + struct.pack("<Q", len(name)) + name.encode()
    for m in (k_color, ext_color, k_depth, ext_depth):
        out += np.asarray(m, dtype="<f4").tobytes()
    out += struct.pack("<ii", 2, 1)  # jpeg, zlib_ushort
    out += struct.pack("<IIII", color_wh[0], color_wh[1], depth_wh[0], depth_wh[1])
    out += struct.pack("<f", depth_shift) + struct.pack("<Q", len(poses))
    for i, (pose, c, d) in enumerate(zip(poses, colors, depths)):
        dz = zlib.compress(np.asarray(d, dtype="<u2").tobytes())
        out += np.asarray(pose, dtype="<f4").tobytes()
        out += struct.pack("<QQQQ", 1000 * i, 1000 * i + 7, len(c), len(dz)) + c + dz
    out += struct.pack("<Q", 0)  # no IMU frames
    path.write_bytes(bytes(out))


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def K4(fx, fy, cx, cy):
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


def rot_z(deg, t=(0, 0, 0)):
    a = np.deg2rad(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = t
    return m


def small_sens(path: Path, n=3, seed=0, bad_pose_at=None):
    rng = np.random.default_rng(seed)
    poses = [
        look_at(np.array([1.0 + 0.1 * i, 0.5, 1.4]), np.array([2.0, 3.0, 0.8])).astype(np.float32) for i in range(n)
    ]
    if bad_pose_at is not None:
        poses[bad_pose_at] = np.full((4, 4), -np.inf, dtype=np.float32)
    colors = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    depths = [rng.integers(0, 5000, (24, 32)).astype(np.uint16) for _ in range(n)]
    kc, kd = K4(50.25, 50.5, 31.75, 23.5), K4(25.125, 25.25, 15.5, 11.75)
    ext = rot_z(3.0, (0.01, -0.02, 0.0))
    write_sens(path, poses, [jpeg_bytes(c) for c in colors], depths, kc, kd, (64, 48), (32, 24), ext_color=ext)
    return poses, colors, depths, kc, kd, ext


# ------------------------------------------------------------------------------------- .sens
def test_sens_header_fields(tmp_path):
    poses, colors, depths, kc, kd, ext = small_sens(tmp_path / "a.sens")
    h = S.read_sens_header(tmp_path / "a.sens")
    assert (h.version, h.sensor_name, h.n_frames) == (4, "StructureSensor", 3)
    assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (64, 48, 32, 24)
    assert (h.color_compression, h.depth_compression, h.depth_shift) == ("jpeg", "zlib_ushort", 1000.0)
    assert np.array_equal(h.intrinsic_color, kc.astype(np.float32))
    assert np.array_equal(h.extrinsic_color, ext.astype(np.float32))
    frames = list(S.iter_sens_frames(h, [2, 0]))
    assert [f.index for f in frames] == [2, 0]
    assert np.array_equal(frames[0].camera_to_world, poses[2])
    assert (frames[0].timestamp_color, frames[0].timestamp_depth) == (2000, 2007)
    assert np.array_equal(S.decode_depth(h, frames[1]), depths[0])
    assert S.decode_color(h, frames[1]).shape == (48, 64, 3)


def test_sens_export_round_trip(tmp_path):
    poses, colors, depths, kc, kd, ext = small_sens(tmp_path / "a.sens", bad_pose_at=1)
    src_jpegs = [f.color_data for f in S.iter_sens_frames(S.read_sens_header(tmp_path / "a.sens"))]
    out = tmp_path / "scene"
    summary = S.export_sens(tmp_path / "a.sens", out, frame_step=1, progress=False)
    assert summary["exported"] == 2 and summary["skipped_invalid_pose"] == [1]
    assert sorted(p.name for p in (out / "pose").iterdir()) == ["0.txt", "2.txt"]
    for i in (0, 2):
        assert np.array_equal(np.loadtxt(out / "pose" / f"{i}.txt").astype(np.float32), poses[i])
        with Image.open(out / "depth" / f"{i}.png") as im:
            assert np.array_equal(np.asarray(im).astype(np.uint16), depths[i])  # millimetres, unchanged
        assert (out / "color" / f"{i}.jpg").read_bytes() == src_jpegs[i]  # stored JPEG, not re-encoded
        with Image.open(out / "color" / f"{i}.jpg") as im:
            assert im.size == (64, 48)
    intr = out / "intrinsic"
    assert np.array_equal(np.loadtxt(intr / "intrinsic_color.txt").astype(np.float32), kc.astype(np.float32))
    assert np.array_equal(np.loadtxt(intr / "intrinsic_depth.txt").astype(np.float32), kd.astype(np.float32))
    assert np.array_equal(np.loadtxt(intr / "extrinsic_color.txt").astype(np.float32), ext.astype(np.float32))
    assert json.loads((out / "meta.json").read_text())["depth_scale"] == 1000.0

    step = S.export_sens(tmp_path / "a.sens", tmp_path / "every2", frame_step=2, progress=False)
    assert step["exported"] == 2 and sorted(p.name for p in (tmp_path / "every2" / "depth").iterdir()) == [
        "0.png",
        "2.png",
    ]


@pytest.mark.parametrize("cut", [3, 40, 300, -200, -30])
def test_truncated_sens_names_the_file(tmp_path, cut):
    small_sens(tmp_path / "a.sens")
    data = (tmp_path / "a.sens").read_bytes()
    bad = tmp_path / "bad.sens"
    bad.write_bytes(data[:cut] if cut > 0 else data[: cut - 8])  # negative: drop the IMU count too
    with pytest.raises(InputError) as e:
        S.export_sens(bad, tmp_path / "out", progress=False)
    assert str(bad) in str(e.value) and "truncated" in str(e.value)
    assert not (tmp_path / "out" / "pose").exists()  # nothing exported from a broken file


def test_sens_wrong_version_and_corrupt_depth(tmp_path):
    small_sens(tmp_path / "a.sens")
    data = bytearray((tmp_path / "a.sens").read_bytes())
    data[0] = 3
    (tmp_path / "v3.sens").write_bytes(bytes(data))
    with pytest.raises(InputError, match="version 3"):
        S.read_sens_header(tmp_path / "v3.sens")
    h = S.read_sens_header(tmp_path / "a.sens")
    fr = next(S.iter_sens_frames(h, [0]))
    fr.depth_data = b"\x00" * len(fr.depth_data)
    with pytest.raises(InputError, match="zlib"):
        S.decode_depth(h, fr)


# ------------------------------------------------------------------------------------- ScanNet raw scans
def write_scannet_mesh(scan: Path, xyz_orig: np.ndarray, rgb: np.ndarray, labels: np.ndarray | None):
    name = scan.name
    n = xyz_orig.shape[0]
    faces = np.array([([i, i + 1, i + 2],) for i in range(0, n - 2, 3)], dtype=[("vertex_indices", "i4", (3,))])
    base = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    v = np.empty(n, dtype=base)
    v["x"], v["y"], v["z"] = xyz_orig.T
    v["red"], v["green"], v["blue"], v["alpha"] = rgb[:, 0], rgb[:, 1], rgb[:, 2], 255
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face")]).write(
        str(scan / f"{name}_vh_clean_2.ply")
    )
    if labels is not None:
        vl = np.empty(n, dtype=base + [("label", "u2")])
        for k in ("x", "y", "z", "alpha"):
            vl[k] = v[k]
        vl["red"], vl["green"], vl["blue"] = 10, 20, 30  # label colours, unused
        vl["label"] = labels
        PlyData([PlyElement.describe(vl, "vertex"), PlyElement.describe(faces, "face")]).write(
            str(scan / f"{name}_vh_clean_2.labels.ply")
        )


def write_axis_txt(scan: Path, A: np.ndarray):
    (scan / f"{scan.name}.txt").write_text(
        "colorHeight = 968\naxisAlignment = " + " ".join(f"{v:.9g}" for v in A.reshape(-1)) + "\nnumDepthFrames = 3\n"
    )


def tiny_scan(root: Path, name="scene0007_00", seed=0, n=300, with_sens=True):
    rng = np.random.default_rng(seed)
    scan = root / name
    scan.mkdir(parents=True)
    A = rot_z(30.0, (1.5, -2.0, 0.1))
    aligned = rng.uniform([0, 0, 0], [4, 3, 2.5], (n, 3))
    orig = (np.linalg.inv(A) @ np.c_[aligned, np.ones(n)].T).T[:, :3]
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    labels = rng.choice([0, 1, 2, 5, 39], n).astype(np.uint16)
    write_scannet_mesh(scan, orig, rgb, labels)
    write_axis_txt(scan, A)
    seg = np.repeat(np.arange(n // 10) * 7, 10)
    (scan / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": seg.tolist()}))
    groups = [{"objectId": 0, "label": "chair", "segments": [0, 7]}, {"objectId": 4, "label": "wall", "segments": [21]}]
    (scan / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    inst = np.zeros(n, np.int32)
    inst[np.isin(seg, [0, 7])] = 1
    inst[seg == 21] = 5
    sens = small_sens(scan / f"{name}.sens", seed=seed) if with_sens else None
    return scan, A, aligned, rgb, labels, inst, sens


def test_scannet_scan_prepares_axis_aligned(tmp_path):
    scan, A, aligned, rgb, labels, inst, (poses, colors, depths, kc, kd, _) = tiny_scan(tmp_path / "raw")
    done = P.prepare_scannet(tmp_path / "raw", tmp_path / "out", frame_step=1, progress=False)
    assert done == [tmp_path / "out" / "scene0007_00"]
    # staging area cleaned up; the split list of the official split scene0007_00 is in
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scannetv2_train.txt", "scene0007_00"]
    sc = load_scene(done[0])
    np.testing.assert_allclose(sc.xyz, aligned, atol=2e-6)  # mesh vertices mapped by axisAlignment
    assert np.array_equal(sc.rgb, rgb) and np.array_equal(sc.labels, labels.astype(np.int32))
    assert np.array_equal(sc.instances, inst)
    assert np.array_equal(np.load(done[0] / "points_xyzrgb.npy")[:, :3], sc.xyz)
    assert (sc.source, sc.label_space, sc.meta["depth_scale"]) == ("scannet", "nyu40", 1000.0)
    np.testing.assert_allclose(np.loadtxt(done[0] / "axis_align_matrix.txt"), A, atol=1e-9)
    assert [f.name for f in sc.frames] == ["0", "1", "2"]
    for f, pose, d in zip(sc.frames, poses, depths):
        np.testing.assert_allclose(f.pose, A @ pose.astype(np.float64), atol=1e-9)  # world = A @ original
        np.testing.assert_allclose(f.intrinsic, kc[:3, :3], atol=1e-6)
        np.testing.assert_allclose(f.K_depth, kd[:3, :3], atol=1e-6)
        np.testing.assert_allclose(f.depth(), d / 1000.0, atol=1e-7)
        assert f.color().shape == (48, 64, 3)
    # the same pixel whether the original points are projected with the original pose or the aligned
    # points with the folded pose
    orig = (np.linalg.inv(A) @ np.c_[aligned, np.ones(len(aligned))].T).T[:, :3]
    cam_w = (np.linalg.inv(sc.frames[0].pose) @ np.c_[sc.xyz, np.ones(len(aligned))].T)[:3]
    cam_o = (np.linalg.inv(poses[0].astype(np.float64)) @ np.c_[orig, np.ones(len(aligned))].T)[:3]
    np.testing.assert_allclose(cam_w, cam_o, atol=1e-5)


def test_scannet_test_scan_without_labels_or_sens(tmp_path):
    scan = tmp_path / "raw" / "scene0707_00"
    scan.mkdir(parents=True)
    xyz = np.random.default_rng(1).uniform(0, 2, (30, 3))
    write_scannet_mesh(scan, xyz, np.full((30, 3), 128, np.uint8), None)
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / "scene0707_00", progress=False)
    sc = load_scene(out)
    assert sc.labels is None and sc.frames == [] and sc.meta["axis_aligned"] is False
    np.testing.assert_allclose(sc.xyz, xyz, atol=1e-6)  # no alignment known: original frame


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared ScanNet test data not present")
def test_real_scannet_scan_round_trip(tmp_path):
    """scene0000_00 rebuilt as a raw scan (mesh in the original frame, axisAlignment, a .sens holding
    its three real JPEG frames) prepares back into the shared scene, and the prepared poses put the
    points on the right image colours."""
    pts = np.load(SHARED / "points_xyzrgb.npy")
    lab = np.load(SHARED / "labels_nyu40.npy")
    A = np.loadtxt(SHARED / "axis_align_matrix.txt")
    n = pts.shape[0]
    scan = tmp_path / "raw" / "scene0000_00"
    scan.mkdir(parents=True)
    orig = (np.linalg.inv(A) @ np.c_[pts[:, :3].astype(np.float64), np.ones(n)].T).T[:, :3]
    write_scannet_mesh(scan, orig, pts[:, 3:].astype(np.uint8), lab.astype(np.uint16))
    write_axis_txt(scan, A)
    keys = ["0", "11", "102"]
    jpgs = [(SHARED / "color" / f"{k}.jpg").read_bytes() for k in keys]
    poses = [np.loadtxt(SHARED / "pose" / f"{k}.txt") for k in keys]
    kc = np.loadtxt(SHARED / "intrinsic" / "intrinsic_color.txt")
    kd = kc.copy()
    kd[:2] *= 0.5  # depth intrinsics of a 640x480-ish depth image; depth itself is left empty
    write_sens(
        scan / "scene0000_00.sens", poses, jpgs, [np.zeros((484, 648), np.uint16)] * 3, kc, kd, (1296, 968), (648, 484)
    )
    P.prepare_scannet(tmp_path / "raw", tmp_path / "out", frame_step=1, progress=False)
    sc = load_scene(tmp_path / "out" / "scene0000_00")
    np.testing.assert_allclose(sc.xyz, pts[:, :3], atol=2e-5)
    assert np.array_equal(sc.labels, lab) and sc.n_points == 81369
    assert [(tmp_path / "out" / "scene0000_00" / "color" / f"{i}.jpg").read_bytes() for i in range(3)] == jpgs
    rgb = sc.rgb.astype(np.float64)
    diffs, shuffled = [], []
    perm = np.random.default_rng(0).permutation(n)
    for f in sc.frames:
        img = f.color().astype(np.float64)
        cam = (np.linalg.inv(f.pose) @ np.c_[sc.xyz, np.ones(n)].T)[:3]
        z = cam[2]
        u = np.rint(f.intrinsic[0, 0] * cam[0] / z + f.intrinsic[0, 2])
        v = np.rint(f.intrinsic[1, 1] * cam[1] / z + f.intrinsic[1, 2])
        ok = (z > 0.1) & (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0])
        px = img[v[ok].astype(int), u[ok].astype(int)]
        diffs.append(np.abs(px - rgb[ok]).mean())
        shuffled.append(np.abs(px - rgb[perm][ok]).mean())
    assert np.mean(diffs) < 0.65 * np.mean(shuffled), (diffs, shuffled)


def _kill_during_second_scene(raw: Path, out: Path) -> subprocess.CompletedProcess:
    """Run prepare in a child that SIGKILLs itself while exporting the frames of scene0002_00."""
    code = f"""
import os, signal
import geopurify.data.sens as S
from geopurify.data.prepare import prepare_scannet
real = S.export_sens
def export_then_die(path, scene_dir, **kw):
    res = real(path, scene_dir, **kw)
    if 'scene0002_00' in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return res
S.export_sens = export_then_die
prepare_scannet({str(raw)!r}, {str(out)!r}, frame_step=1, progress=False)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_kill_then_resume_skips_finished_scenes(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for i, name in enumerate(["scene0001_00", "scene0002_00", "scene0003_00"]):
        tiny_scan(raw, name, seed=i, n=60)
    res = _kill_during_second_scene(raw, out)
    assert res.returncode == -9, res.stderr[-2000:]
    assert P.is_complete(out / "scene0001_00")
    assert not (out / "scene0002_00").exists() and not (out / "scene0003_00").exists()
    leftovers = list((out / P.STAGING_DIR).iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith("scene0002_00.")
    assert (leftovers[0] / "pose" / "0.txt").is_file()  # a half-built scene, invisible to readers
    from geopurify.data.readers import list_scenes

    assert [p.name for p in list_scenes(out)] == ["scene0001_00"]
    first_mtime = (out / "scene0001_00" / "points_xyzrgb.npy").stat().st_mtime_ns

    calls = []
    real = P.prepare_scannet_scan
    monkeypatch.setattr(
        P, "prepare_scannet_scan", lambda scan, dest, **kw: calls.append(scan.name) or real(scan, dest, **kw)
    )
    from geopurify.cli import main

    assert main(["prepare", "scannet", "--root", str(raw), "--out", str(out), "--frame-step", "1"]) == 0
    assert calls == ["scene0002_00", "scene0003_00"]
    assert (out / "scene0001_00" / "points_xyzrgb.npy").stat().st_mtime_ns == first_mtime
    assert not (out / P.STAGING_DIR).exists()
    assert [len(load_scene(out / n).frames) for n in ("scene0001_00", "scene0002_00", "scene0003_00")] == [3, 3, 3]
    calls.clear()
    assert main(["prepare", "scannet", "--root", str(raw), "--out", str(out), "--scenes", "val"]) == 2  # not in val
    P.prepare_scannet(raw, out, scenes=None, progress=False)
    assert calls == []


def test_cli_scannet_bad_input(tmp_path, capsys):
    from geopurify.cli import main

    scan, *_ = tiny_scan(tmp_path / "raw", with_sens=False)
    (scan / "scene0007_00.sens").write_bytes(b"\x04\x00\x00\x00" + b"\x00" * 10)
    assert main(["prepare", "scannet", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after tqdm's lines
    assert err.startswith("error: ") and "scene0007_00.sens" in err and "truncated" in err
    assert not (tmp_path / "o" / "scene0007_00").exists()
    assert main(["prepare", "scannet", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_split_lists():
    mp = {s: P.read_split("matterport", s) for s in P.SPLITS}
    assert {s: len(set(v)) for s, v in mp.items()} == {"train": 61, "val": 11, "test": 18}  # 90 houses
    assert len(set().union(*mp.values())) == 90
    assert P.scene_names("test", dataset="matterport") == mp["test"]
    sizes = {s: len(P.scannet_split(s)) for s in P.SPLITS}
    assert sizes == {"train": 1201, "val": 312, "test": 100}
    sets = {s: set(P.scannet_split(s)) for s in P.SPLITS}
    assert all(len(sets[s]) == sizes[s] for s in sets)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] | sets["val"]) & sets["test"]
    assert all(P._SCENE_RE.fullmatch(n) for s in sets.values() for n in s)
    assert {"scene0000_00", "scene0000_01"} <= sets["train"]  # the shared test scans are training scans
    assert all(int(n[5:9]) >= 707 for n in sets["test"])  # the hidden-label test scans are 0707-0806
    assert P.scene_names("val") == P.scannet_split("val")


def list_names(path: Path) -> list[str]:
    return [n for n in (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()) if n]


def test_prepare_scannet_writes_split_lists(tmp_path, caplog):
    """`prepare scannet` writes <out>/scannetv2_<split>.txt, the prepared scans of each split: the files
    the README recipe's select-subset --list and config/geopurify_scannet.yaml's data.val_list read
    (before, nothing wrote them: the recipe stopped at its second command). Official splits by default;
    the download's own lists (beside scans/, as the stand-in writer puts them) when it has them, for
    `--scenes val` too."""
    from geopurify.data.readers import list_scenes

    raw = tmp_path / "dl" / "scans"
    for i, name in enumerate(["scene0011_00", "scene0000_00", "scene0007_00"]):  # val, train, train
        tiny_scan(raw, name, seed=i, with_sens=False)
    out = tmp_path / "data"
    P.prepare_scannet(raw, out, progress=False)
    assert list_names(out / "scannetv2_train.txt") == ["scene0000_00", "scene0007_00"]
    assert list_names(out / "scannetv2_val.txt") == ["scene0011_00"]
    assert "official" in (out / "scannetv2_val.txt").read_text().splitlines()[0]
    assert not (out / "scannetv2_test.txt").exists()  # no prepared test scan: no list
    assert [p.name for p in list_scenes(out, out / "scannetv2_val.txt")] == ["scene0011_00"]
    assert "1 of its 312 scans are prepared" in caplog.text  # a partly prepared split is said so

    (tmp_path / "dl" / "scannetv2_train.txt").write_text("scene0011_00\nscene0007_00\n")
    (tmp_path / "dl" / "scannetv2_val.txt").write_text("scene0000_00\n")
    P.prepare_scannet(raw, out, progress=False)  # all three skipped; the lists follow the download's
    assert list_names(out / "scannetv2_train.txt") == ["scene0007_00", "scene0011_00"]
    assert list_names(out / "scannetv2_val.txt") == ["scene0000_00"]
    assert str(tmp_path / "dl") in (out / "scannetv2_val.txt").read_text().splitlines()[0]
    done = P.prepare_scannet(raw, tmp_path / "val_only", scenes="val", progress=False)
    assert [p.name for p in done] == ["scene0000_00"]
    assert sorted(p.name for p in (tmp_path / "val_only").iterdir()) == ["scannetv2_val.txt", "scene0000_00"]
    with pytest.raises(InputError, match="split 'test' has no list"):
        P.prepare_scannet(raw, tmp_path / "t", scenes="test", progress=False)


# ------------------------------------------------------------------------------------- Matterport
def test_vertex_vote_matches_loop():
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = 40
        faces = rng.integers(0, n - 5, (120, 3))  # the last vertices lie on no face
        cats = rng.choice([-1, 0, 1, 3, 4, 7, 7, 15], 120)
        got = MP.vertex_labels_from_faces(faces, cats, n)
        for v in range(n):
            votes = {}
            for f, c in zip(faces, cats):
                for idx in f:
                    if idx == v:
                        votes[max(c, 0)] = votes.get(max(c, 0), 0) + 1
            want = min((-cnt, c) for c, cnt in votes.items())[1] if votes else 0
            assert got[v] == want


ROOM = np.array([4.0, 3.0, 2.5])


def box_mesh(lo, hi, step=0.25, cats=None):
    """Vertices and triangles of the six faces of an axis-aligned box (separate vertices per face)."""
    verts, faces, fcat = [], [], []
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    for axis in range(3):
        for side, val in (("lo", lo[axis]), ("hi", hi[axis])):
            a, b = [i for i in range(3) if i != axis]
            ua = np.linspace(lo[a], hi[a], int(round((hi[a] - lo[a]) / step)) + 1)
            ub = np.linspace(lo[b], hi[b], int(round((hi[b] - lo[b]) / step)) + 1)
            g = np.zeros((len(ua), len(ub), 3))
            g[..., a], g[..., b] = np.meshgrid(ua, ub, indexing="ij")
            g[..., axis] = val
            base = sum(len(v) for v in verts)
            verts.append(g.reshape(-1, 3))
            idx = base + np.arange(len(ua) * len(ub)).reshape(len(ua), len(ub))
            q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
            tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
            faces.append(tri)
            c = {(2, "lo"): 4, (2, "hi"): 3}.get((axis, side), 1) if cats is None else cats
            if (axis, side) == (0, "lo") and cats is None:
                c = -1  # an unannotated wall
            fcat.append(np.full(len(tri), c))
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(fcat)


def write_region_ply(path: Path, xyz, faces, cats):
    n = xyz.shape[0]
    names = ["x", "y", "z", "nx", "ny", "nz", "tx", "ty"]
    v = np.zeros(n, dtype=[(k, "f4") for k in names] + [("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz.T
    v["red"], v["green"], v["blue"] = 200, 150, 100
    f = np.zeros(
        len(faces),
        dtype=[("vertex_indices", "i4", (3,)), ("material_id", "i4"), ("segment_id", "i4"), ("category_id", "i4")],
    )
    f["vertex_indices"], f["category_id"], f["segment_id"] = faces, cats, 7
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData(
        [
            PlyElement.describe(v, "vertex"),
            PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"}, val_types={"vertex_indices": "i4"}),
        ]
    ).write(str(path))


def render_box_depth(pose_cv, K, hw):
    """z-depth (metres) of the inside of the ROOM box seen from an OpenCV camera-to-world pose."""
    h, w = hw
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    ray = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)  # z = 1
    d = ray @ pose_cv[:3, :3].T
    eye = pose_cv[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d > 0, (ROOM - eye) / d, np.where(d < 0, (0 - eye) / d, np.inf))
    return t.min(-1)


def make_house(root: Path, name="17DRP5sb8fy"):
    """Two views (different intrinsics) from inside a box room; region0 = the room, region1 = a box
    in another room that no camera sees."""
    house = root / name
    views = []
    for i, (eye, target, K, hw) in enumerate(
        [
            ((2.0, 1.5, 1.3), (4.0, 1.8, 0.9), np.array([[40.0, 0, 31.5], [0, 41.0, 23.0], [0, 0, 1]]), (48, 64)),
            ((1.5, 1.0, 1.5), (1.0, 3.0, 0.5), np.array([[36.0, 0, 30.0], [0, 36.5, 25.0], [0, 0, 1]]), (48, 64)),
        ]
    ):
        cv = look_at(np.array(eye), np.array(target))
        mp_pose = cv.copy()
        mp_pose[:3, 1], mp_pose[:3, 2] = -cv[:3, 1], -cv[:3, 2]  # Matterport camera: y up, looks down -z
        depth = render_box_depth(cv, K, hw)
        dq = np.rint(depth * 4000).astype(np.uint16)
        key = f"0f{i}a_i{i}_{i + 2}"
        (house / "undistorted_depth_images").mkdir(parents=True, exist_ok=True)
        (house / "undistorted_color_images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(dq).save(house / "undistorted_depth_images" / f"0f{i}a_d{i}_{i + 2}.png")
        Image.fromarray(np.full((*hw, 3), 60 * (i + 1), np.uint8)).save(
            house / "undistorted_color_images" / f"{key}.jpg"
        )
        views.append((key, K, mp_pose, cv, dq))
    lines = [
        "dataset matterport",
        "n_images 2",
        "depth_directory undistorted_depth_images",
        "color_directory undistorted_color_images",
    ]
    for key, K, mp_pose, _, _ in views:
        lines.append("intrinsics_matrix " + " ".join(f"{v:g}" for v in K.reshape(-1)))
        lines.append(
            f"scan {key.replace('_i', '_d')}.png {key}.jpg " + " ".join(f"{v:.9g}" for v in mp_pose.reshape(-1))
        )
    (house / "undistorted_camera_parameters").mkdir(parents=True)
    (house / "undistorted_camera_parameters" / f"{name}.conf").write_text("\n".join(lines) + "\n")
    xyz, faces, cats = box_mesh((0, 0, 0), ROOM)
    write_region_ply(house / "region_segmentations" / "region0.ply", xyz, faces, cats)
    xyz1, faces1, cats1 = box_mesh((10, 0, 0), (11, 1, 1), cats=7)
    write_region_ply(house / "region_segmentations" / "region1.ply", xyz1, faces1, cats1)
    return house, views, (xyz, faces, cats)


def test_read_conf_converts_axes(tmp_path):
    house, views, _ = make_house(tmp_path)
    got = MP.read_conf(house / "undistorted_camera_parameters" / f"{house.name}.conf")
    assert [v.key for v in got] == [v[0] for v in views]
    for g, (key, K, _, cv, _) in zip(got, views):
        np.testing.assert_allclose(g.pose, cv, atol=1e-7)
        np.testing.assert_allclose(g.K, K)
        assert g.depth == key.replace("_i", "_d") + ".png"
    bad = tmp_path / "bad.conf"
    bad.write_text("dataset matterport\nscan a.png a.jpg " + " ".join(["0"] * 16) + "\n")
    with pytest.raises(InputError, match="line 2: scan line before any intrinsics"):
        MP.read_conf(bad)


@pytest.mark.parametrize("mode", ["visible", "bbox"])
def test_matterport_house_prepares(tmp_path, mode, monkeypatch):
    house, views, (xyz, faces, cats) = make_house(tmp_path / "mp")
    out = tmp_path / "out"
    scenes = MP.prepare_matterport(tmp_path / "mp", out, views=mode, progress=False)
    assert [p.name for p in scenes] == ["17DRP5sb8fy_region0", "17DRP5sb8fy_region1"]
    sc = load_scene(scenes[0])
    np.testing.assert_allclose(sc.xyz, xyz, atol=1e-6)
    assert (sc.source, sc.label_space, sc.meta["depth_scale"]) == ("matterport", "matterport_raw", 4000.0)
    assert np.array_equal(sc.labels, MP.vertex_labels_from_faces(faces, cats, len(xyz)))
    assert set(np.unique(sc.labels)) == {0, 1, 3, 4}  # wall, ceiling, floor, unannotated (-1)
    from geopurify.data.labels import get_label_set

    names = get_label_set("matterport21").names
    mapped = get_label_set("matterport21").map(sc.labels, space="matterport_raw")
    assert {names[i] for i in np.unique(mapped[mapped >= 0])} == {"wall", "floor", "ceiling"}
    assert sorted(f.name for f in sc.frames) == sorted(v[0] for v in views)
    assert sc.meta["view_fallback_nearest"] is False
    for f in sc.frames:
        key, K, _, cv, dq = next(v for v in views if v[0] == f.name)
        np.testing.assert_allclose(f.pose, cv, atol=1e-7)
        np.testing.assert_allclose(f.intrinsic, K)
        assert f.depth_scale == 4000.0
        depth = f.depth()
        assert np.array_equal(np.rint(depth * 4000).astype(np.uint16), dq)
        # mesh vertices seen by the camera project onto depth readings of themselves
        cam = (np.linalg.inv(f.pose) @ np.c_[xyz, np.ones(len(xyz))].T)[:3]
        z = cam[2]
        u = np.rint(K[0, 0] * cam[0] / np.maximum(z, 1e-9) + K[0, 2]).astype(int)
        v = np.rint(K[1, 1] * cam[1] / np.maximum(z, 1e-9) + K[1, 2]).astype(int)
        ok = (z > 0.05) & (u >= 0) & (u < depth.shape[1]) & (v >= 0) & (v < depth.shape[0])
        assert ok.sum() > 50
        err = np.abs(depth[v[ok], u[ok]] - z[ok])
        assert np.median(err) < 0.03 and np.mean(err < 0.1) > 0.8  # pixel rounding only; edges excepted
        # and depth pixels back-project onto the room's walls
        rows, cols = np.nonzero(depth > 0)
        p_cam = (
            np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones(len(rows))]) * depth[rows, cols]
        )
        p = (f.pose[:3, :3] @ p_cam).T + f.pose[:3, 3]
        dist = np.minimum(np.abs(p), np.abs(p - ROOM)).min(1)
        assert dist.max() < 1e-3
    far = load_scene(scenes[1])
    assert far.meta["view_fallback_nearest"] is True and len(far.frames) == 2  # nobody sees it: nearest cameras
    assert set(np.unique(far.labels)) == {7}
    # a re-run skips both regions; an overwrite re-uses the cached view selection
    monkeypatch.setattr(MP, "read_region", lambda p: pytest.fail("finished regions must be skipped"))
    MP.prepare_matterport(tmp_path / "mp", out, views=mode, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(MP, "visible_counts", lambda *a, **k: pytest.fail("cached selection must be reused"))
    MP.prepare_matterport(tmp_path / "mp", out, views=mode, overwrite=True, progress=False)
    assert len(load_scene(scenes[0]).frames) == 2


def test_matterport_visibility_drops_frames_that_do_not_see_a_region(tmp_path):
    house, views, (xyz, faces, cats) = make_house(tmp_path / "mp")
    all_views = MP.read_conf(house / "undistorted_camera_parameters" / f"{house.name}.conf")
    floor = xyz[xyz[:, 2] == 0]
    wall_x4 = xyz[xyz[:, 0] == 4.0]
    counts = MP.visible_counts(
        all_views, house / "undistorted_depth_images", [floor, wall_x4, xyz + 20], progress=False
    )
    assert counts[0, 1] > 20 and counts[1, 1] == 0  # view 0 faces the x = 4 wall, view 1 looks at y = 3
    assert (counts[:, 0] > 0).all() and (counts[:, 2] == 0).all()


def test_matterport_missing_image_drops_the_view(tmp_path, caplog):
    house, views, _ = make_house(tmp_path / "mp")
    (house / "undistorted_depth_images" / (views[1][0].replace("_i", "_d") + ".png")).unlink()
    with caplog.at_level("WARNING"):
        scenes = MP.prepare_matterport(house, tmp_path / "out", progress=False)
    assert "1 of 2 views lack their colour or depth image" in caplog.text
    assert [f.name for f in load_scene(scenes[0]).frames] == [views[0][0]]
    for d in (house / "undistorted_depth_images").iterdir():
        d.unlink()
    with pytest.raises(InputError, match="none of the 2 images"):
        MP.prepare_matterport(house, tmp_path / "out2", progress=False)


def test_prepare_matterport_writes_split_lists(tmp_path):
    """`prepare matterport` writes <out>/matterport_<split>.txt: the prepared regions of each split's
    houses (config/geopurify_matterport.yaml's data.val_list is matterport_test.txt; nothing wrote it
    before). Official house lists by default; the download's own (beside v1/) when it has them."""
    make_house(tmp_path / "mp")  # 17DRP5sb8fy: an official train house
    MP.prepare_matterport(tmp_path / "mp", tmp_path / "o", progress=False)
    assert list_names(tmp_path / "o" / "matterport_train.txt") == ["17DRP5sb8fy_region0", "17DRP5sb8fy_region1"]
    assert not any((tmp_path / "o" / f"matterport_{s}.txt").exists() for s in ("val", "test"))

    make_house(tmp_path / "dl" / "v1" / "scans")
    (tmp_path / "dl" / "matterport_test.txt").write_text("17DRP5sb8fy\n")
    MP.prepare_matterport(tmp_path / "dl" / "v1" / "scans", tmp_path / "o2", progress=False)
    assert sorted(p.name for p in (tmp_path / "o2").glob("*.txt")) == ["matterport_test.txt"]
    assert list_names(tmp_path / "o2" / "matterport_test.txt") == ["17DRP5sb8fy_region0", "17DRP5sb8fy_region1"]
    assert [MP.region_house(n) for n in ("a_b_region12", "17DRP5sb8fy_region0", "scene0000_00", "x_regionA")] == [
        "a_b",
        "17DRP5sb8fy",
        None,
        None,
    ]


def test_cli_matterport(tmp_path, capsys):
    from geopurify.cli import main

    make_house(tmp_path / "mp")
    assert main(["prepare", "matterport", "--root", str(tmp_path / "mp"), "--out", str(tmp_path / "o")]) == 0
    assert "2 Matterport3D region scenes" in capsys.readouterr().out
    conf = tmp_path / "mp" / "17DRP5sb8fy" / "undistorted_camera_parameters" / "17DRP5sb8fy.conf"
    conf.write_text(conf.read_text().replace("intrinsics_matrix 40", "intrinsics_matrix x40"))
    assert main(["prepare", "matterport", "--root", str(tmp_path / "mp"), "--out", str(tmp_path / "o2")]) == 2
    assert "17DRP5sb8fy.conf: line 5" in capsys.readouterr().err

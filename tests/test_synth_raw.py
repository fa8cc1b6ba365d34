"""Release-format writers: procedural rooms as ScanNet v2 scans and Matterport3D houses (synthetic
stand-ins), the .sens / mesh PLY writers, and `geopurify prepare` on their output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from geopurify.cli import main

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
N_FRAMES, N_VERTS = 12, 5000


@pytest.fixture(scope="module")
def scannet_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "scannet"
    assert (
        main(
            [
                "synth",
                "--format",
                "scannet-raw",
                "--out",
                str(out),
                "--scenes",
                "2",
                "--seed",
                "3",
                "--points",
                str(N_VERTS),
                "--frames",
                str(N_FRAMES),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def matterport_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "mp"
    assert (
        main(
            [
                "synth",
                "--format",
                "matterport-raw",
                "--out",
                str(out),
                "--scenes",
                "1",
                "--seed",
                "4",
                "--rooms",
                "1",
                "--panoramas",
                "1",
                "--points",
                str(N_VERTS),
            ]
        )
        == 0
    )
    return out


def scan_files(root: Path, name: str = "scene9000_00") -> dict:
    d = root / "scans" / name
    return {
        k: d / f"{name}{s}"
        for k, s in (
            ("sens", ".sens"),
            ("mesh", "_vh_clean_2.ply"),
            ("labels", "_vh_clean_2.labels.ply"),
            ("txt", ".txt"),
            ("agg", ".aggregation.json"),
            ("segs", "_vh_clean_2.0.010000.segs.json"),
        )
    }


def axis_of(txt: Path) -> np.ndarray:
    line = next(ln for ln in txt.read_text().splitlines() if ln.startswith("axisAlignment"))
    return np.array(line.split("=")[1].split(), float).reshape(4, 4)


def transform(M: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return xyz.astype(np.float64) @ M[:3, :3].T + M[:3, 3]


def depth_agreement(xyz: np.ndarray, pose: np.ndarray, K: np.ndarray, depth: np.ndarray) -> tuple[float, float, int]:
    """Project world points with a camera-to-world pose (OpenCV axes) onto a depth image (metres):
    (share of in-view points whose reading matches their depth, share with every reading around
    the pixel farther than the point -- impossible when the point is in the way --, points in view).
    The 3x3 neighbourhood keeps points on a silhouette edge, which may round onto the background."""
    h, w = depth.shape
    cam = (xyz.astype(np.float64) - pose[:3, 3]) @ pose[:3, :3]
    z = cam[:, 2]
    ok = z > 0.1
    u = np.rint(K[0, 0] * cam[ok, 0] / z[ok] + K[0, 2]).astype(int)
    v = np.rint(K[1, 1] * cam[ok, 1] / z[ok] + K[1, 2]).astype(int)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, zz = u[inside], v[inside], z[ok][inside]
    d = depth[v, u]
    pad = np.pad(np.where(depth > 0, depth, np.inf), 1, constant_values=np.inf)
    near = np.min([pad[v + 1 + dv, u + 1 + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)], axis=0)
    has = d > 0
    match = np.abs(d[has] - zz[has]) < 0.02 + 0.02 * zz[has]
    behind = near[has] > zz[has] * 1.03 + 0.05
    return float(match.mean()), float(behind.mean()), int(inside.sum())


# ------------------------------------------------------------------------------------------- writers


def test_write_sens_is_the_inverse_of_the_reader(tmp_path):
    from geopurify.data.sens import (
        SensFrame,
        decode_color,
        decode_depth,
        encode_color,
        encode_depth,
        iter_sens_frames,
        read_sens_header,
        write_sens,
    )

    rng = np.random.default_rng(0)
    kc = np.array([[500.0, 0, 31.5], [0, 501, 23.5], [0, 0, 1]])
    kd = np.array([[250.0, 0, 15.5], [0, 250, 11.5], [0, 0, 1]])
    ext = np.eye(4)
    ext[:3, 3] = [0.05, -0.01, 0.002]
    colors = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    depths = [rng.integers(0, 5000, (12, 16), dtype=np.uint16) for _ in range(3)]
    poses = [np.eye(4), np.full((4, 4), -np.inf), np.diag([1.0, -1, -1, 1])]
    frames = [
        SensFrame(i, poses[i], 100 * i, 100 * i + 3, encode_color(colors[i], "png"), encode_depth(depths[i]))
        for i in range(3)
    ]
    n = write_sens(
        tmp_path / "a.sens",
        iter(frames),
        intrinsic_color=kc,
        intrinsic_depth=kd,
        color_width=32,
        color_height=24,
        depth_width=16,
        depth_height=12,
        depth_shift=4000.0,
        sensor_name="test sensor",
        extrinsic_depth=ext,
        color_compression="png",
    )
    h = read_sens_header(tmp_path / "a.sens")
    assert n == h.n_frames == 3 and h.version == 4 and h.sensor_name == "test sensor"
    assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (32, 24, 16, 12)
    assert (h.color_compression, h.depth_compression, h.depth_shift) == ("png", "zlib_ushort", 4000.0)
    np.testing.assert_allclose(h.intrinsic_color[:3, :3], kc, rtol=1e-6)
    np.testing.assert_allclose(h.intrinsic_depth[:3, :3], kd, rtol=1e-6)
    np.testing.assert_allclose(h.extrinsic_depth, ext, atol=1e-7)
    np.testing.assert_array_equal(h.extrinsic_color, np.eye(4))
    for fr, back in zip(frames, iter_sens_frames(h)):
        assert (back.color_data, back.depth_data) == (fr.color_data, fr.depth_data)
        assert (back.timestamp_color, back.timestamp_depth) == (fr.timestamp_color, fr.timestamp_depth)
        np.testing.assert_array_equal(back.camera_to_world, np.asarray(fr.camera_to_world, np.float32))
        np.testing.assert_array_equal(decode_color(h, back), colors[fr.index])  # png: lossless
        np.testing.assert_array_equal(decode_depth(h, back), depths[fr.index])
    assert np.isneginf(list(iter_sens_frames(h, [1]))[0].camera_to_world).all()


def test_write_mesh_ply_round_trips_with_face_properties(tmp_path):
    from plyfile import PlyData

    from geopurify.data.ply import read_ply, write_mesh_ply

    xyz = np.random.default_rng(1).random((5, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    vert = {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "red": np.arange(5, dtype=np.uint8),
        "green": np.zeros(5, np.uint8),
        "blue": np.full(5, 9, np.uint8),
        "label": np.array([1, 2, 3, 4, 40], np.uint16),
    }
    write_mesh_ply(tmp_path / "m.ply", vert, faces, {"category_id": np.array([7, -1], np.int32)})
    back = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(back["xyz"], xyz)
    np.testing.assert_array_equal(back["faces"], faces)
    np.testing.assert_array_equal(back["labels"], [1, 2, 3, 4, 40])
    np.testing.assert_array_equal(back["rgb"][:, 0], np.arange(5))
    ply = PlyData.read(str(tmp_path / "m.ply"))
    assert [p.name for p in ply["vertex"].properties] == list(vert)
    assert ply["vertex"].properties[-1].val_dtype == "u2"  # ScanNet's `property ushort label`
    np.testing.assert_array_equal(ply["face"]["category_id"], [7, -1])
    with pytest.raises(ValueError, match="outside"):
        write_mesh_ply(tmp_path / "bad.ply", vert, np.array([[0, 1, 5]]))


def test_room_mesh_is_a_closed_coloured_mesh_at_the_budget():
    from geopurify.standins.rooms import room_layout
    from geopurify.standins.rooms.mesh import room_mesh

    room, _ = room_layout(11)
    m = room_mesh(room, 20_000)
    assert abs(m.n_vertices - 20_000) < 0.1 * 20_000
    used = np.zeros(m.n_vertices, bool)
    used[m.faces.ravel()] = True
    assert used.all()  # no stray vertices
    a, b, c = (m.xyz[m.faces[:, k]] for k in range(3))
    fn = np.cross(b - a, c - a)
    assert (np.linalg.norm(fn, axis=1) > 0).all()
    assert ((fn * m.normals[m.faces[:, 0]]).sum(1) > 0).all()  # counter-clockwise around the visible side
    inside = ((m.xyz > -1e-6) & (m.xyz < room.size + 1e-6)).all(1)
    assert inside.all()
    for seg in np.unique(m.segments):  # segments: patches of one surface, named by their smallest vertex
        members = np.flatnonzero(m.segments == seg)
        assert members[0] == seg and len(np.unique(m.sid[members])) == 1


# ------------------------------------------------------------------------------------------- ScanNet


def test_sens_frames_have_scannet_geometry(scannet_raw):
    from geopurify.data.sens import decode_color, decode_depth, iter_sens_frames, read_sens_header

    f = scan_files(scannet_raw)
    h = read_sens_header(f["sens"])
    assert h.version == 4 and h.n_frames == N_FRAMES
    assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (1296, 968, 640, 480)
    assert (h.color_compression, h.depth_compression, h.depth_shift) == ("jpeg", "zlib_ushort", 1000.0)
    assert abs(h.intrinsic_color[0, 0] - 1170.19) < 1 and abs(h.intrinsic_depth[0, 0] - 577.87) < 0.01
    txt = dict(ln.split(" = ", 1) for ln in f["txt"].read_text().splitlines())
    assert int(txt["numColorFrames"]) == int(txt["numDepthFrames"]) == N_FRAMES
    assert float(txt["fx_color"]) == pytest.approx(h.intrinsic_color[0, 0], abs=1e-3)
    assert txt["sceneType"].startswith("synthetic stand-in")
    frames = list(iter_sens_frames(h))
    lost = [fr.index for fr in frames if not np.isfinite(fr.camera_to_world).all()]
    assert 1 <= len(lost) <= 3 and 0 not in lost
    assert all(np.isneginf(frames[i].camera_to_world).all() for i in lost)
    for fr in frames[:2]:
        color, depth = decode_color(h, fr), decode_depth(h, fr)
        assert color.shape == (968, 1296, 3) and color.std() > 5
        assert depth.shape == (480, 640) and depth.dtype == np.uint16
        valid = depth[depth > 0]
        assert valid.size > 0.95 * depth.size and 300 < np.median(valid) < 8000  # millimetres in a room


def test_mesh_agrees_with_depth_frames_in_the_original_frame(scannet_raw):
    """Mesh vertices projected with a stored pose land on depth readings of their own distance:
    poses, mesh and depth share one (original) frame; with another frame's pose they do not."""
    from geopurify.data.ply import read_ply
    from geopurify.data.sens import decode_depth, iter_sens_frames, read_sens_header

    f = scan_files(scannet_raw)
    xyz = read_ply(f["mesh"])["xyz"].astype(np.float64)
    h = read_sens_header(f["sens"])
    K = h.intrinsic_depth[:3, :3].astype(np.float64)
    frames = [fr for fr in iter_sens_frames(h) if np.isfinite(fr.camera_to_world).all()]

    for fr, other in ((frames[0], frames[-1]), (frames[-1], frames[0])):
        depth = decode_depth(h, fr)
        match, behind, n_in = depth_agreement(xyz, fr.camera_to_world.astype(np.float64), K, depth / 1000.0)
        assert n_in > 200 and match > 0.25 and behind < 0.005
        wrong_match, wrong_behind, _ = depth_agreement(xyz, other.camera_to_world.astype(np.float64), K, depth / 1000.0)
        assert wrong_behind > 0.05 and wrong_match < match / 2


def test_colour_frames_show_the_mesh_colours_through_the_colour_camera(scannet_raw):
    """Vertices seen in a depth frame, projected with the colour intrinsics into the 1296x968 JPEG,
    find their own colour there (far closer than another vertex's colour or a pixel 25 px away)."""
    from geopurify.data.ply import read_ply
    from geopurify.data.sens import decode_color, decode_depth, iter_sens_frames, read_sens_header

    f = scan_files(scannet_raw)
    mesh = read_ply(f["mesh"])
    xyz, rgb = mesh["xyz"].astype(np.float64), mesh["rgb"].astype(np.float64)
    h = read_sens_header(f["sens"])
    kd, kc = h.intrinsic_depth[:3, :3].astype(np.float64), h.intrinsic_color[:3, :3].astype(np.float64)
    fr = next(fr for fr in iter_sens_frames(h) if np.isfinite(fr.camera_to_world).all())
    pose = fr.camera_to_world.astype(np.float64)
    depth, color = decode_depth(h, fr) / 1000.0, decode_color(h, fr).astype(np.float64)
    cam = (xyz - pose[:3, 3]) @ pose[:3, :3]
    z = np.where(cam[:, 2] > 0.1, cam[:, 2], np.nan)
    with np.errstate(invalid="ignore"):
        u, v = np.rint(kd[0, 0] * cam[:, 0] / z + kd[0, 2]), np.rint(kd[1, 1] * cam[:, 1] / z + kd[1, 2])
        seen = np.flatnonzero((u >= 0) & (u < 640) & (v >= 0) & (v < 480))
    d = depth[v[seen].astype(int), u[seen].astype(int)]
    seen = seen[(d > 0) & (np.abs(d - z[seen]) < 0.02 + 0.01 * z[seen])]
    uc = np.clip(np.rint(kc[0, 0] * cam[seen, 0] / z[seen] + kc[0, 2]).astype(int), 0, 1295)
    vc = np.clip(np.rint(kc[1, 1] * cam[seen, 1] / z[seen] + kc[1, 2]).astype(int), 0, 967)
    assert len(seen) > 200
    own = np.abs(color[vc, uc] - rgb[seen]).mean()
    shuffled = np.abs(color[vc, uc] - rgb[np.random.default_rng(0).permutation(seen)]).mean()
    shifted = np.abs(color[np.clip(vc + 25, 0, 967), np.clip(uc + 25, 0, 1295)] - rgb[seen]).mean()
    assert own < 0.7 * min(shuffled, shifted)


def test_axis_alignment_makes_the_room_axis_aligned(scannet_raw):
    from geopurify.data.ply import read_ply

    f = scan_files(scannet_raw)
    lab = read_ply(f["labels"])
    A = axis_of(f["txt"])
    aligned = transform(A, lab["xyz"])
    floor, wall = lab["labels"] == 2, lab["labels"] == 1
    assert np.abs(aligned[floor, 2]).max() < 2e-3

    def off_axis_planes(pts):
        lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
        return np.min(np.abs(np.concatenate([pts[:, :2] - lo, pts[:, :2] - hi], 1)), axis=1)

    assert off_axis_planes(aligned[wall]).max() < 2e-3  # walls lie on x = const / y = const planes
    assert np.median(off_axis_planes(lab["xyz"][wall].astype(np.float64))) > 0.1  # not in the original frame


def scannet_nyu40_of_raw() -> dict[str, int]:
    with open(SHARED / "scannet" / "scannetv2-labels.combined.tsv") as fh:
        return {r["raw_category"]: int(r["nyu40id"]) for r in csv.DictReader(fh, delimiter="\t")}


def test_aggregation_and_segments_match_the_label_mesh(scannet_raw):
    from geopurify.data.ply import read_ply

    nyu40_of = scannet_nyu40_of_raw()
    for name in ("scene9000_00", "scene9001_00"):
        f = scan_files(scannet_raw, name)
        labels = read_ply(f["labels"])["labels"]
        segs = np.array(json.loads(f["segs"].read_text())["segIndices"])
        assert segs.shape == labels.shape
        agg = json.loads(f["agg"].read_text())
        raw = np.full(len(segs), "", dtype=object)
        obj = np.full(len(segs), -1)
        for g in agg["segGroups"]:
            member = np.isin(segs, g["segments"])
            assert (obj[member] == -1).all()  # no segment in two objects
            raw[member], obj[member] = g["label"], g["objectId"]
        assert (obj >= 0).all()  # every vertex annotated
        np.testing.assert_array_equal([nyu40_of[r] for r in raw], labels)  # raw categories -> the same NYU40 ids


def test_split_files_cover_the_scans(scannet_raw):
    train = (scannet_raw / "scannetv2_train.txt").read_text().split()
    val = (scannet_raw / "scannetv2_val.txt").read_text().split()
    assert train and val and not set(train) & set(val)
    assert sorted(train + val) == sorted(p.name for p in (scannet_raw / "scans").iterdir())


def test_write_splits_gives_every_split_a_name(tmp_path):
    from geopurify.standins.rooms.scannet_raw import write_splits

    for n in (3, 4, 10, 40):
        names = [f"h{i}" for i in range(n)]
        got = write_splits(tmp_path, names, "s_{}.txt", ("train", "val", "test"), seed=1)
        assert all(got[s] for s in ("train", "val", "test")) and sorted(sum(got.values(), [])) == sorted(names)
        assert got == write_splits(tmp_path, names, "s_{}.txt", ("train", "val", "test"), seed=1)
    got = write_splits(tmp_path / "one", ["a"], "s_{}.txt", ("train", "val"), seed=1)
    assert got == {"train": ["a"]} and not (tmp_path / "one" / "s_val.txt").exists()


def test_prepare_scannet_reads_the_stand_in(scannet_raw, tmp_path):
    from geopurify.data.ply import read_ply
    from geopurify.data.readers import load_scene

    out = tmp_path / "prepared"
    assert (
        main(
            [
                "prepare",
                "scannet",
                "--root",
                str(scannet_raw / "scans"),
                "--out",
                str(out),
                "--frame-step",
                "1",
                "--scenes",
                str(scannet_raw / "scannetv2_val.txt"),
            ]
        )
        == 0
    )
    name = (scannet_raw / "scannetv2_val.txt").read_text().split()[0]
    f = scan_files(scannet_raw, name)
    scene = load_scene(out / name)
    lab = read_ply(f["labels"])
    np.testing.assert_allclose(scene.xyz, transform(axis_of(f["txt"]), lab["xyz"]), atol=1e-4)
    np.testing.assert_array_equal(scene.labels, lab["labels"])
    assert scene.instances is not None and scene.instances.min() >= 1
    assert scene.source.startswith("synthetic stand-in") and "ScanNet" in scene.source
    meta = json.loads((out / name / "meta.json").read_text())
    assert len(scene.frames) == meta["sens"]["exported"] == N_FRAMES - len(meta["sens"]["skipped_invalid_pose"])
    fr = scene.frames[0]
    assert fr.color().shape == (968, 1296, 3) and fr.depth().shape == (480, 640)
    floor = scene.labels == 2  # frames carry the alignment: the camera stands above the floor
    assert fr.pose[2, 3] - scene.xyz[floor, 2].mean() > 0.8


def test_prepare_keeps_real_scans_sourced_scannet(tmp_path):
    from geopurify.data.prepare import scannet_source

    txt = tmp_path / "scene0001_00.txt"
    txt.write_text("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\nsceneType = Apartment\n")
    assert scannet_source(txt) == "scannet" and scannet_source(None) == "scannet"
    txt.write_text("sceneType = synthetic stand-in: geopurify procedural room\n")
    assert scannet_source(txt).startswith("synthetic stand-in")


def test_scans_are_deterministic(tmp_path):
    from geopurify.standins.rooms.scannet_raw import write_scannet_scan

    infos = [
        write_scannet_scan(tmp_path / d, seed=s, n_vertices=2000, n_frames=3, name="scene9000_00")
        for d, s in (("a", 5), ("b", 5), ("c", 6))
    ]
    assert infos[0]["n_vertices"] == infos[1]["n_vertices"]
    for p in (tmp_path / "a").iterdir():
        same = p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
        assert same, p.name
    assert (tmp_path / "a" / "scene9000_00.sens").read_bytes() != (tmp_path / "c" / "scene9000_00.sens").read_bytes()


def test_default_scale_is_the_documented_real_scale():
    """The defaults the README documents: ~120k mesh vertices (100-150k) and 300 raw frames with a few lost."""
    from geopurify.standins.rooms import room_layout
    from geopurify.standins.rooms import scannet_raw as S
    from geopurify.standins.rooms.mesh import room_mesh

    assert (S.DEFAULT_VERTICES, S.DEFAULT_FRAMES) == (120_000, 300)
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "120,000" in readme and "300 raw frames" in readme
    room, _ = room_layout(7, image_hw=S.DEPTH_HW)
    m = room_mesh(room, S.DEFAULT_VERTICES)
    assert 100_000 <= m.n_vertices <= 150_000 and 0.02 <= m.spacing <= 0.045
    rng = np.random.default_rng(0)
    poses = S.handheld_trajectory(room, S.DEFAULT_FRAMES, rng)
    lost = S.lost_tracking(S.DEFAULT_FRAMES, rng)
    assert 2 <= len(lost) <= 6
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert step.max() < 0.15  # a smooth walk, not jumps between frames
    cam_z = poses[:, 2, 3]
    assert cam_z.min() > 1.0 and cam_z.max() < room.size[2] - 0.3


def test_cli_rejects_options_of_another_format(tmp_path, capsys):
    assert (
        main(["synth", "--format", "matterport-raw", "--out", str(tmp_path / "a"), "--scenes", "1", "--frames", "10"])
        == 2
    )
    assert "--frames does not apply to --format matterport-raw" in capsys.readouterr().err
    assert (
        main(["synth", "--format", "scannet-raw", "--out", str(tmp_path / "b"), "--scenes", "1", "--height", "100"])
        == 2
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert main(["synth", "--format", "scannet-raw", "--out", str(tmp_path / "c"), "--scenes", "1"]) == 2
    assert "holds no synthetic stand-in data set" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["notes.txt"]


def test_rerun_with_other_parameters_is_refused(scannet_raw, capsys):
    assert (
        main(
            [
                "synth",
                "--format",
                "scannet-raw",
                "--out",
                str(scannet_raw),
                "--scenes",
                "2",
                "--seed",
                "3",
                "--points",
                str(N_VERTS),
                "--frames",
                str(N_FRAMES + 1),
            ]
        )
        == 2
    )
    assert "other parameters" in capsys.readouterr().err


def test_interrupted_run_resumes_keeping_finished_scans(tmp_path, monkeypatch):
    from geopurify.standins.rooms import scannet_raw as S

    real, calls = S.write_scannet_scan, []

    def dies_on_the_second(*args, **kw):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(S, "write_scannet_scan", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        S.synthesize_scannet_raw(tmp_path, 2, seed=1, n_vertices=1500, n_frames=2, progress=False)
    first = tmp_path / "scans" / "scene9000_00" / "scene9000_00.sens"
    stamp = first.stat().st_mtime_ns
    assert not (tmp_path / "scans" / "scene9001_00").exists()
    assert not any((tmp_path / "scans").glob(".geopurify-partial/*"))
    monkeypatch.setattr(S, "write_scannet_scan", real)
    S.synthesize_scannet_raw(tmp_path, 2, seed=1, n_vertices=1500, n_frames=2, progress=False)
    assert first.stat().st_mtime_ns == stamp and (tmp_path / "scans" / "scene9001_00" / "scene9001_00.sens").is_file()


# ------------------------------------------------------------------------------------------- Matterport


def test_matterport_house_layout(matterport_raw):
    from PIL import Image

    from geopurify.data.matterport import read_conf

    house = matterport_raw / "v1" / "scans" / "SYNTH000000"
    views = read_conf(house / "undistorted_camera_parameters" / "SYNTH000000.conf")
    assert len(views) == 18
    assert {v.key.split("_", 1)[1] for v in views} == {f"i{c}_{y}" for c in range(3) for y in range(6)}
    for v in views[:1] + views[-1:]:
        assert Image.open(house / "undistorted_color_images" / v.color).size == (1280, 1024)
        d = Image.open(house / "undistorted_depth_images" / v.depth)
        assert d.size == (1280, 1024) and d.mode.startswith("I")
    ups = [v.pose[2, 2] for v in views if "_i0_" in v.key]  # camera 0 looks up, 2 down (OpenCV z = view)
    downs = [v.pose[2, 2] for v in views if "_i2_" in v.key]
    assert min(ups) > 0.5 and max(downs) < -0.5
    assert (house / "house_segmentations" / "SYNTH000000.ply").is_file()
    assert (matterport_raw / "matterport_train.txt").read_text().split() == ["SYNTH000000"]


def test_matterport_region_depth_and_labels_agree(matterport_raw):
    from geopurify.data.images import read_depth
    from geopurify.data.labels import get_label_set
    from geopurify.data.matterport import read_conf, read_region
    from geopurify.standins.rooms import room_layout, scene_seed
    from geopurify.standins.rooms.matterport_raw import IMAGE_HW
    from geopurify.standins.rooms.mesh import room_mesh

    house = matterport_raw / "v1" / "scans" / "SYNTH000000"
    region = read_region(house / "region_segmentations" / "region0.ply")
    room, _ = room_layout(scene_seed(scene_seed(4, 0), 0), image_hw=IMAGE_HW)
    mesh = room_mesh(room, N_VERTS)
    assert len(region["xyz"]) == mesh.n_vertices
    mp21 = get_label_set("matterport21")
    from_raw = mp21.map(region["labels"], "matterport_raw")
    from_nyu = mp21.map(mesh.labels, "nyu40")
    np.testing.assert_array_equal(from_raw, from_nyu)  # category_id per face -> vertex vote -> same class
    views = read_conf(house / "undistorted_camera_parameters" / "SYNTH000000.conf")
    for v in views[6:12]:  # the level camera
        depth = read_depth(house / "undistorted_depth_images" / v.depth, 4000.0)
        match, behind, n_in = depth_agreement(region["xyz"], v.pose, v.K, depth)
        assert n_in > 100 and match > 0.25 and behind < 0.005


def test_matterport_image_size_scales_the_intrinsics(tmp_path):
    """--height / --width: smaller images (what the recipe test renders), the same houses: each
    camera's intrinsics are the default's scaled to the size, and the depth still meets the mesh."""
    from PIL import Image

    from geopurify.data.images import read_depth
    from geopurify.data.matterport import read_conf, read_region
    from geopurify.standins.rooms import scene_seed
    from geopurify.standins.rooms.matterport_raw import _intrinsics

    out = tmp_path / "mp"
    argv = ["synth", "--format", "matterport-raw", "--out", str(out), "--scenes", "1", "--seed", "4"]
    small = ["--rooms", "1", "--panoramas", "1", "--points", str(N_VERTS), "--height", "256", "--width", "320"]
    assert main(argv + small) == 0
    house = out / "v1" / "scans" / "SYNTH000000"
    views = read_conf(house / "undistorted_camera_parameters" / "SYNTH000000.conf")
    assert len(views) == 18
    default = _intrinsics(np.random.default_rng([scene_seed(4, 0), 4]))  # write_house's draws at 1280 x 1024
    for i, v in enumerate(views):
        np.testing.assert_allclose(v.K, np.diag([0.25, 0.25, 1.0]) @ default[i // 6], rtol=1e-5)
    region = read_region(house / "region_segmentations" / "region0.ply")
    for v in views[6:12]:  # the level camera
        assert Image.open(house / "undistorted_color_images" / v.color).size == (320, 256)
        depth = read_depth(house / "undistorted_depth_images" / v.depth, 4000.0)
        assert depth.shape == (256, 320)
        match, behind, n_in = depth_agreement(region["xyz"], v.pose, v.K, depth)
        assert n_in > 100 and match > 0.25 and behind < 0.005
    assert main(argv + small[:-1] + ["400"]) == 2  # another size is another data set: no mixing on a re-run


def test_prepare_matterport_reads_the_stand_in(matterport_raw, tmp_path):
    from geopurify.data.readers import load_scene

    out = tmp_path / "prepared"
    assert (
        main(
            [
                "prepare",
                "matterport",
                "--root",
                str(matterport_raw / "v1" / "scans"),
                "--out",
                str(out),
                "--houses",
                str(matterport_raw / "matterport_train.txt"),
            ]
        )
        == 0
    )
    scene = load_scene(out / "SYNTH000000_region0")
    assert scene.label_space == "matterport_raw" and scene.source.startswith("synthetic stand-in")
    assert "Matterport3D" in scene.source and len(scene.frames) >= 6
    fr = scene.frames[0]
    assert fr.depth_scale == 4000.0 and fr.depth().shape == (1024, 1280)

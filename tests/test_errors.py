"""docs/errors.md, row by row, through the real command line.

Every bad-input row runs `geopurify -q <command>` (in process, stderr captured; one row also in a
subprocess) and checks: exit code 2, exactly one line on stderr, `error: <the file>: <problem>`,
and no output file (nor a hidden temporary one) left behind. The recoverable rows check that the
run succeeds and that the skipped frames are counted in the lifted file and in the eval report.

Scenes are tiny procedural rooms (the offline stand-in for ScanNet scans, 1500 points, 4 frames
of 64x48), each test corrupting its own copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from support import cli_env

from geopurify.cli import main
from geopurify.config import load_config
from geopurify.data.ply import write_ply
from geopurify.lift.result import LiftResult, load_lifted, save_lifted
from geopurify.standins.rooms import make_room, write_room

REPO = Path(__file__).resolve().parents[1]
N_POINTS, N_FRAMES, HW = 1500, 4, (48, 64)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """One procedural room on disk, configs for it, and a student checkpoint that fits it."""
    d = tmp_path_factory.mktemp("errors")
    room = d / "room"
    write_room(make_room(7, n_points=N_POINTS, n_frames=N_FRAMES, image_hw=HW, name="room"), room)
    cfg = d / "lift.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"frame_step": 1}, "lift": {"image_size": [HW[1], HW[0]]}}))
    return {"dir": d, "room": room, "cfg": cfg}


@pytest.fixture
def scene(base, tmp_path) -> Path:
    """A private copy of the room to corrupt."""
    return Path(shutil.copytree(base["room"], tmp_path / "scene"))


def fails(capsys, argv: list, path: Path | str, problem: str, outputs: list[Path]) -> str:
    """Run the CLI quietly; assert exit 2, one stderr line naming `path` and matching `problem`,
    and that none of `outputs` (nor a temporary sibling of one) exists."""
    rc = main(["-q", *map(str, argv)])
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 2, cap.err
    assert len(lines) == 1, cap.err
    prefix = f"error: {path}: "
    assert lines[0].startswith(prefix), f"{lines[0]!r} does not start with {prefix!r}"
    assert re.search(problem, lines[0][len(prefix) :]), lines[0]
    for out in outputs:
        assert not out.exists(), out
        if out.parent.is_dir():
            assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    return lines[0]


def lift_fails(capsys, base, scene_dir: Path, path, problem: str, *extra) -> str:
    out = scene_dir.parent / "out.lift.pt"
    return fails(
        capsys, ["lift", "--scene", scene_dir, "--out", out, "--config", base["cfg"], *extra], path, problem, [out]
    )


# ------------------------------------------------------------------------------ points


def _mesh_scene(tmp_path, base, **kw) -> tuple[Path, Path]:
    """A scene given as a ScanNet mesh (sceneXXXX_XX_vh_clean_2.ply, no points_xyzrgb.npy)."""
    d = tmp_path / "scene0001_00"
    d.mkdir()
    pts = np.load(base["room"] / "points_xyzrgb.npy")
    ply = d / "scene0001_00_vh_clean_2.ply"
    write_ply(ply, kw.get("xyz", pts[:, :3]), None if kw.get("no_rgb") else pts[:, 3:].astype(np.uint8))
    return d, ply


def test_truncated_ply(capsys, base, tmp_path):
    d, ply = _mesh_scene(tmp_path, base)
    data = ply.read_bytes()
    ply.write_bytes(data[: len(data) // 2])
    lift_fails(capsys, base, d, ply, r"not a readable PLY file .*early end-of-file")


def test_garbled_ply(capsys, base, tmp_path):
    d, ply = _mesh_scene(tmp_path, base)
    ply.write_bytes(ply.read_bytes().replace(b"binary_little_endian", b"binary_middle_endian"))
    lift_fails(capsys, base, d, ply, r"not a readable PLY file")


def test_ply_without_colours(capsys, base, tmp_path):
    d, ply = _mesh_scene(tmp_path, base, no_rgb=True)
    lift_fails(capsys, base, d, ply, r"no red/green/blue colours")


def test_ply_without_coordinates(capsys, base, tmp_path):
    from plyfile import PlyData, PlyElement

    d, ply = _mesh_scene(tmp_path, base)
    v = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(ply))
    lift_fails(capsys, base, d, ply, r"lack coordinate\(s\) z")


def test_nan_points_ply(capsys, base, tmp_path):
    xyz = np.load(base["room"] / "points_xyzrgb.npy")[:, :3].copy()
    xyz[[3, 10], 1] = [np.nan, np.inf]
    d, ply = _mesh_scene(tmp_path, base, xyz=xyz)
    lift_fails(capsys, base, d, ply, r"2 of 1500 points have NaN/inf coordinates")


def test_nan_points_npy(capsys, base, scene):
    f = scene / "points_xyzrgb.npy"
    a = np.load(f)
    a[5, 0] = np.nan
    np.save(f, a)
    lift_fails(capsys, base, scene, f, r"1 of 1500 points have NaN/inf coordinates")


def test_no_points(capsys, base, scene):
    f = scene / "points_xyzrgb.npy"
    np.save(f, np.zeros((0, 6), np.float32))
    lift_fails(capsys, base, scene, f, r"no points")


def test_label_ids_out_of_range(capsys, base, scene):
    f = scene / "labels_nyu40.npy"
    lab = np.load(f)
    lab[:3] = [41, 57, -2]
    np.save(f, lab)
    lift_fails(capsys, base, scene, f, r"3 label ids outside the nyu40 range 0\.\.40")


def test_predictions_out_of_range(capsys, base, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    pred = np.zeros(N_POINTS, np.int64)
    pred[7] = 20  # scannet20 has classes 0..19
    np.save(pred_dir / "room.pred.npy", pred)
    out = tmp_path / "m.json"
    fails(
        capsys,
        ["eval", "--scene", base["room"], "--pred", pred_dir, "--out", out],
        pred_dir / "room.pred.npy",
        r"1 predictions lie outside 0\.\.19",
        [out],
    )


# ------------------------------------------------------------------------------ frames


def _write_all(scene: Path, sub: str, text: str) -> list[Path]:
    files = sorted((scene / sub).iterdir(), key=lambda p: int(p.stem))
    for f in files:
        f.write_text(text)
    return files


def test_nan_poses_everywhere(capsys, base, scene):
    files = _write_all(scene, "pose", "nan nan nan nan\n" * 4)
    lift_fails(capsys, base, scene, files[0], r"NaN/inf .*\(all 4 frames of the scene are unusable\)")


def test_singular_poses_everywhere(capsys, base, scene):
    files = _write_all(scene, "pose", "0 0 0 1\n0 0 0 2\n0 0 0 3\n0 0 0 1\n")
    lift_fails(capsys, base, scene, files[0], r"singular or not a rigid")


def test_intrinsics_of_the_wrong_shape(capsys, base, scene):
    f = scene / "intrinsic" / "intrinsic_color.txt"
    f.write_text("72 0 32\n0 72 24\n")
    lift_fails(capsys, base, scene, f, r"intrinsics must be a 3x3 or 4x4 matrix, got 2x3")


def _shrink_depth(scene: Path) -> Path:
    """Depth images at half the colour size (nearest), as ScanNet's 640x480 next to 1296x968."""
    for f in (scene / "depth").iterdir():
        img = Image.open(f)
        img.resize((HW[1] // 2, HW[0] // 2), Image.NEAREST).save(f)
    return scene / "depth" / "0.png"


def test_depth_of_another_size_without_depth_intrinsics(capsys, base, scene):
    first = _shrink_depth(scene)
    lift_fails(
        capsys,
        base,
        scene,
        first,
        r"depth image is 32x24 but the colour image is 64x48, and there are no "
        r"depth intrinsics",
    )


def test_depth_of_another_size_with_depth_intrinsics_is_normal(capsys, base, scene):
    _shrink_depth(scene)
    k = np.loadtxt(scene / "intrinsic" / "intrinsic_color.txt")
    k[:2, :3] /= 2  # the same camera at half the resolution (pixel-centre convention aside)
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", k)
    out = scene.parent / "ok.lift.pt"
    assert main(["-q", "lift", "--scene", str(scene), "--out", str(out), "--config", str(base["cfg"])]) == 0
    res = load_lifted(out, n_points=N_POINTS)
    assert res.seen.any() and "skipped_frames" not in res.info
    capsys.readouterr()


def test_unreadable_colour_images_everywhere(capsys, base, scene):
    for f in (scene / "color").iterdir():
        f.write_bytes(b"this is not a JPEG")
    lift_fails(capsys, base, scene, scene / "color" / "0.jpg", r"not a readable image .*all 4 frames")


def test_missing_label_images_everywhere(capsys, base, scene):
    for f in (scene / "label").iterdir():
        f.unlink()
    lift_fails(capsys, base, scene, scene / "label" / "0.png", r"label image missing .*all 4 frames")


def test_corrupt_pixels_in_every_frame(capsys, base, scene):
    """Headers intact (the reader accepts the frames), pixel data cut: fails while lifting."""
    for f in (scene / "depth").iterdir():
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    lift_fails(
        capsys,
        base,
        scene,
        scene / "depth" / "0.png",
        r"image file is truncated.*\(all 4 frames of the scene are unusable\)",
    )


def test_a_few_bad_frames_are_skipped_and_counted(capsys, base, scene, tmp_path):
    (scene / "pose" / "1.txt").write_text("-inf -inf -inf -inf\n" * 4)  # ScanNet's lost tracking
    depth = scene / "depth" / "2.png"
    depth.write_bytes(depth.read_bytes()[:200])  # header readable, pixels cut: skipped while lifting
    lifted = tmp_path / "lifted"
    out = lifted / "scene.lift.pt"
    assert main(["lift", "--scene", str(scene), "--out", str(out), "--config", str(base["cfg"])]) == 0
    printed = capsys.readouterr().out
    assert "2 views (frames 0, 3; 0 z-buffered), 2 frames skipped" in printed
    res = load_lifted(out, n_points=N_POINTS)
    assert res.info["skipped_frames"] == 2 and int(res.n_views.max()) <= 2
    assert res.info["frames"] == ["0", "3"] and res.info["z_buffered"] == 0  # the views actually lifted
    report = tmp_path / "m.json"
    assert main(["eval", "--scene", str(scene), "--features", str(lifted), "--out", str(report)]) == 0
    assert "2 unusable frames were skipped" in capsys.readouterr().out
    rep = json.loads(report.read_text())
    assert rep["skipped_frames"] == 2 and rep["scenes"][0]["skipped_frames"] == 2


def test_no_frames_needs_the_simulated_vlm(capsys, base, scene, tmp_path):
    for sub in ("pose", "color", "depth", "label", "intrinsic"):
        shutil.rmtree(scene / sub)
    text = tmp_path / "text"  # a real (non-simulated) backend: external per-view features + prompt embeddings
    text.mkdir()
    torch.save({"prompts": ["a chair", "a table"], "embeddings": torch.eye(2, 8)}, text / "text_embeddings.pt")
    lift_fails(
        capsys,
        base,
        scene,
        scene,
        r"no posed frames; the external .* VLM needs",
        "--vlm",
        "external",
        "--vlm-path",
        text,
    )


# ------------------------------------------------------------------------------ feature files


def _features(tmp_path, n=N_POINTS, dim=384, nan=False) -> Path:
    d = tmp_path / "features"
    d.mkdir()
    feat = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    if nan:
        feat[11, 0] = float("nan")
    res = LiftResult(
        feat,
        torch.ones(n, dtype=torch.bool),
        torch.ones(n, dtype=torch.int64),
        {"vlm": "simulated", "simulated": True, "fusion": "mean", "scene": "room"},
    )
    save_lifted(d / "room.lift.pt", res)
    return d


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("dim", r"features are 16-d but the text embeddings are 384-d"),
        ("count", r"lifted features have 1499 points, the scene has 1500"),
        ("nan", r"1 points have NaN/inf features"),
    ],
)
def test_bad_feature_file(capsys, base, tmp_path, kind, problem):
    d = _features(tmp_path, dim=16 if kind == "dim" else 384, n=N_POINTS - (kind == "count"), nan=kind == "nan")
    out = tmp_path / "m.json"
    fails(capsys, ["eval", "--scene", base["room"], "--features", d, "--out", out], d / "room.lift.pt", problem, [out])


def test_corrupt_feature_file(capsys, base, tmp_path):
    d = _features(tmp_path)
    f = d / "room.lift.pt"
    f.write_bytes(f.read_bytes()[:1000])
    out = tmp_path / "m.json"
    fails(
        capsys,
        ["eval", "--scene", base["room"], "--features", d, "--out", out],
        f,
        r"not a readable lifted feature file",
        [out],
    )


# ------------------------------------------------------------------------------ checkpoints, val


@pytest.fixture
def val_setup(base, tmp_path) -> dict:
    """An experiment directory with a small valid student checkpoint and a val config over the room."""
    from geopurify.student.checkpoint import save_checkpoint
    from geopurify.student.network import build_student

    root = tmp_path / "data"
    root.mkdir()
    os.symlink(base["room"], root / "room")
    (tmp_path / "val.txt").write_text("room\n")
    over = {
        "data": {
            "dataset": "scannet",
            "root": str(root),
            "val_list": str(tmp_path / "val.txt"),
            "frame_step": 1,
            "cache_dir": str(tmp_path / "cache"),
        },
        "lift": {"image_size": [HW[1], HW[0]]},
        "student": {"width": 16, "blocks": 1, "voxel_size": 0.1},
    }
    cfg_path = tmp_path / "val.yaml"
    cfg_path.write_text(yaml.safe_dump(over))
    cfg = load_config(cfg_path)
    exp = tmp_path / "exp"
    ckpt = exp / "model" / "geopurify.pth"

    def write(in_channels=384 + 6, width=16):
        torch.manual_seed(0)
        model = build_student({**cfg["student"], "width": width}, in_channels)
        save_checkpoint(
            ckpt,
            {
                "model": model.state_dict(),
                "epoch": 1,
                "step": 1,
                "config": cfg,
                "in_channels": in_channels,
                "meta": {
                    "teacher": {"name": "geometric", "stand_in": True},
                    "vlm": {"name": "simulated", "simulated": True, "dim": in_channels - 6},
                    "student": dict(cfg["student"]),
                    "epoch": 1,
                },
            },
        )

    write()
    argv = ["val", "--exp_dir", exp, "--config", cfg_path]
    return {
        "exp": exp,
        "ckpt": ckpt,
        "argv": argv,
        "write": write,
        "cfg": cfg_path,
        "list": tmp_path / "val.txt",
        "outputs": [exp / "result"],
    }


def test_corrupt_checkpoint(capsys, val_setup):
    ckpt = val_setup["ckpt"]
    ckpt.write_bytes(ckpt.read_bytes()[:3000])
    fails(capsys, val_setup["argv"], ckpt, r"unreadable checkpoint \(truncated or corrupt\)", val_setup["outputs"])


def test_foreign_checkpoint(capsys, val_setup):
    ckpt = val_setup["ckpt"]
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    fails(capsys, val_setup["argv"], ckpt, r"not a GeoPurify student checkpoint", val_setup["outputs"])


def test_checkpoint_of_another_width(capsys, val_setup):
    """Weights of a width-8 student in a file whose recorded config says width 16."""
    val_setup["write"](width=8)
    fails(
        capsys,
        val_setup["argv"],
        val_setup["ckpt"],
        r"weights do not match the recorded architecture \(preset cpu, width 16, blocks 1, out_dim 128, "
        r"in_channels 390\): \d+ shape mismatches",
        val_setup["outputs"],
    )


def test_checkpoint_trained_on_another_vlm(capsys, val_setup):
    val_setup["write"](in_channels=512 + 6)
    fails(
        capsys,
        val_setup["argv"],
        val_setup["ckpt"],
        r"student was trained on 512-d lifted features .* the configured VLM simulated gives 384-d",
        val_setup["outputs"],
    )


def test_empty_scene_list(capsys, val_setup):
    val_setup["list"].write_text("# nothing here\n\n")
    fails(capsys, val_setup["argv"], val_setup["list"], r"scene list is empty", val_setup["outputs"])


def test_empty_data_root(capsys, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    out = tmp_path / "subset.txt"
    fails(capsys, ["select-subset", "--root", root, "--out", out], root, r"no scene directories", [out])


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "text, problem",
    [
        ("lift:\n  fusoin: mean\n", r"unknown config key 'lift\.fusoin'"),
        ("data:\n  frame_step: two\n", r"config key 'data\.frame_step' must be int, got str 'two'"),
        ("lift: [unclosed\n", r"not valid YAML"),
        (
            'lift:\n  "fu\\nsion": mean\n',
            r"unknown config key 'lift\.fu\\nsion'$",
        ),  # a line break in a key stays escaped
        ("data: null\n", r"config key 'data' must be dict, got null"),
    ],
)
def test_bad_config(capsys, base, tmp_path, text, problem):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "o.lift.pt"
    fails(capsys, ["lift", "--scene", base["room"], "--out", out, "--config", cfg], cfg, problem, [out])


def test_bad_set(capsys, base, tmp_path):
    out = tmp_path / "o.lift.pt"
    argv = ["lift", "--scene", base["room"], "--out", out, "--config", base["cfg"]]
    fails(
        capsys,
        [*argv, "--set", "lift.fusoin=mean"],
        "--set lift.fusoin=mean",
        r"unknown config key 'lift\.fusoin'$",
        [out],
    )
    fails(
        capsys,
        [*argv, "--set=data.frame_step=two"],
        "--set data.frame_step=two",
        r"config key 'data\.frame_step' must be int, got str 'two'$",
        [out],
    )
    fails(capsys, [*argv, "--set", "data.frame_step"], "--set data.frame_step", r"expected KEY=VALUE", [out])


def test_missing_or_cyclic_base_config(capsys, base, tmp_path):
    out = tmp_path / "o.lift.pt"
    child = tmp_path / "child.yaml"
    child.write_text("base: parent.yaml\n")
    argv = ["lift", "--scene", base["room"], "--out", out, "--config", child]
    fails(capsys, argv, child, r"base config 'parent\.yaml' not found \(.*parent\.yaml\)$", [out])
    (tmp_path / "parent.yaml").write_text("base: child.yaml\n")
    fails(
        capsys,
        argv,
        tmp_path / "parent.yaml",
        r"base configs form a cycle: .*child\.yaml -> .*parent\.yaml -> "
        r".*child\.yaml$",
        [out],
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_device_cuda_without_cuda(capsys, base, tmp_path):
    out = tmp_path / "o.lift.pt"
    fails(
        capsys,
        ["lift", "--scene", base["room"], "--out", out, "--config", base["cfg"], "--device", "cuda"],
        "--device",
        r"cuda asked for, but torch sees no CUDA device on this machine",
        [out],
    )


@pytest.mark.parametrize(
    "over, problem",
    [
        ({"lift": {"chunk_points": 0}}, r"config key 'lift\.chunk_points' must be an integer >= 1, got 0"),
        ({"lift": {"occlusion_thr": -0.05}}, r"config key 'lift\.occlusion_thr' must be a number > 0, got -0\.05"),
        (
            {"lift": {"fusion": "consensus", "consensus_topk": 0}},
            r"config key 'lift\.consensus_topk' must be an integer >= 1",
        ),
    ],
)
def test_config_value_out_of_range(capsys, base, tmp_path, over, problem):
    """Ranges are checked where the value is used, which knows the key but not the file."""
    cfg = tmp_path / "range.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"frame_step": 1}, **over}))
    out = tmp_path / "o.lift.pt"
    rc = main(["-q", "lift", "--scene", str(base["room"]), "--out", str(out), "--config", str(cfg)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and re.fullmatch(r"error: " + problem + ".*", err[0]), err
    assert not out.exists()


def test_real_process_prints_one_line(tmp_path):
    """The same contract from a separate `python -m geopurify` process: with -q exactly one line;
    without it, log lines first but the error is the last line and there is no traceback."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("purify:\n  steps: 1.5\n")
    out = tmp_path / "o.lift.pt"
    env = cli_env()
    base_cmd = [sys.executable, "-m", "geopurify"]
    args = ["lift", "--scene", str(tmp_path), "--out", str(out), "--config", str(cfg)]
    want = f"error: {cfg}: config key 'purify.steps' must be int, got float 1.5"
    p = subprocess.run(base_cmd + ["-q"] + args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines() == [want], p.stderr
    p = subprocess.run(base_cmd + args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == want and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()

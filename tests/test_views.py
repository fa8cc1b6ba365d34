"""Which raw frames become views (geopurify.data.frames): every 20th raw frame on ScanNet, whatever
`prepare --frame-step` exported, from a .sens file written field by field (tests/test_prepare.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from geopurify.config import load_config
from geopurify.data import prepare as P
from geopurify.data.readers import load_scene
from geopurify.data.writers import write_frame, write_scene

from test_prepare import small_sens, tiny_scan  # raw-scan fixture writers (mesh, axis, .sens)

REPO = Path(__file__).resolve().parents[1]
N_RAW, BAD = 61, 40  # raw frames 0..60 in the .sens; frame 40 lost tracking (-inf pose)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    scan = tiny_scan(root, "scene0011_00", n=60, with_sens=False)[0]
    small_sens(scan / "scene0011_00.sens", n=N_RAW, bad_pose_at=BAD)
    return root


def views(scene) -> list[str]:
    return [f.name for f in scene.frames]


def test_readme_prepare_and_config_give_every_20th_raw_frame(raw, tmp_path):
    """What the README runs: `prepare scannet --frame-step 20`, then config/geopurify_scannet.yaml
    (data.frame_step 20). Before, the config's step applied to the exported files again: every
    400th raw frame (here only frame 0)."""
    from geopurify.cli import main

    out = tmp_path / "scannet"
    assert main(["prepare", "scannet", "--root", str(raw), "--out", str(out), "--frame-step", "20"]) == 0
    step = load_config(REPO / "config" / "geopurify_scannet.yaml")["data"]["frame_step"]
    assert step == 20
    scene = load_scene(out / "scene0011_00", frame_step=step)
    assert views(scene) == ["0", "20", "60"]  # raw ids 0, 20, 40, 60 minus the lost frame 40
    assert scene.meta["sens"]["frame_step"] == 20 and scene.meta["sens"]["skipped_invalid_pose"] == [BAD]


@pytest.mark.parametrize("export", [1, 10])
def test_any_export_step_dividing_the_config_step_gives_the_same_views(raw, tmp_path, export, caplog):
    out = tmp_path / "scannet"
    P.prepare_scannet(raw, out, frame_step=export, progress=False)
    scene = load_scene(out / "scene0011_00", frame_step=20)
    assert views(scene) == ["0", "20", "60"]
    assert scene.meta["n_pose_files"] == len(range(0, N_RAW, export)) - 1  # -inf frames are not exported
    assert "not a multiple" not in caplog.text
    all_exported = load_scene(out / "scene0011_00", frame_step=export)
    assert views(all_exported) == [str(i) for i in range(0, N_RAW, export) if i != BAD]


def test_export_step_not_dividing_the_config_step_warns(raw, tmp_path, caplog):
    out = tmp_path / "scannet"
    P.prepare_scannet(raw, out, frame_step=30, progress=False)
    with caplog.at_level(logging.WARNING, logger="geopurify.data.frames"):
        scene = load_scene(out / "scene0011_00", frame_step=20)
    assert views(scene) == ["0", "60"]  # only multiples of lcm(30, 20) = 60 exist
    assert "exported every 30 raw frames, and data.frame_step 20 is not a multiple of 30" in caplog.text
    assert "every 60-th raw frame" in caplog.text and "prepare --frame-step 10" in caplog.text


def test_invalid_poses_are_counted_not_views(raw, tmp_path):
    """A SensReader export keeps lost-tracking frames as -inf pose files: not views, counted as skipped."""
    out = tmp_path / "scannet"
    P.prepare_scannet(raw, out, frame_step=20, progress=False)
    scene_dir = out / "scene0011_00"
    (scene_dir / "pose" / f"{BAD}.txt").write_text("-inf -inf -inf -inf\n" * 4)
    (scene_dir / "color" / f"{BAD}.jpg").write_bytes((scene_dir / "color" / "20.jpg").read_bytes())
    (scene_dir / "depth" / f"{BAD}.png").write_bytes((scene_dir / "depth" / "20.png").read_bytes())
    scene = load_scene(scene_dir, frame_step=20)
    assert views(scene) == ["0", "20", "60"]
    assert scene.meta["skipped_frames"] == 1 and "NaN/inf" in scene.meta["skip_reasons"][0]


def test_select_views_rule():
    from geopurify.data import frames as FR

    ids = [str(i) for i in range(0, 100, 5)]
    assert FR.select_views(ids, 20) == ["0", "20", "40", "60", "80"]
    assert FR.select_views(ids, 1) == ids
    assert FR.select_views(["0", "7", "14", "21"], 14) == ["0", "14"]
    # not raw ids (Matterport image names): every k-th in the given (natural) order
    mp = ["a_i0_0", "a_i0_1", "a_i0_2", "a_i1_0", "b_i0_0"]
    assert FR.select_views(mp, 2) == ["a_i0_0", "a_i0_2", "b_i0_0"]
    assert FR.select_views(["0", "1", "x2"], 2) == ["0", "x2"]  # one non-numeric key: no raw ids
    assert FR.export_step(["0", "20", "60"]) == 20 and FR.export_step(["0"]) is None
    assert FR.export_step(["0", "3"], {"sens": {"frame_step": 1}}) == 1  # the recorded step wins
    with pytest.raises(ValueError):
        FR.select_views(ids, 0)


def test_matterport_style_keys_take_every_kth(tmp_path):
    d = tmp_path / "house_region0"
    rng = np.random.default_rng(0)
    write_scene(d, rng.random((50, 3)), rng.integers(0, 256, (50, 3)))
    K = np.array([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]])
    keys = [f"{p}_i{c}_{y}" for p in ("0b2", "7fe") for c in (0, 1) for y in (0, 1)]
    for k in keys:
        write_frame(d, k, np.eye(4), K, color=rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert views(load_scene(d, frame_step=3)) == keys[::3]

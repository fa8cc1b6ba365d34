"""Long runs survive a kill: real SIGKILL part-way through multi-scene commands, then a re-run
that skips what was finished and ends with outputs identical to an uninterrupted run.

- `geopurify lift` over three procedural rooms (offline stand-ins for ScanNet scans), killed once
  the first room's features exist: the re-run lifts only the rest; every file is byte-identical
  to an uninterrupted run's.
- `geopurify synth`, killed once the first room exists: same, for every file of every room.
- `geopurify train`, killed once the first epoch checkpoint exists: `--resume` continues from
  last.pth and ends with bit-identical weights.
- `geopurify val`: scenes whose predictions were written (with a matching record) are reused.
- atomic writes: a temporary file left by a killed process is removed on the next write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from support import cli_env

from geopurify.cli import main
from geopurify.standins.rooms import make_room, write_room

REPO = Path(__file__).resolve().parents[1]
ENV = cli_env()


def kill_when(argv: list, ready, timeout: float = 180.0) -> None:
    """Start `python -m geopurify *argv`, SIGKILL it as soon as `ready()` is true; fail if it ends first."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(
            [sys.executable, "-m", "geopurify", "-q", *map(str, argv)],
            env=ENV,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        t0 = time.monotonic()
        try:
            while not ready():
                if proc.poll() is not None:
                    err.seek(0)
                    pytest.fail(
                        f"the run ended (rc {proc.returncode}) before it could be killed: "
                        f"{err.read().decode(errors='replace')[-2000:]}"
                    )
                if time.monotonic() - t0 > timeout:
                    pytest.fail("the run never reached the kill point")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def visible_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def hidden(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*")]


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> dict:
    """Three procedural rooms and a lift config that takes about a second per room."""
    d = tmp_path_factory.mktemp("resume")
    paths = []
    for i in range(3):
        p = d / "rooms" / f"room{i}"
        write_room(make_room(100 + i, n_points=20000, n_frames=12, image_hw=(120, 160), name=p.name), p)
        paths.append(p)
    cfg = d / "lift.yaml"
    cfg.write_text(
        yaml.safe_dump({"data": {"frame_step": 1}, "lift": {"image_size": [320, 240], "fusion": "consensus"}})
    )
    return {"dir": d, "paths": paths, "cfg": cfg}


def test_lift_killed_then_resumed(rooms, capsys):
    d, paths, cfg = rooms["dir"], rooms["paths"], rooms["cfg"]
    scenes = sum((["--scene", str(p)] for p in paths), [])
    ref, run = d / "lift_ref", d / "lift_run"
    assert main(["-q", "lift", *scenes, "--out", str(ref), "--config", str(cfg)]) == 0

    names = [f"{p.name}.lift.pt" for p in paths]
    kill_when(["lift", *scenes, "--out", run, "--config", cfg], lambda: (run / names[0]).exists())
    assert (run / names[0]).exists() and not (run / names[2]).exists()  # killed part-way
    first = (run / names[0]).stat().st_mtime_ns

    capsys.readouterr()
    assert main(["-q", "lift", *scenes, "--out", str(run), "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert names[0].split(".")[0] not in printed  # the finished room was skipped, not lifted again
    assert (run / names[0]).stat().st_mtime_ns == first
    assert visible_files(run) == visible_files(ref) and sorted(visible_files(run)) == names
    assert hidden(run) == []


def test_synth_killed_then_resumed(tmp_path):
    args = ["--scenes", 3, "--seed", 5, "--points", 20000, "--frames", 8, "--height", 120, "--width", 160]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["-q", "synth", "--out", str(ref), *map(str, args)]) == 0
    kill_when(["synth", "--out", run, *args], lambda: (run / "synth_0000").exists())
    assert not (run / "synth_0002").exists()
    assert main(["-q", "synth", "--out", str(run), *map(str, args)]) == 0
    assert visible_files(run) == visible_files(ref)
    assert hidden(run) == []  # the killed room's partial directory is gone


@pytest.fixture(scope="module")
def train_cfg(rooms) -> Path:
    d = rooms["dir"]
    over = {
        "data": {
            "dataset": "synthetic",
            "root": str(d / "train_rooms"),
            "frame_step": 1,
            "cache_dir": str(d / "train_cache"),
        },
        "synthetic": {"n_train": 2, "n_val": 1, "seed": 1, "points": 3000, "frames": 4},
        "lift": {"image_size": [160, 120]},
        "student": {"width": 16, "blocks": 1, "voxel_size": 0.1},
        "distill": {"epochs": 12, "warmup_epochs": 1, "seed": 2, "max_anchors": 512},
    }
    p = d / "train.yaml"
    p.write_text(yaml.safe_dump(over))
    return p


@pytest.fixture(scope="module")
def train_ref(rooms, train_cfg) -> Path:
    """An uninterrupted training run (in process)."""
    ref = rooms["dir"] / "train_ref"
    assert main(["-q", "train", "--exp_dir", str(ref), "--config", str(train_cfg), "--device", "cpu"]) == 0
    return ref


def test_train_killed_then_resumed(rooms, train_cfg, train_ref):
    from geopurify.student.checkpoint import load_checkpoint

    ref, run = train_ref, rooms["dir"] / "train_run"
    final = Path("model") / "geopurify.pth"
    kill_when(
        ["train", "--exp_dir", run, "--config", train_cfg, "--device", "cpu"],
        lambda: (run / "model" / "epoch_001.pth").exists(),
    )
    assert not (run / final).exists()
    done = load_checkpoint(run / "model" / "last.pth")["epoch"]
    assert 1 <= done < 12
    assert main(["-q", "train", "--exp_dir", str(run), "--config", str(train_cfg), "--device", "cpu", "--resume"]) == 0
    a, b = load_checkpoint(ref / final), load_checkpoint(run / final)
    assert a["epoch"] == b["epoch"] == 12 and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert hidden(run / "model") == []


def test_val_reuses_finished_scenes(train_cfg, train_ref, tmp_path):
    """A val run cut short after its first scene: the re-run reuses that scene's predictions
    (same checkpoint, settings and scene) and reports what an uninterrupted run reports."""
    import json
    import shutil

    cfg = yaml.safe_load(train_cfg.read_text())
    cfg["synthetic"]["n_val"] = 2  # rooms 2 and 3 of the same data set
    cfg_path = tmp_path / "val.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    ref = train_ref
    runs = {}
    for name in ("a", "b"):
        exp = tmp_path / name
        shutil.copytree(ref / "model", exp / "model")
        runs[name] = exp
    argv = lambda exp: ["-q", "val", "--exp_dir", str(exp), "--config", str(cfg_path)]  # noqa: E731
    assert main(argv(runs["a"])) == 0
    assert main(argv(runs["b"])) == 0
    out_b = runs["b"] / "result" / "geopurify" / "val"
    scenes = json.loads((out_b / "metrics.json").read_text())["scenes"]
    assert len(scenes) == 2
    # as if killed while predicting the second scene: its files and the reports are not there yet
    for p in (out_b / "pred").glob(f"{scenes[1]}.*"):
        p.unlink()
    (out_b / "metrics.json").unlink()
    (out_b / "per_class.txt").unlink()
    assert main(argv(runs["b"])) == 0
    out_a = runs["a"] / "result" / "geopurify" / "val"
    ra = json.loads((out_a / "metrics.json").read_text())
    rb = json.loads((out_b / "metrics.json").read_text())
    run_a, run_b = (json.loads((out / "run.json").read_text()) for out in (out_a, out_b))
    assert run_b["reused_scenes"] == 1 and run_a["reused_scenes"] == 0
    for key in ("metrics", "per_scene", "skipped_frames", "scenes"):
        assert ra[key] == rb[key], key
    assert visible_files(out_a / "pred") == visible_files(out_b / "pred")
    # a record from another checkpoint is not reused
    with torch.no_grad():
        ck = torch.load(runs["b"] / "model" / "geopurify.pth", weights_only=True)
        k = next(k for k, v in ck["model"].items() if v.is_floating_point())
        ck["model"][k] += 1.0
        torch.save(ck, runs["b"] / "model" / "geopurify.pth")
    assert main(argv(runs["b"])) == 0
    assert json.loads((out_b / "run.json").read_text())["reused_scenes"] == 0


def test_temporary_file_of_a_killed_writer_is_removed(tmp_path):
    from geopurify.io import _HOST, write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.json.tmp-{_HOST}-{dead.pid}-abcd1234.json"
    live = tmp_path / f".out.json.tmp-{_HOST}-{os.getppid()}-abcd1234.json"  # our parent is alive
    other_host = tmp_path / f".out.json.tmp-elsewhere-{dead.pid}-abcd1234.json"
    for p in (stale, live, other_host):
        p.write_text("partial")
    write_text(tmp_path / "out.json", "{}\n")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert (tmp_path / "out.json").read_text() == "{}\n"

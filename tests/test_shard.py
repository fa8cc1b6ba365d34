"""Sharded evaluation: `torchrun --nproc_per_node 2 -m geopurify val` (gloo on the CPU) writes the
metrics.json a single process writes, byte for byte; a rank killed with SIGKILL part-way, then a
re-run, gives the same file again. Four tiny procedural rooms (offline stand-ins for ScanNet scans),
the simulated VLM (a stand-in) and a student trained one epoch keep it cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import cli_env

from geopurify.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = cli_env()
RESULT = Path("result") / "geopurify" / "val"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A config over 1 training and 4 validation rooms, a student trained 1 epoch on it, and the files
    of a single process's val run (`ref`: relative path -> bytes), its result directory then removed
    so the same experiment directory (the checkpoint path is in metrics.json) serves the next run."""
    d = tmp_path_factory.mktemp("shard")
    over = {
        "data": {"dataset": "synthetic", "root": str(d / "rooms"), "frame_step": 1, "cache_dir": str(d / "cache")},
        "synthetic": {"n_train": 1, "n_val": 4, "seed": 3, "points": 3000, "frames": 4},
        "lift": {"image_size": [160, 120]},
        "student": {"width": 16, "blocks": 1, "voxel_size": 0.1},
        "distill": {"epochs": 1, "warmup_epochs": 0, "seed": 2, "max_anchors": 256},
    }
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(over))
    exp = d / "ref"
    assert main(["-q", "train", "--exp_dir", str(exp), "--config", str(cfg), "--device", "cpu"]) == 0
    assert main(["-q", "val", "--exp_dir", str(exp), "--config", str(cfg), "--device", "cpu"]) == 0
    ref = files(exp / RESULT)
    shutil.rmtree(exp / "result")
    return {"dir": d, "cfg": cfg, "exp": exp, "ref": ref}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def exp(trained):
    """The trained experiment directory without results; left so for the next test."""
    yield trained["exp"]
    shutil.rmtree(trained["exp"] / "result", ignore_errors=True)


def torchrun(*argv, nproc: int = 2, log_dir: Path | None = None, launch: list[str] | None = None) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m geopurify -q *argv`, started; with `log_dir`,
    without -q and each rank's output in its own file there (`rank_log`); `launch`: torchrun's
    options instead of --standalone --nproc_per_node."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += launch if launch is not None else ["--standalone", f"--nproc_per_node={nproc}"]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir), "--redirects", "3"]
    cmd += ["-m", "geopurify", *([] if log_dir is not None else ["-q"]), *map(str, argv)]
    err = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    proc.err = err
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.err.seek(0)
    print(proc.err.read().decode(errors="replace")[-3000:])  # shown when a test fails
    return rc


def rank_log(log_dir: Path, rank: int) -> str:
    """What rank `rank` wrote to stderr (torchrun --log-dir: <dir>/<run>/attempt_0/<rank>/stderr.log)."""
    (path,) = log_dir.glob(f"*/attempt_0/{rank}/stderr.log")
    return path.read_text()


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def wait_gone(pids: list[int], timeout: float = 30) -> bool:
    """True once none of `pids` runs (zombies count as gone), False after `timeout` s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        alive = []
        for p in pids:
            try:
                alive += [p] if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" else []
            except (OSError, IndexError):
                pass
        if not alive:
            return True
        time.sleep(0.1)
    for p in pids:  # do not leave them behind
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return False


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of `parent` whose RANK is `rank` (None while not started)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_two_ranks_write_the_single_process_metrics(trained, exp):
    assert finish(torchrun("val", "--exp_dir", exp, "--config", trained["cfg"], "--device", "cpu")) == 0
    ref, out = trained["ref"], files(exp / RESULT)
    assert out["metrics.json"] == ref["metrics.json"]
    assert out["per_class.txt"] == ref["per_class.txt"]
    preds = [n for n in ref if n.startswith("pred/")]
    assert len(preds) == 4 * 4  # per room: 3 methods' predictions and the record
    assert {n: out[n] for n in preds} == {n: ref[n] for n in preds}
    run, single = json.loads(out["run.json"]), json.loads(ref["run.json"])
    assert run["world"] == 2 and [r["scenes"] for r in run["per_rank"]] == [2, 2]  # the rooms split, not repeated
    assert single["world"] == 1 and [r["scenes"] for r in single["per_rank"]] == [4]
    assert sorted(out) == sorted(ref)


@pytest.mark.slow
def test_rank_killed_then_rerun_gives_the_same_metrics(trained, exp):
    out = exp / RESULT
    names = [f"synth_{i:04d}" for i in range(1, 5)]  # the 4 val rooms, after the training room
    proc = torchrun("val", "--exp_dir", exp, "--config", trained["cfg"], "--device", "cpu")
    t0 = time.monotonic()
    try:
        while not (out / "pred" / f"{names[1]}.done.json").exists():  # rank 1's first scene (rank r: r, r + 2)
            assert proc.poll() is None, "the run ended before a rank could be killed"
            assert time.monotonic() - t0 < 240, "rank 1 never finished a scene"
            time.sleep(0.005)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        loaders = children(victim)  # its DataLoader worker (eval.workers 1)
        os.kill(victim, signal.SIGKILL)
    finally:
        rc = finish(proc)
    assert loaders and wait_gone(loaders), "the killed rank's loader worker outlived it"
    assert rc != 0  # torchrun reports the lost rank (and ends the other)
    assert not (out / "metrics.json").exists()  # killed part-way: nothing merged
    assert not (out / "pred" / f"{names[3]}.done.json").exists()
    assert finish(torchrun("val", "--exp_dir", exp, "--config", trained["cfg"], "--device", "cpu")) == 0
    assert (out / "metrics.json").read_bytes() == trained["ref"]["metrics.json"]
    assert json.loads((out / "run.json").read_text())["reused_scenes"] >= 1
    assert [p.name for p in (out / "pred").glob(".*")] == []  # no temporary file left behind


def test_two_ranks_lift_the_single_process_files(trained, tmp_path):
    """`lift` sharded: each rank lifts its own scenes into the shared output directory; every file
    is the one a single process writes, byte for byte."""
    rooms = sorted(p for p in (trained["dir"] / "rooms").iterdir() if p.name != "synth_0000")[:3]
    assert len(rooms) == 3
    argv = ["lift", *[a for r in rooms for a in ("--scene", str(r))], "--vlm", "simulated"]
    argv += ["--config", str(trained["cfg"]), "--device", "cpu"]
    assert main(["-q", *argv, "--out", str(tmp_path / "one")]) == 0
    assert finish(torchrun(*argv, "--out", tmp_path / "two", log_dir=tmp_path / "logs")) == 0
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(one) == [f"{r.name}.lift.pt" for r in rooms] and two == one
    lifted = [{r.name for r in rooms if f"lifting {r.name}:" in rank_log(tmp_path / "logs", k)} for k in (0, 1)]
    assert lifted == [{rooms[0].name, rooms[2].name}, {rooms[1].name}]  # strided over the ranks, none twice


def test_two_ranks_eval_writes_the_single_process_report(tmp_path):
    """`eval` sharded the same way: the counts of both ranks' scenes summed in scene order."""
    from geopurify.data.writers import write_scene

    rng = np.random.default_rng(0)
    pred, scenes = tmp_path / "pred", []
    pred.mkdir()
    for i in range(3):
        write_scene(
            tmp_path / f"s{i}",
            rng.uniform(0, 1, (60, 3)),
            np.full((60, 3), 128, np.uint8),
            labels=rng.integers(0, 40, 60).astype(np.int32),
        )
        np.save(pred / f"s{i}.pred.npy", rng.integers(-1, 20, 60))
        scenes += ["--scene", str(tmp_path / f"s{i}")]
    argv = ["eval", *scenes, "--pred", str(pred), "--label-set", "scannet20", "--device", "cpu"]
    assert main(["-q", *argv, "--out", str(tmp_path / "one.json")]) == 0
    assert finish(torchrun(*argv, "--out", tmp_path / "two.json", log_dir=tmp_path / "logs")) == 0
    one = (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.json").read_bytes() == one
    assert [sc["name"] for sc in json.loads(one)["scenes"]] == ["s0", "s1", "s2"]
    scored = [{n for n in ("s0", "s1", "s2") if f"{n}: mIoU" in rank_log(tmp_path / "logs", r)} for r in (0, 1)]
    assert scored == [{"s0", "s2"}, {"s1"}]  # split over the ranks, not scored twice


def test_two_ranks_prepare_the_single_process_scenes(tmp_path):
    """`prepare scannet` sharded: each rank stages its own scans, rank 0 writes the split lists; every
    file is the one a single process writes."""
    from test_prepare import tiny_scan

    raw = tmp_path / "dl" / "scans"
    for i, name in enumerate(["scene0011_00", "scene0000_00", "scene0007_00"]):
        tiny_scan(raw, name, seed=i)
    argv = ["prepare", "scannet", "--root", str(raw), "--frame-step", "1"]
    assert main(["-q", *argv, "--out", str(tmp_path / "one")]) == 0
    assert finish(torchrun(*argv, "--out", tmp_path / "two", log_dir=tmp_path / "logs")) == 0
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert "scannetv2_val.txt" in one and len([n for n in one if n.endswith("points_xyzrgb.npy")]) == 3
    assert two == one
    done = [
        {
            n
            for n in ("scene0000_00", "scene0007_00", "scene0011_00")
            if f"prepared {n}" in rank_log(tmp_path / "logs", r)
        }
        for r in (0, 1)
    ]
    assert done == [{"scene0000_00", "scene0011_00"}, {"scene0007_00"}]  # sorted scans, strided


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_prepare_the_single_process_scenes(tmp_path):
    """The README's multi-node launch, both "machines" on this one: two torchrun launchers with
    --nnodes 2 --node_rank 0 / 1 --master_addr --master_port, one process each, on one file system;
    every file is the one a single process writes."""
    from test_prepare import tiny_scan

    raw = tmp_path / "dl" / "scans"
    for i, name in enumerate(["scene0011_00", "scene0000_00", "scene0007_00"]):
        tiny_scan(raw, name, seed=i)
    argv = ["prepare", "scannet", "--root", str(raw), "--frame-step", "1"]
    assert main(["-q", *argv, "--out", str(tmp_path / "one")]) == 0
    where = ["--nnodes", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--nproc_per_node", "1"]
    out = ["--out", tmp_path / "two"]
    nodes = [torchrun(*argv, *out, launch=[*where, "--node_rank", str(node)]) for node in (0, 1)]
    assert [finish(p) for p in nodes] == [0, 0]
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_two_ranks_prepare_matterport_the_single_process_houses(tmp_path):
    """`prepare matterport` sharded by house (each house's view sampling seeded on its own): every
    file is the one a single process writes. Two tiny synthetic houses (offline stand-ins)."""
    mp = tmp_path / "mp"
    small = ["--rooms", "1", "--panoramas", "1", "--points", "3000", "--height", "128", "--width", "160"]
    assert main(["-q", "synth", "--format", "matterport-raw", "--out", str(mp), "--scenes", "2", *small]) == 0
    argv = ["prepare", "matterport", "--root", str(mp / "v1" / "scans")]
    assert main(["-q", *argv, "--out", str(tmp_path / "one")]) == 0
    assert finish(torchrun(*argv, "--out", tmp_path / "two", log_dir=tmp_path / "logs")) == 0
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len([n for n in one if n.endswith("points_xyzrgb.npy")]) >= 2
    assert two == one
    houses = [
        {h for h in ("SYNTH000000", "SYNTH000001") if f"prepared {h} " in rank_log(tmp_path / "logs", r)}
        for r in (0, 1)
    ]
    assert houses == [{"SYNTH000000"}, {"SYNTH000001"}]  # one house per rank, none twice


def test_a_rank_exits_without_interpreter_shutdown():
    """`python -m geopurify` ends a torchrun rank (WORLD_SIZE > 1) by os._exit once its command is
    done, output flushed: interpreter shutdown (atexit handlers, C++ destructors) never runs there,
    where it once aborted finished ranks. A single process exits normally."""
    code = (
        "import atexit; from geopurify.cli import exit_process; "
        "atexit.register(lambda: print(' shutdown ran', end='')); print('done', end=''); exit_process(3)"
    )
    for world, out in (("2", "done"), ("1", "done shutdown ran")):
        run = subprocess.run(
            [sys.executable, "-c", code], env={**ENV, "WORLD_SIZE": world}, capture_output=True, text=True
        )
        assert (run.returncode, run.stdout) == (3, out), run.stderr[-2000:]

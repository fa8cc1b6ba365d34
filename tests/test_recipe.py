"""The README's real-data recipes, run verbatim on synthetic stand-in downloads (issue 9).

The commands are read from README.md, between `<!-- recipe:scannet -->` (`matterport`) and
`<!-- /recipe -->`, and run one by one with `sh` in a directory laid out like the user's checkout
(`run/` and `config/` of this repository; `data/...` and `out/...` stay the README's literal
relative paths). Only two things change, as the README's rehearsal paragraph says: the path
variables at the top (the download becomes `geopurify synth --format scannet-raw / matterport-raw`
output; the 2D-feature, prompt-embedding and Sonata paths point at files that do not exist, so the
test also shows that the stand-ins never read them), and the train / val lines get the stand-in
overrides `STAND_INS` (simulated VLM, geometric teacher, CPU student, 2 epochs).

`GEOPURIFY_TEST_DEVICE=cuda` (or cpu, cuda:N) adds `--device=<it>` to the train and val lines; a CUDA
device that torch does not see skips the tests. Every stage's wall time is printed (`pytest -s`).

Everything is driven through the CLI, the run scripts and plain file reads; only `geopurify.data.sens`
is imported, to read the raw `.sens` poses that decide which frames are views.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import cli_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
STAND_INS = [
    "--set=lift.vlm=simulated",
    "--set=teacher.name=geometric",
    "--set=student.preset=cpu",
    "--set=distill.epochs=2",
]
DEVICE = os.environ.get("GEOPURIFY_TEST_DEVICE", "").strip()


# ------------------------------------------------------------------------------ the README's text
def recipe_block(name: str, text: str | None = None) -> str:
    """The shell text of the README's recipe `name`."""
    text = README.read_text() if text is None else text
    m = re.search(rf"<!-- recipe:{name} -->\s*```sh\n(.*?)```\s*<!-- /recipe -->", text, re.S)
    assert m, f"README.md has no <!-- recipe:{name} --> ... <!-- /recipe --> block"
    return m.group(1)


def logical_lines(block: str) -> list[str]:
    """The block's commands, backslash-continued lines joined as sh joins them, comments and blank
    lines dropped."""
    out, cur = [], ""
    for line in block.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1]
            continue
        out.append(" ".join((cur + line).split()))
        cur = ""
    assert not cur, "the block ends inside a continued line"
    return out


_ASSIGN = re.compile(r"([A-Z_]+)=(\S+)(\s+#.*)?")


def split_recipe(block: str) -> tuple[dict[str, str], list[str]]:
    """(variable -> value, commands): the path lines at the top and the commands after them."""
    variables, commands = {}, []
    for line in logical_lines(block):
        m = _ASSIGN.fullmatch(line)
        if m and not commands:
            variables[m.group(1)] = m.group(2)
        else:
            assert not m, f"a variable set after the first command: {line}"
            commands.append(line)
    return variables, commands


def stand_in_commands(block: str, paths: dict[str, Path]) -> list[tuple[str, str]]:
    """(stage name, sh script) per README command: the variables set to `paths` (the same names, or
    the test fails: the README changed its paths), the stand-in overrides (and --device) appended to
    the train and val lines; nothing else changes."""
    variables, commands = split_recipe(block)
    assert set(variables) == set(paths), f"the README's path variables {sorted(variables)} != {sorted(paths)}"
    setup = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in paths.items())
    extra = STAND_INS + ([f"--device={DEVICE}"] if DEVICE else [])
    out = []
    for cmd in commands:
        stage = " ".join(cmd.split()[:2])
        if cmd.startswith(("sh run/train.sh", "sh run/val.sh")):
            cmd = cmd + " " + " ".join(extra)
        out.append((stage, setup + cmd))
    return out


# ------------------------------------------------------------------------------ running it
def need_device() -> None:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"GEOPURIFY_TEST_DEVICE={DEVICE} but torch sees no CUDA device")


def user_checkout(tmp: Path) -> tuple[Path, dict]:
    """A working directory like the user's checkout (run/ and config/ of this repository) and the
    environment the commands run in: `geopurify` and `python3` on PATH are this interpreter, as in
    an activated virtual environment."""
    work = tmp / "checkout"
    work.mkdir()
    for part in ("run", "config"):
        (work / part).symlink_to(REPO / part, target_is_directory=True)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, cmd in (
        ("geopurify", f"{shlex.quote(sys.executable)} -m geopurify"),
        ("python3", shlex.quote(sys.executable)),
    ):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {cmd} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = cli_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return work, env


def run_stage(stage: str, script: str, cwd: Path, env: dict, times: dict) -> str:
    t = time.perf_counter()
    res = subprocess.run(["sh", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    times[stage] = round(time.perf_counter() - t, 1)
    assert res.returncode == 0, (
        f"{stage} failed (rc {res.returncode}):\n{script}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res.stdout + res.stderr


def synth(args: list[str], out: Path, env: dict, times: dict) -> None:
    run_stage(
        "synth (the stand-in download)",
        " ".join(["geopurify", "synth", *args, "--out", shlex.quote(str(out))]),
        out.parent,
        env,
        times,
    )


def run_recipe(name: str, paths: dict[str, Path], work: Path, env: dict, times: dict) -> None:
    stages = stand_in_commands(recipe_block(name), paths)
    kinds = [s for s, _ in stages]
    assert kinds == ["geopurify prepare", "geopurify select-subset", "sh run/train.sh", "sh run/val.sh"], kinds
    assert stages[0][1].split("\n")[-1].startswith(f"geopurify prepare {name} ")
    for stage, script in stages:
        run_stage(stage, script, work, env, times)
    print(f"\n{name} recipe, seconds per stage (device {DEVICE or 'auto'}): {json.dumps(times)}")


def absent(tmp: Path) -> dict[str, Path]:
    """The 2D-feature, prompt and Sonata paths: nothing is there; the stand-ins must not need them."""
    return {
        "FEATURES": tmp / "absent" / "features",
        "TEXT": tmp / "absent" / "text.pt",
        "SONATA": tmp / "absent" / "sonata.pth",
    }


def names(path: Path) -> list[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [n for n in lines if n]


def lifted(exp: Path, scene: str) -> dict:
    """The one lifted-feature cache file of `scene` in the experiment."""
    files = sorted((exp / "cache" / "lift").glob(f"{scene}.*.lift.pt"))
    assert len(files) == 1, f"{scene}: expected one lifted file, found {[f.name for f in files]}"
    return torch.load(files[0], map_location="cpu", weights_only=False)


def check_common(exp: Path, data: Path, lifted_scenes: list[str], source_word: str) -> dict:
    """What both recipes must show; returns metrics.json."""
    lift_dir = exp / "cache" / "lift"
    assert sorted(p.name.split(".")[0] for p in lift_dir.glob("*.lift.pt")) == sorted(lifted_scenes)
    for scene in lifted_scenes:
        d = lifted(exp, scene)
        assert d["z_buffered"] == 0, f"{scene}: {d['z_buffered']} views fell back to a z-buffer (real depth unused)"
        assert d["simulated"] is True
        assert ran_on_asked_device(d["device"]), d["device"]
    metrics = json.loads((exp / "result" / "geopurify" / "val" / "metrics.json").read_text())
    assert metrics["vlm_simulated"] is True
    assert ran_on_asked_device(metrics["device"]), metrics["device"]
    assert sorted(metrics["scenes"]) == sorted(names(data / metrics_val_list(data)))
    for scene in [p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")]:
        meta = json.loads((data / scene / "meta.json").read_text())
        assert meta["normals"] == "mesh", scene
        assert (data / scene / "normals.npy").is_file()
        assert meta["source"].startswith("synthetic stand-in") and source_word in meta["source"], meta["source"]
    return metrics


def ran_on_asked_device(recorded: str) -> bool:
    """The device a stage recorded is GEOPURIFY_TEST_DEVICE's (`cuda` = the first GPU, `cuda:0`), or
    any when the variable is unset (auto)."""
    if not DEVICE:
        return True
    asked, got = torch.device(DEVICE), torch.device(recorded)
    return asked.type == got.type and (asked.index is None or asked.index == got.index)


def metrics_val_list(data: Path) -> str:
    return "scannetv2_val.txt" if data.name == "scannet" else "matterport_test.txt"


# ------------------------------------------------------------------------------ ScanNet
@pytest.mark.slow
def test_scannet_recipe_verbatim(tmp_path):
    """README's ScanNet recipe on 3 scannet-raw scans (60 raw frames each; seed 2 puts a lost-tracking
    pose on raw frame 40 of the second scan): views = the multiples of 20 whose .sens pose is finite,
    real depth (no z-buffer), mesh normals, scannet19 scored with scannet20 beside it."""
    from geopurify.data.sens import iter_sens_frames, read_sens_header

    need_device()
    times: dict[str, float] = {}
    work, env = user_checkout(tmp_path)
    download = tmp_path / "download"
    synth(
        ["--format", "scannet-raw", "--scenes", "3", "--seed", "2", "--points", "8000", "--frames", "60"],
        download,
        env,
        times,
    )
    run_recipe("scannet", {"SCANS": download / "scans", **absent(tmp_path)}, work, env, times)

    data, exp = work / "data" / "scannet", work / "out" / "scannet"
    scans = sorted(p.name for p in (download / "scans").iterdir())
    assert len(scans) == 3
    # prepare wrote the download's split lists into data/scannet; select-subset chose from train
    train, val = names(data / "scannetv2_train.txt"), names(data / "scannetv2_val.txt")
    assert train == names(download / "scannetv2_train.txt") and val == names(download / "scannetv2_val.txt")
    assert sorted(train + val) == scans
    subset = names(data / "subset_20.txt")
    assert subset and set(subset) <= set(train)

    invalid_views = 0
    for scene in subset + val:
        header = read_sens_header(download / "scans" / scene / f"{scene}.sens")
        assert header.n_frames == 60
        finite = {f.index: bool(np.isfinite(f.camera_to_world).all()) for f in iter_sens_frames(header)}
        expect = [i for i in range(0, header.n_frames, 20) if finite[i]]
        invalid_views += sum(not finite[i] for i in range(0, header.n_frames, 20))
        assert lifted(exp, scene)["frames"] == [str(i) for i in expect], scene
    assert invalid_views > 0, "no lost-tracking pose on a multiple of 20 in the lifted scans: the test lost its teeth"

    metrics = check_common(exp, data, subset + val, "ScanNet")
    assert metrics["class_setting"].startswith("scannet19 ")
    assert list(metrics["also"]) == ["scannet20"]
    assert metrics["also"]["scannet20"]["class_setting"].startswith("scannet20 ")


# ------------------------------------------------------------------------------ Matterport3D
def conf_images(house: Path) -> list[str]:
    """Colour-image stems the house's .conf lists (`scan <depth> <color> <16 numbers>` lines)."""
    conf = next(house.rglob("undistorted_camera_parameters/*.conf"))
    return [ln.split()[2].rsplit(".", 1)[0] for ln in conf.read_text().splitlines() if ln.startswith("scan ")]


def natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


@pytest.mark.slow
def test_matterport_recipe_verbatim(tmp_path):
    """README's Matterport3D recipe on 3 matterport-raw houses (one region each, 640 x 512 images):
    every view of a region is lifted (frame_step 1), from the house's own images, with real depth,
    mesh normals, scored as matterport21."""
    need_device()
    times: dict[str, float] = {}
    work, env = user_checkout(tmp_path)
    download = tmp_path / "download"
    synth(
        [
            "--format",
            "matterport-raw",
            "--scenes",
            "3",
            "--seed",
            "0",
            "--rooms",
            "1",
            "--panoramas",
            "1",
            "--points",
            "6000",
            "--height",  # the config's lift.image_size, a quarter of the 1280 x 1024 default: cheaper to render
            "512",
            "--width",
            "640",
        ],
        download,
        env,
        times,
    )
    run_recipe("matterport", {"MATTERPORT": download / "v1" / "scans", **absent(tmp_path)}, work, env, times)

    data, exp = work / "data" / "matterport", work / "out" / "matterport"
    houses = {s: names(download / f"matterport_{s}.txt") for s in ("train", "val", "test")}
    for split, hs in houses.items():  # the regions of the download's split houses
        assert names(data / f"matterport_{split}.txt") == [f"{h}_region0" for h in hs]
    subset = names(data / "subset_20.txt")
    assert subset and set(subset) <= set(names(data / "matterport_train.txt"))
    test = names(data / "matterport_test.txt")

    for scene in subset + test:
        keys = sorted((p.stem for p in (data / scene / "pose").glob("*.txt")), key=natural)
        house = scene.rsplit("_region", 1)[0]
        assert keys and set(keys) <= set(conf_images(download / "v1" / "scans" / house))
        assert lifted(exp, scene)["frames"] == keys, scene

    metrics = check_common(exp, data, subset + test, "Matterport3D")
    assert metrics["class_setting"].startswith("matterport21 ")
    assert metrics["also"] == {}


# ------------------------------------------------------------------------------ the text itself
@pytest.mark.parametrize(
    "name, config", [("scannet", "geopurify_scannet.yaml"), ("matterport", "geopurify_matterport.yaml")]
)
def test_config_header_shows_the_readme_recipe(name, config):
    """The paper config's header comment shows the README's recipe, command for command, and the
    train / val lines keep the seed's interface."""
    _, commands = split_recipe(recipe_block(name))
    header = []
    for line in (REPO / "config" / config).read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            header.append(line[4:])
    assert "\n".join(header) == recipe_block(name).rstrip("\n")  # line for line, comments included
    exp = f"--exp_dir=out/{name} --config=config/{config}"
    assert commands[2].startswith(f"sh run/train.sh {exp} ")
    assert commands[3].startswith(f"sh run/val.sh {exp} --ckpt_name=geopurify.pth ")


def test_stand_in_commands_change_only_paths_and_overrides():
    """The rewriting the recipe tests apply: variable values and the appended overrides, nothing else."""
    block = (
        'A=/x/y   # the scans\nB=/z\n# 1. step\ngeopurify prepare scannet --root "$A" \\\n    --out data/s\n'
        'sh run/train.sh --exp_dir=out/s --config=c.yaml \\\n    --set=t.ckpt="$B"\n'
    )
    out = stand_in_commands(block, {"A": Path("/t/scans"), "B": Path("/t/none")})
    assert [s for s, _ in out] == ["geopurify prepare", "sh run/train.sh"]
    assert out[0][1] == 'A=/t/scans\nB=/t/none\ngeopurify prepare scannet --root "$A" --out data/s'
    assert out[1][1].endswith('--set=t.ckpt="$B" ' + " ".join(STAND_INS + ([f"--device={DEVICE}"] if DEVICE else [])))
    with pytest.raises(AssertionError, match="path variables"):
        stand_in_commands(block, {"A": Path("/t")})

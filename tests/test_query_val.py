"""The user-facing inference commands on a freshly trained student (procedural rooms, stand-ins):
`sh run/val.sh` (the seed's interface) writes predictions, metrics and the per-class table, and
`geopurify query` gives a per-point relevance map whose values rank the points of the prompted
class above the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from geopurify.data.labels import get_label_set
from geopurify.data.ply import read_ply
from geopurify.data.readers import load_scene

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qv")
    cfg = {
        "data": {"dataset": "synthetic", "root": str(tmp / "rooms"), "frame_step": 1},
        "synthetic": {"n_train": 1, "n_val": 1, "points": 12000, "frames": 8},
        "distill": {"epochs": 5},
        "eval": {"also_label_sets": ["scannet19"]},
    }
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    exp = tmp / "exp"
    # --set passes through run/train.sh in both spellings, values with brackets and spaces intact,
    # and wins over the config file (distill.epochs 5 -> 2)
    r = subprocess.run(
        [
            "sh",
            str(REPO / "run" / "train.sh"),
            f"--exp_dir={exp}",
            f"--config={cfg_path}",
            "--set=lift.image_size=[160, 120]",
            "--set",
            "distill.epochs=2",
            "--set=lift.prompt_template=a {} in a scene",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exp / "model" / "geopurify.pth").is_file()
    from geopurify.student.checkpoint import load_checkpoint

    ckpt = load_checkpoint(exp / "model" / "geopurify.pth")
    assert ckpt["config"]["lift"]["image_size"] == [160, 120] and ckpt["epoch"] == 2
    assert ckpt["config"]["lift"]["prompt_template"] == "a {} in a scene"
    assert ckpt["meta"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto
    cfg["lift"] = {"image_size": [160, 120]}  # what val and query read: the same settings as training
    cfg_path.write_text(yaml.safe_dump(cfg))
    return tmp, cfg_path, exp


def test_val_sh_writes_predictions_metrics_and_table(trained):
    tmp, cfg_path, exp = trained
    r = subprocess.run(
        ["sh", str(REPO / "run" / "val.sh"), f"--exp_dir={exp}", f"--config={cfg_path}", "--ckpt_name=geopurify.pth"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = exp / "result" / "geopurify" / "val"
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]) == {"raw", "knn_mean", "purified"}
    for m in report["metrics"].values():
        assert 0 <= m["mIoU"] <= 100
    assert "SIMULATED" in report["vlm"]
    scene = load_scene(tmp / "rooms" / "synth_0001")
    pred = np.load(out / "pred" / "synth_0001.purified.npy")
    assert pred.shape == (scene.n_points,) and pred.min() >= 0 and pred.max() < 20
    assert "purified" in r.stdout and (out / "per_class.txt").is_file()
    # every table names its class setting; the other one is scored beside the primary one
    assert "class setting scannet20 (" in r.stdout and "also: class setting scannet19 (" in r.stdout
    assert report["class_setting"].startswith("scannet20 (") and "55.1" in report["also"]["scannet19"]["class_setting"]
    pred19 = np.load(out / "pred" / "synth_0001.purified.scannet19.npy")
    assert pred19.shape == (scene.n_points,) and pred19.max() < 19
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto


def test_val_sh_passes_set_through(trained, tmp_path):
    """`--set=K=V` and `--set K=V` reach `geopurify val` intact (spaces, brackets) through run/val.sh."""
    import shutil

    tmp, cfg_path, trained_exp = trained
    exp = tmp_path / "exp"  # a fresh result directory: nothing to reuse, so the scene is lifted again
    shutil.copytree(trained_exp / "model", exp / "model")
    cache = tmp_path / "my cache"
    r = subprocess.run(
        [
            "sh",
            str(REPO / "run" / "val.sh"),
            f"--exp_dir={exp}",
            f"--config={cfg_path}",
            f"--set=data.cache_dir={cache}",
            "--set",
            "eval.exclude_from_f=[wall, floor]",
            "--device=cpu",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((cache / "lift").glob("synth_0001.*.lift.pt"))  # the cache went where --set said
    report = json.loads((exp / "result" / "geopurify" / "val" / "metrics.json").read_text())
    assert report["metrics"]["purified"]["excluded_from_f"] == ["wall", "floor"] and report["device"] == "cpu"
    r = subprocess.run(
        ["sh", str(REPO / "run" / "val.sh"), f"--exp_dir={exp}", f"--config={cfg_path}", "--set=purify.stepz=3"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: --set purify.stepz=3: unknown config key 'purify.stepz'"
    )


def test_query_relevance_ranks_the_prompted_class_first(trained):
    tmp, cfg_path, exp = trained
    scene_dir = tmp / "rooms" / "synth_0001"
    out = tmp / "q_floor"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geopurify",
            "query",
            "--scene",
            str(scene_dir),
            "--ckpt",
            str(exp / "model" / "geopurify.pth"),
            "--text",
            "a floor in a scene",
            "--out",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ply = read_ply(out.with_suffix(".ply"))
    assert out.with_suffix(".png").is_file()
    scene = load_scene(scene_dir)
    rel = np.asarray(ply["relevance"], dtype=np.float64)
    assert rel.shape == (scene.n_points,)
    gt = get_label_set("scannet20").map(scene.labels)
    floor = gt == get_label_set("scannet20").index("floor")
    assert floor.any() and (~floor).any()
    # the floor prompt is more relevant on floor points than elsewhere (AUC-style check)
    assert rel[floor].mean() > rel[~floor].mean() + 0.05
    # the same values as the viewer's prompt path (one function for both commands)
    from geopurify.purify.query import load_session, prompt_relevance

    session, loaded = load_session(scene_dir, ckpt=exp / "model" / "geopurify.pth", cache_dir=tmp / "cache")
    want = prompt_relevance(session, loaded.vlm.encode_text(["a floor in a scene"])[0])
    np.testing.assert_allclose(rel, want, rtol=1e-6, atol=1e-7)
    # the picture: the prompt as its title above the render, the heat ramp as a colour bar below
    from PIL import Image

    from geopurify.viz.render import heat_colors

    png = np.asarray(Image.open(out.with_suffix(".png")).convert("RGB"))
    ramp = heat_colors(np.linspace(0, 1, png.shape[1] - 16))
    assert any((png[y, 9:-9] == ramp[1:-1]).all() for y in range(png.shape[0] // 2, png.shape[0]))
    assert (png[:20] != 255).any()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_lift_val_query_train_on_cuda(trained, tmp_path):
    """`--device cuda` on every command: lift, val, query and train run and agree with the CPU."""
    import shutil

    from geopurify.lift.result import load_lifted

    tmp, cfg_path, exp = trained
    scene_dir = tmp / "rooms" / "synth_0001"

    def run(*argv, script=None):
        cmd = ["sh", str(REPO / "run" / script)] if script else [sys.executable, "-m", "geopurify"]
        r = subprocess.run([*cmd, *map(str, argv)], env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    lifted = {}
    for dev in ("cpu", "cuda"):
        run("lift", "--scene", scene_dir, "--config", cfg_path, "--device", dev, "--out", tmp_path / f"{dev}.lift.pt")
        lifted[dev] = load_lifted(tmp_path / f"{dev}.lift.pt")
    assert lifted["cuda"].info["device"] == "cuda:0" and lifted["cpu"].info["device"] == "cpu"
    assert torch.equal(lifted["cuda"].seen, lifted["cpu"].seen)
    assert (lifted["cuda"].feat - lifted["cpu"].feat).abs().max() < 1e-2

    gpu_exp = tmp_path / "exp"  # a fresh result directory: val would reuse the CPU run's predictions
    shutil.copytree(exp / "model", gpu_exp / "model")
    run(f"--exp_dir={gpu_exp}", f"--config={cfg_path}", "--device=cuda", script="val.sh")
    preds = {}
    for name, e in (("cpu", exp), ("cuda", gpu_exp)):
        out = e / "result" / "geopurify" / "val"
        preds[name] = {m: np.load(out / "pred" / f"synth_0001.{m}.npy") for m in ("raw", "knn_mean", "purified")}
    report = json.loads((gpu_exp / "result" / "geopurify" / "val" / "metrics.json").read_text())
    run_facts = json.loads((gpu_exp / "result" / "geopurify" / "val" / "run.json").read_text())
    assert report["device"] == "cuda:0" and run_facts["reused_scenes"] == 0
    for m in ("raw", "knn_mean", "purified"):
        assert (preds["cuda"][m] == preds["cpu"][m]).mean() > 0.98, m

    r = run(
        "query",
        "--scene",
        scene_dir,
        "--ckpt",
        exp / "model" / "geopurify.pth",
        "--text",
        "a floor in a scene",
        "--device",
        "cuda",
        "--out",
        tmp_path / "q",
    )
    assert "computed on cuda:0" in r.stdout
    rel = np.asarray(read_ply(tmp_path / "q.ply")["relevance"], dtype=np.float64)
    gt = get_label_set("scannet20").map(load_scene(scene_dir).labels)
    floor = gt == get_label_set("scannet20").index("floor")
    assert rel[floor].mean() > rel[~floor].mean() + 0.05

    run(
        f"--exp_dir={tmp_path / 'train'}",
        f"--config={cfg_path}",
        "--device=cuda",
        "--set=distill.epochs=1",
        script="train.sh",
    )
    from geopurify.student.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "train" / "model" / "geopurify.pth")["meta"]["device"] == "cuda:0"

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
import yaml

from geopurify.data.labels import get_label_set
from geopurify.data.ply import read_ply
from geopurify.data.readers import load_scene

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qv")
    cfg = {"data": {"dataset": "synthetic", "root": str(tmp / "rooms"), "frame_step": 1},
           "synthetic": {"n_train": 1, "n_val": 1, "points": 12000, "frames": 8},
           "lift": {"image_size": [160, 120]},
           "distill": {"epochs": 2}}
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    exp = tmp / "exp"
    r = subprocess.run(["sh", str(REPO / "run" / "train.sh"), f"--exp_dir={exp}", f"--config={cfg_path}"],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exp / "model" / "geopurify.pth").is_file()
    return tmp, cfg_path, exp


def test_val_sh_writes_predictions_metrics_and_table(trained):
    tmp, cfg_path, exp = trained
    r = subprocess.run(["sh", str(REPO / "run" / "val.sh"), f"--exp_dir={exp}", f"--config={cfg_path}",
                        "--ckpt_name=geopurify.pth"], env=ENV, capture_output=True, text=True, timeout=600)
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


def test_query_relevance_ranks_the_prompted_class_first(trained):
    tmp, cfg_path, exp = trained
    scene_dir = tmp / "rooms" / "synth_0001"
    out = tmp / "q_floor"
    r = subprocess.run([sys.executable, "-m", "geopurify", "query", "--scene", str(scene_dir),
                        "--ckpt", str(exp / "model" / "geopurify.pth"), "--text", "a floor in a scene",
                        "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO)
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

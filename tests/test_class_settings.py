"""Class settings: the ScanNet config leads with scannet19 (the reference's evaluation, the setting
of the paper's 55.1) and scores scannet20 beside it from the same lifted features and pooling; every
report and printed table names its setting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.cli import main
from geopurify.config import load_config
from geopurify.data.labels import describe_setting, get_label_set
from geopurify.data.readers import load_scene_for
from geopurify.data.splits import resolve_scenes
from geopurify.evaluate.split import class_settings, evaluate_scenes, prompt_columns
from geopurify.lift.cache import cached_lift
from geopurify.lift.result import save_lifted
from geopurify.ops.scores import classify_by_text
from geopurify.purify.infer import knn_mean_scene
from geopurify.vlm import build_vlm, text_embeddings

REPO = Path(__file__).resolve().parents[1]


def test_scannet_config_leads_with_the_reference_setting():
    cfg = load_config(REPO / "config" / "geopurify_scannet.yaml")
    assert [s.name for s in class_settings(cfg)] == ["scannet19", "scannet20"]
    assert "55.1" in describe_setting("scannet19") and "otherfurniture ignored" in describe_setting("scannet19")
    assert "not the setting" in describe_setting("scannet20")
    for name in ("geopurify_synthetic", "geopurify_matterport", "geopurify_scannet200"):
        assert len(class_settings(load_config(REPO / "config" / f"{name}.yaml"))) == 1


def test_prompt_columns_share_the_common_prompts():
    s19, s20 = get_label_set("scannet19"), get_label_set("scannet20")
    prompts, cols = prompt_columns([s19, s20], "a {} in a scene")
    assert len(prompts) == 20 and cols["scannet19"] == list(range(19)) and cols["scannet20"] == list(range(20))
    assert prompts[19] == "a other in a scene"  # OpenScene's prompt for otherfurniture


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("settings")
    cfg = load_config(
        None,
        {
            "data": {
                "dataset": "synthetic",
                "root": str(tmp / "rooms"),
                "frame_step": 1,
                "label_set": "scannet19",
                "cache_dir": str(tmp / "cache"),
            },
            "synthetic": {"n_train": 1, "n_val": 1, "points": 6000, "frames": 6},
            "lift": {"image_size": [160, 120]},
            "purify": {"k": 16, "steps": 4},
            "eval": {"also_label_sets": ["scannet20"]},
        },
    )
    return tmp, cfg, resolve_scenes(cfg, "val")


def test_evaluate_scores_both_settings_from_the_same_features(room):
    tmp, cfg, scenes = room
    report = evaluate_scenes(cfg, scenes, None, tmp / "eval", tmp / "cache", methods=("raw", "knn_mean"))
    assert report["label_set"] == "scannet19" and report["class_setting"] == describe_setting("scannet19")
    assert list(report["also"]) == ["scannet20"]
    also = report["also"]["scannet20"]
    assert also["class_setting"] == describe_setting("scannet20")
    assert [r["name"] for r in also["metrics"]["raw"]["per_class"]][-1] == "otherfurniture"
    assert len(report["metrics"]["raw"]["per_class"]) == 19
    # each setting's labels are exactly the argmax over its own prompts, on the same lifted features
    vlm = build_vlm(cfg)
    scene = load_scene_for(scenes[0], get_label_set("scannet19"), frame_step=1)
    lifted = cached_lift(scene, cfg, vlm, tmp / "cache")
    pred = tmp / "eval" / "pred"
    for name, suffix in (("scannet19", ""), ("scannet20", ".scannet20")):
        text = text_embeddings(vlm, get_label_set(name))
        raw = np.load(pred / f"{scene.name}.raw{suffix}.npy")
        np.testing.assert_array_equal(raw, classify_by_text(lifted.feat, text).numpy())
        knn = np.load(pred / f"{scene.name}.knn_mean{suffix}.npy")
        np.testing.assert_array_equal(knn, knn_mean_scene(scene, lifted, text, cfg).labels)
    assert np.load(pred / f"{scene.name}.raw.npy").max() < 19
    saved = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert saved["class_setting"].startswith("scannet19 (") and "scannet20" in saved["also"]
    run = json.loads((tmp / "eval" / "run.json").read_text())  # the facts of this run, apart from the scores
    assert "timing" not in saved  # run-dependent: metrics.json stays identical across runs
    stages = run["timing"]["per_scene"][scene.name]  # seconds per stage of each predicted scene
    assert {"load", "lift", "raw/scores", "knn_mean/voxelise", "knn_mean/knn", "knn_mean/pool"} <= set(stages)
    assert run["timing"]["total"]["lift"] == round(stages["lift"], 3)
    assert saved["precision"] == {"tf32": False, "student_precision": "fp32"}  # the CPU: never reduced
    text = (tmp / "eval" / "per_class.txt").read_text()
    assert "[raw] scannet19 (" in text and "[knn_mean] scannet20 (" in text
    again = evaluate_scenes(cfg, scenes, None, tmp / "eval", tmp / "cache", methods=("raw", "knn_mean"))
    assert again["reused_scenes"] == 1 and again["also"]["scannet20"]["metrics"] == also["metrics"]
    assert again["timing"]["per_scene"] == {}  # reused predictions are not timed


def test_eval_cli_names_each_setting(room, capsys):
    tmp, cfg, scenes = room
    vlm = build_vlm(cfg)
    scene = load_scene_for(scenes[0], get_label_set("scannet19"), frame_step=1)
    feats = tmp / "features"
    lifted = cached_lift(scene, cfg, vlm, tmp / "cache")
    save_lifted(
        feats / f"{scene.name}.lift.pt",
        lifted,
        {"vlm": vlm.name, "simulated": True, "fusion": "mean", "scene": scene.name},
    )
    cfg_path = tmp / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp / "m.json"
    assert (
        main(
            ["eval", "--scene", str(scenes[0]), "--features", str(feats), "--config", str(cfg_path), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"class setting {describe_setting('scannet19')}" in printed
    assert f"also: class setting {describe_setting('scannet20')}" in printed
    rep = json.loads(out.read_text())
    assert (
        rep["class_setting"] == describe_setting("scannet19")
        and rep["also"]["scannet20"]["classes"][-1] == "otherfurniture"
    )
    assert np.array(rep["also"]["scannet20"]["confusion"]).shape == (20, 21)
    # predictions are indices of one set: only that one is scored, and it is named
    pred_dir = tmp / "eval" / "pred"
    assert (
        main(
            [
                "eval",
                "--scene",
                str(scenes[0]),
                "--pred",
                str(pred_dir),
                "--pred-suffix",
                ".raw.npy",
                "--config",
                str(cfg_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "need features" in printed and f"class setting {describe_setting('scannet19')}" in printed
    rep2 = json.loads(out.read_text())
    assert rep2["also"] == {} and rep2["metrics"]["mIoU"] == pytest.approx(rep["metrics"]["mIoU"])
    assert torch.equal(torch.tensor(rep2["confusion"]), torch.tensor(rep["confusion"]))

"""Confusion matrix and mIoU / mAcc / f-metrics against hand counts and a plain-loop definition."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.evaluate.metrics import IGNORE, confusion, format_table, metrics

NAMES = ["wall", "floor", "chair", "table"]
# 11 points; the last two are ignored in the ground truth; "table" never occurs in the ground truth
GT = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, IGNORE, IGNORE])
PRED = np.array([0, 0, 0, 2, 1, 0, 2, 3, 2, 0, 3])


def test_hand_computed_example():
    conf = confusion(PRED, GT, 4)
    assert conf.dtype == np.int64
    assert conf.tolist() == [
        [3, 0, 1, 0, 0],  # last column: no prediction (none here)
        [1, 1, 0, 0, 0],
        [0, 0, 2, 1, 0],
        [0, 0, 0, 0, 0],
    ]
    m = metrics(conf, NAMES)
    # wall 3/(4+4-3), floor 1/(2+1-1), chair 2/(3+3-2); table absent -> left out of the means
    assert m["mIoU"] == pytest.approx(100 * (3 / 5 + 1 / 2 + 1 / 2) / 3)
    assert m["mAcc"] == pytest.approx(100 * (3 / 4 + 1 / 2 + 2 / 3) / 3)
    # f-metrics: wall and floor excluded (ceiling not a class here), table absent -> chair only
    assert m["f_mIoU"] == pytest.approx(50.0)
    assert m["f_mAcc"] == pytest.approx(100 * 2 / 3)
    assert m["absent_classes"] == ["table"]
    assert m["excluded_from_f"] == ["wall", "floor"]
    assert m["n_points"] == 9
    table = {r["name"]: r for r in m["per_class"]}
    assert table["table"]["iou"] is None and table["table"]["acc"] is None
    assert table["table"]["pred_points"] == 1 and table["table"]["gt_points"] == 0
    assert table["wall"]["iou"] == pytest.approx(0.6) and table["wall"]["acc"] == pytest.approx(0.75)
    assert table["chair"]["gt_points"] == 3 and table["chair"]["pred_points"] == 3
    json.dumps(m, allow_nan=False)  # JSON-clean: no NaN anywhere


def _loop_metrics(pred, gt, n):
    """The definition, one point and one class at a time; a labelled point predicted -1 is a false
    negative of its class (column n of the matrix)."""
    conf = [[0] * (n + 1) for _ in range(n)]
    for p, g in zip(pred.tolist(), gt.tolist()):
        if g != IGNORE:
            conf[g][n if p == IGNORE else p] += 1
    ious, accs = [], []
    for c in range(n):
        tp = conf[c][c]
        fn = sum(conf[c]) - tp
        fp = sum(conf[r][c] for r in range(n)) - tp
        if tp + fn == 0:
            continue
        ious.append(tp / (tp + fp + fn))
        accs.append(tp / (tp + fn))
    return conf, 100 * sum(ious) / len(ious), 100 * sum(accs) / len(accs)


def test_equals_plain_loop_on_random_labels():
    rng = np.random.default_rng(3)
    n = 7
    gt = rng.integers(-1, n - 1, size=5000)  # class n-1 never in the ground truth, -1 = ignore
    pred = np.where(rng.random(5000) < 0.6, gt, rng.integers(0, n, size=5000))
    pred[pred == IGNORE] = 0
    pred[rng.random(5000) < 0.05] = IGNORE  # some abstentions: errors, not dropped
    conf_loop, miou, macc = _loop_metrics(pred, gt, n)
    conf = confusion(torch.from_numpy(pred), torch.from_numpy(gt), n)  # torch input too
    assert conf.tolist() == conf_loop
    m = metrics(conf, [f"c{i}" for i in range(n)], exclude=())
    assert m["mIoU"] == pytest.approx(miou) and m["mAcc"] == pytest.approx(macc)
    assert m["f_mIoU"] == pytest.approx(miou)
    assert m["absent_classes"] == [f"c{n - 1}"]


def test_accumulates_over_scenes():
    rng = np.random.default_rng(0)
    a_gt, b_gt = rng.integers(-1, 5, 3000), rng.integers(-1, 5, 2000)
    a_pr, b_pr = rng.integers(0, 5, 3000), rng.integers(0, 5, 2000)
    total = confusion(a_pr, a_gt, 5) + confusion(b_pr, b_gt, 5)
    joint = confusion(np.concatenate([a_pr, b_pr]), np.concatenate([a_gt, b_gt]), 5)
    np.testing.assert_array_equal(total, joint)


def test_perfect_prediction_and_abstention():
    gt = np.array([0, 1, 2, 2, IGNORE])
    m = metrics(confusion(gt.copy(), gt, 3), ["a", "b", "c"])
    assert m["mIoU"] == 100.0 and m["mAcc"] == 100.0 and m["unpredicted_points"] == 0


def test_abstention_is_a_false_negative_and_can_only_lower_the_score():
    """A labelled point predicted -1 counts against its true class (FN), never for any class
    (the old code dropped it, which turned this 2-of-3 class into a perfect one)."""
    gt = np.array([0, 1, 2, 2, 2, IGNORE])
    pred = np.array([0, 1, 2, 2, IGNORE, 1])
    conf = confusion(pred, gt, 3)
    np.testing.assert_array_equal(conf, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 1]])
    m = metrics(conf, ["a", "b", "c"])
    c = m["per_class"][2]
    assert c["iou"] == pytest.approx(2 / 3) and c["acc"] == pytest.approx(2 / 3)
    assert c["gt_points"] == 3 and c["pred_points"] == 2 and c["unpredicted_points"] == 1
    assert m["per_class"][1]["iou"] == 1.0  # the abstention is no false positive of anything
    assert m["unpredicted_points"] == 1 and m["n_points"] == 5
    assert m["mIoU"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    # replacing the abstention by the right class can only raise the score
    assert metrics(confusion(np.where(pred == IGNORE, 2, pred), gt, 3), ["a", "b", "c"])["mIoU"] > m["mIoU"]
    assert "no prediction" in format_table(m)
    # a plain (C, C) matrix is still accepted
    assert metrics(conf[:, :3], ["a", "b", "c"])["per_class"][2]["iou"] == 1.0


def test_bad_ids_and_shapes_raise():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion(np.array([0, -2]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="ground truth ids"):
        confusion(np.array([0, 1]), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="points"):
        confusion(np.array([0, 1, 2]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion(np.array([0.5, 1.0]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="names"):
        metrics(np.eye(3, dtype=np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="C \\+ 1"):
        metrics(np.zeros((3, 5), np.int64), ["a", "b", "c"])


def test_no_class_present_gives_null_means():
    m = metrics(np.zeros((2, 2), np.int64), ["wall", "chair"])
    assert m["mIoU"] is None and m["f_mAcc"] is None
    assert m["absent_classes"] == ["wall", "chair"]


def test_format_table_lists_every_class_and_the_means():
    m = metrics(confusion(PRED, GT, 4), NAMES)
    text = format_table(m, title="toy")
    lines = text.splitlines()
    assert lines[0] == "toy"
    for name in NAMES:
        assert any(line.startswith(name) for line in lines)
    assert "absent from ground truth" in next(line for line in lines if line.startswith("table"))
    assert f"mIoU {m['mIoU']:5.1f}" in text and f"f-mAcc {m['f_mAcc']:5.1f}" in text
    assert math.isclose(float(next(l for l in lines if l.startswith("wall")).split()[1]), 60.0)


def test_classify_by_text_equals_dense_cosine_argmax():
    from geopurify.ops.scores import classify_by_text

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1000, 16, generator=g) * torch.rand(1000, 1, generator=g) * 5
    text = torch.randn(6, 16, generator=g) * torch.tensor([0.1, 1, 3, 10, 0.5, 2])[:, None]
    cos = torch.nn.functional.normalize(feat, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    expect = cos.argmax(1)
    got = classify_by_text(feat.half(), text, chunk=97)  # float16 features as stored on disk
    assert got.dtype == torch.int64
    # float16 storage may flip near-ties only
    assert (got == expect).float().mean() > 0.99
    np.testing.assert_array_equal(classify_by_text(feat, text, chunk=97).numpy(), expect.numpy())
    with pytest.raises(ValueError, match="same C"):
        classify_by_text(feat, text[:, :8])


# ---- `geopurify eval` on the real ScanNet scenes ----------------------------------------------
SCANNET = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet"
needs_scannet = pytest.mark.skipif(not (SCANNET / "scene0000_00").exists(), reason="shared ScanNet data not present")


def _scannet_gt(name):
    from geopurify.data.labels import get_label_set

    return get_label_set("scannet20").map(np.load(SCANNET / name / "labels_nyu40.npy"))


@needs_scannet
def test_eval_cli_predictions_sum_over_scenes(tmp_path, capsys):
    from geopurify.cli import main
    from geopurify.data.labels import get_label_set

    rng = np.random.default_rng(0)
    names = ["scene0000_00", "scene0000_01"]
    preds, gts = [], []
    for name in names:
        gt = _scannet_gt(name)
        pred = np.where(gt >= 0, gt, 0)
        flip = rng.random(gt.size) < 0.2 * (1 + names.index(name))  # the scenes differ in quality
        pred[flip] = rng.integers(0, 20, int(flip.sum()))
        np.save(tmp_path / f"{name}.pred.npy", pred.astype(np.int16))
        preds.append(pred)
        gts.append(gt)
    out = tmp_path / "m.json"
    rc = main(
        [
            "eval",
            *sum((["--scene", str(SCANNET / n)] for n in names), []),
            "--pred",
            str(tmp_path),
            "--label-set",
            "scannet20",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    expect = metrics(confusion(np.concatenate(preds), np.concatenate(gts), 20), get_label_set("scannet20").names)
    assert report["confusion"] == confusion(np.concatenate(preds), np.concatenate(gts), 20).tolist()
    assert report["metrics"]["mIoU"] == pytest.approx(expect["mIoU"])
    assert report["metrics"]["f_mAcc"] == pytest.approx(expect["f_mAcc"])
    assert [s["name"] for s in report["scenes"]] == names
    assert report["scenes"][0]["mIoU"] > report["scenes"][1]["mIoU"]  # fewer flips in the first scene
    assert report["scenes"][0]["labelled_points"] == int((gts[0] >= 0).sum())
    assert report["label_set"] == "scannet20" and report["source"]["kind"] == "predictions"
    assert "mIoU" in capsys.readouterr().out

    # a prediction id outside the label set: one-line error naming the file, exit code 2
    bad = preds[0].copy()
    bad[5] = 20
    np.save(tmp_path / "scene0000_00.pred.npy", bad)
    rc = main(["eval", "--scene", str(SCANNET / names[0]), "--pred", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "scene0000_00.pred.npy" in err and "outside 0..19" in err
    assert not (tmp_path / "x.json").exists()


@needs_scannet
def test_eval_cli_lifted_features_simulated(tmp_path):
    import torch

    from geopurify.cli import main
    from geopurify.config import defaults
    from geopurify.data.labels import get_label_set
    from geopurify.lift.result import LiftResult, save_lifted
    from geopurify.vlm import build_vlm, text_embeddings

    label_set = get_label_set("scannet20")
    vlm = build_vlm(defaults(), label_set=label_set)
    text = text_embeddings(vlm, label_set, "a {} in a scene")
    name = "scene0000_01"
    gt = _scannet_gt(name)
    cls = torch.from_numpy(np.where(gt >= 0, gt, 0))
    g = torch.Generator().manual_seed(0)
    feat = text[cls] * 3 + 0.01 * torch.randn(len(cls), text.shape[1], generator=g)  # scale must not matter
    wrong = torch.from_numpy(np.flatnonzero(gt == label_set.index("cabinet"))[:500])
    feat[wrong] = text[label_set.index("sofa")]  # 500 cabinet points look like a sofa
    res = LiftResult(
        feat,
        torch.ones(len(cls), dtype=torch.bool),
        torch.ones(len(cls), dtype=torch.int64),
        {"vlm": vlm.name, "simulated": True, "fusion": "mean", "scene": name},
    )
    save_lifted(tmp_path / f"{name}.lift.pt", res)
    out = tmp_path / "m.json"
    assert main(["eval", "--scene", str(SCANNET / name), "--features", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    per = {r["name"]: r for r in report["metrics"]["per_class"]}
    n_cab = int((gt == label_set.index("cabinet")).sum())
    assert per["cabinet"]["acc"] == pytest.approx((n_cab - 500) / n_cab)
    assert per["sofa"]["pred_points"] == per["sofa"]["gt_points"] + 500
    assert per["sofa"]["iou"] == pytest.approx(per["sofa"]["gt_points"] / (per["sofa"]["gt_points"] + 500))
    assert per["wall"]["iou"] == 1.0
    assert report["source"]["simulated"] is True and "SIMULATED" in report["source"]["note"]
    assert report["source"]["vlm"] == [vlm.name]

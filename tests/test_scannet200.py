"""ScanNet200 labels end to end: aggregation + segs -> labels_scannet200.npy -> load_scene in the
"scannet200_raw" space -> scannet200 classes -> `geopurify eval` / `select-subset`; and the
teacher's device pass-through."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from geopurify.cli import main
from geopurify.data import prepare as P
from geopurify.data import readers as R
from geopurify.data.labels import IGNORE, get_label_set, scannet_raw_category_ids
from geopurify.errors import InputError

from test_prepare import tiny_scan  # raw-scan fixture writers (mesh, axis, segs, .sens)

REPO = Path(__file__).resolve().parents[1]
SCANNET_TSV = REPO.parent / "shared" / "data" / "scannet" / "scannetv2-labels.combined.tsv"

# raw ids of scannetv2-labels.combined.tsv (checked against the table in the first test)
RAW = {"wall": 1, "chair": 2, "floor": 3, "office chair": 10, "kitchen cabinets": 29, "drawer": 25}
# file order matters: later groups win where groups share a segment (seg ids of tiny_scan: 0, 7, 14, ...)
GROUPS = [
    {"objectId": 0, "label": "chair", "segments": [0, 7]},
    {"objectId": 1, "label": "wall", "segments": [7, 21, 63]},  # takes segment 7 from the chair
    {"objectId": 2, "label": "kitchen cabinets", "segments": [35, 9999]},  # 9999: no such segment
    {"objectId": 3, "label": "no such category", "segments": [42]},  # not in the table -> 0
    {"objectId": 4, "label": "drawer", "segments": [49]},  # a raw id outside ScanNet200
    {"objectId": 5, "label": "floor", "segments": [56, 70, 77, 84]},
    {"objectId": 6, "label": "office chair", "segments": [21]},  # takes segment 21 from the wall
]


def loop_raw_labels(seg: np.ndarray, groups: list[dict]) -> np.ndarray:
    """The definition, vertex by vertex: the id of the last group (file order) listing its segment."""
    out = np.zeros(seg.shape[0], np.int32)
    for v, s in enumerate(seg):
        for g in groups:
            if s in g["segments"]:
                out[v] = RAW.get(g["label"], 0)
    return out


def scan_with_groups(root: Path, name="scene0007_00", groups=GROUPS, with_sens=False, labels_ply=True):
    """tiny_scan (300 vertices, 10 per segment) with GROUPS as its aggregation; (scan, seg, nyu40 labels)."""
    scan, _, _, _, labels, _, _ = tiny_scan(root, name=name, with_sens=with_sens)
    (scan / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    seg = np.asarray(json.loads((scan / f"{name}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    if not labels_ply:
        (scan / f"{name}_vh_clean_2.labels.ply").unlink()
    return scan, seg, labels.astype(np.int32)


@pytest.mark.skipif(not SCANNET_TSV.is_file(), reason="../shared/data not present")
def test_raw_category_table_is_the_tsv_columns():
    with open(SCANNET_TSV, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    table = scannet_raw_category_ids()
    assert dict(table) == {r["raw_category"]: int(r["id"]) for r in rows} and len(table) == len(rows) == 607
    assert all(table[k] == v for k, v in RAW.items())
    with pytest.raises(TypeError):
        table["wall"] = 5  # cached and shared: read-only


def test_prepare_writes_scannet200_raw_ids(tmp_path):
    scan, seg, nyu = scan_with_groups(tmp_path / "raw")
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, progress=False)
    raw = np.load(out / R.SCANNET200_LABELS_FILE)
    want = loop_raw_labels(seg, GROUPS)
    assert raw.dtype == np.int32 and np.array_equal(raw, want)
    assert (want == 2).sum() == 10 and (want == 10).sum() == 10 and (want == 1).sum() == 20  # overlaps resolved
    assert np.array_equal(np.load(out / R.LABELS_FILE), nyu)  # NYU40 still from the .labels.ply
    assert np.array_equal(
        P.scannet_raw_labels(
            scan / f"{scan.name}.aggregation.json", scan / f"{scan.name}_vh_clean_2.0.010000.segs.json", 300
        ),
        want,
    )
    inst = np.load(out / R.INSTANCES_FILE)  # instances follow the same later-group-wins rule
    assert inst[seg == 7].tolist() == [2] * 10 and inst[seg == 21].tolist() == [7] * 10


def test_prepare_without_labels_ply_writes_only_raw_ids(tmp_path):
    scan, seg, _ = scan_with_groups(tmp_path / "raw", labels_ply=False)
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, progress=False)
    assert not (out / R.LABELS_FILE).exists() and not (out / R.INSTANCES_FILE).exists()
    sc = R.load_scene(out)  # the scene's only labels are the default
    assert sc.label_space == "scannet200_raw" and np.array_equal(sc.labels, loop_raw_labels(seg, GROUPS))


def test_load_scene_picks_the_label_space(tmp_path):
    scan, seg, nyu = scan_with_groups(tmp_path / "raw")
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, progress=False)
    raw = loop_raw_labels(seg, GROUPS)
    default = R.load_scene(out)
    assert default.label_space == "nyu40" and np.array_equal(default.labels, nyu)
    s200 = get_label_set("scannet200")
    for sc in (R.load_scene(out, label_space="scannet200_raw"), R.load_scene_for(out, s200)):
        assert sc.label_space == "scannet200_raw" and np.array_equal(sc.labels, raw)
        assert sc.meta["labels_file"].endswith(R.SCANNET200_LABELS_FILE)
    assert R.load_scene_for(out, get_label_set("scannet20")).label_space == "nyu40"
    assert list(R.label_sources(out)) == ["nyu40", "scannet200_raw"]
    # the benchmark classes of the raw ids
    cls = s200.map(R.load_scene_for(out, s200).labels, space="scannet200_raw")
    name_of = {
        0: IGNORE,
        1: s200.index("wall"),
        2: s200.index("chair"),
        3: s200.index("floor"),
        10: s200.index("office chair"),
        29: s200.index("kitchen cabinet"),
        25: IGNORE,
    }
    assert np.array_equal(cls, [name_of[int(r)] for r in raw])
    assert (s200.index("wall"), s200.index("chair"), s200.index("floor")) == (0, 1, 2)
    # a raw scan directory read directly (mesh form) gives the same labels from its JSON files
    direct = R.load_scene(scan, label_space="scannet200_raw")
    assert np.array_equal(direct.labels, raw) and R.load_scene(scan).label_space == "nyu40"
    np.testing.assert_allclose(direct.xyz, default.xyz, atol=2e-6)
    with pytest.raises(InputError, match="matterport_raw") as e:
        R.load_scene(out, label_space="matterport_raw")
    assert e.value.path == str(out)


def test_bad_aggregation_and_wrong_length_file(tmp_path):
    scan, _, _ = scan_with_groups(tmp_path / "raw", groups=[{"objectId": 0, "label": 7, "segments": [0]}])
    with pytest.raises(InputError, match="label") as e:
        P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, progress=False)
    assert e.value.path.endswith(".aggregation.json")
    scan2, _, _ = scan_with_groups(tmp_path / "raw2")
    out = P.prepare_scannet_scan(scan2, tmp_path / "out" / scan2.name, progress=False)
    np.save(out / R.SCANNET200_LABELS_FILE, np.zeros(5, np.int32))
    R.load_scene(out)  # the default labels do not read it
    with pytest.raises(InputError, match="5 labels for 300 points"):
        R.load_scene_for(out, get_label_set("scannet200"))


def test_eval_cli_scores_scannet200_against_raw_ids(tmp_path, capsys):
    scan, seg, nyu = scan_with_groups(tmp_path / "raw")
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, progress=False)
    s200 = get_label_set("scannet200")
    gt = s200.map(loop_raw_labels(seg, GROUPS))
    rng = np.random.default_rng(0)
    pred = np.where(gt >= 0, gt, rng.integers(0, 200, gt.shape[0]))
    pred[seg == 63] = s200.index("chair")  # 10 wall points called chair
    pred[seg == 56] = s200.index("door")  # 10 floor points called door
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / f"{scan.name}.pred.npy", pred.astype(np.int16))
    rc = main(
        [
            "eval",
            "--scene",
            str(out),
            "--pred",
            str(tmp_path / "pred"),
            "--label-set",
            "scannet200",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "m.json").read_text())
    want = np.zeros((200, 201), np.int64)  # last column: no prediction
    for g, p in zip(gt, pred):
        if g >= 0:
            want[g, p] += 1
    assert rep["label_set"] == "scannet200" and np.array_equal(np.array(rep["confusion"]), want)
    assert rep["scenes"][0]["labelled_points"] == int((gt >= 0).sum()) == 90
    per = {c["name"]: c for c in rep["metrics"]["per_class"]}
    # wall: 20 gt, 10 right; chair: 10 gt all right + 10 wrong predictions; floor: 40 gt, 30 right
    assert per["wall"]["iou"] == pytest.approx(10 / 20) and per["chair"]["iou"] == pytest.approx(10 / 20)
    assert per["floor"]["iou"] == pytest.approx(30 / 40) and per["door"]["iou"] is None
    ious = [0.5, 0.5, 0.75, 1.0, 1.0]  # wall, chair, floor, office chair, kitchen cabinet
    assert rep["metrics"]["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert rep["metrics"]["f_mIoU"] == pytest.approx(100 * np.mean([0.5, 1.0, 1.0]))  # no wall / floor
    # the same scene scored with scannet20 reads its NYU40 labels
    g20 = get_label_set("scannet20").map(nyu)
    np.save(tmp_path / "pred" / f"{scan.name}.pred.npy", np.maximum(g20, 0))
    assert (
        main(
            [
                "eval",
                "--scene",
                str(out),
                "--pred",
                str(tmp_path / "pred"),
                "--label-set",
                "scannet20",
                "--out",
                str(tmp_path / "m20.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m20.json").read_text())["metrics"]["mIoU"] == pytest.approx(100.0)


def test_select_subset_counts_scannet200_classes(tmp_path):
    """Scene a: four ScanNet200 classes but a single NYU40 class; scene b: the reverse. With k = 1
    the richer scene of the chosen label set wins."""
    root = tmp_path / "scenes"
    from geopurify.data.writers import write_scene
    from geopurify.io import save_npy

    n = 400
    xyz = np.random.default_rng(0).uniform(0, 3, (n, 3))
    rgb = np.full((n, 3), 100, np.uint8)
    four_raw, one_raw = np.repeat([1, 2, 3, 5], n // 4), np.ones(n, int)
    four_nyu, one_nyu = np.repeat([1, 2, 3, 4], n // 4), np.ones(n, int)
    for name, nyu, raw in (("scene0001_00", one_nyu, four_raw), ("scene0002_00", four_nyu, one_raw)):
        write_scene(root / name, xyz, rgb, labels=nyu, meta={"source": "scannet"})
        save_npy(root / name / R.SCANNET200_LABELS_FILE, raw.astype(np.int32))
    for set_name, want in (("scannet200", "scene0001_00"), ("scannet20", "scene0002_00")):
        out = tmp_path / f"{set_name}.txt"
        assert main(["select-subset", "--root", str(root), "--label-set", set_name, "--k", "1", "--out", str(out)]) == 0
        chosen = [ln for ln in out.read_text().splitlines() if ln and not ln.startswith("#")]
        assert chosen == [want], (set_name, chosen)


def test_simulated_vlm_renders_the_label_sets_space(tmp_path):
    """The simulated VLM's ground truth for scannet200 comes from the raw ids whichever labels the
    caller loaded (NYU40 ids read as raw ids would silently be other classes)."""
    from geopurify.standins.simulated_vlm import SimulatedVLM, render_point_labels

    groups = [
        {"objectId": i, "label": lab, "segments": list(range(7 * i, 210, 35))}
        for i, lab in enumerate(["wall", "chair", "floor", "office chair", "kitchen cabinets"])
    ]
    scan, seg, _ = scan_with_groups(tmp_path / "raw", groups=groups, with_sens=True)
    out = P.prepare_scannet_scan(scan, tmp_path / "out" / scan.name, frame_step=1, progress=False)
    s200 = get_label_set("scannet200")
    vlm = SimulatedVLM(label_set=s200)
    by_default, for_set = R.load_scene(out), R.load_scene_for(out, s200)
    assert by_default.label_space == "nyu40" and for_set.label_space == "scannet200_raw"
    labels, space = vlm.point_labels(by_default)
    assert space == "scannet200_raw" and np.array_equal(labels, for_set.labels)
    hw = (48, 64)
    for i in range(len(for_set.frames)):
        a = vlm.view_classes(by_default, i, hw, rng=np.random.default_rng(i))
        b = vlm.view_classes(for_set, i, hw, rng=np.random.default_rng(i))
        raw, _ = render_point_labels(for_set, for_set.frames[i], hw, splat=vlm.splat)
        want = s200.map(raw)
        want[want < 0] = len(s200)  # background slot
        assert np.array_equal(a.gt, want) and np.array_equal(b.gt, want) and np.array_equal(a.shown, b.shown)
        assert (want < len(s200)).sum() > 20  # labelled points are in view


def test_scannet200_config_is_consistent():
    from geopurify.config import load_config

    cfg = load_config(REPO / "config" / "geopurify_scannet200.yaml")
    s = get_label_set(cfg["data"]["label_set"])
    assert s.name == "scannet200" and len(s) == 200
    assert set(cfg["eval"]["exclude_from_f"]) == {"wall", "floor", "ceiling"} <= set(s.names)
    assert cfg["data"]["dataset"] != "synthetic" and cfg["teacher"]["name"] == "sonata"


# ------------------------------------------------------------------------------------- teacher device
def test_build_teacher_passes_the_device(tmp_path, monkeypatch):
    from geopurify.config import defaults
    from geopurify.standins.geometric_teacher import GeometricTeacher
    from geopurify.teacher import build_teacher
    from geopurify.teacher import sonata as S

    seen = []
    real = S.load_sonata
    monkeypatch.setattr(S, "load_sonata", lambda path, device="cpu": (seen.append(device), real(path, "cpu"))[1])
    from test_sonata import save_ckpt, small_model

    cfg = defaults()
    cfg["teacher"].update(name="sonata", ckpt=str(save_ckpt(tmp_path / "s.pth", small_model())))
    t = build_teacher(cfg, device="cuda:3")
    assert seen == ["cuda:3"] and t._device == "cuda:3"
    build_teacher(cfg)
    assert seen[-1] == "cpu"  # default
    cfg["teacher"].update(name="geometric", ckpt=None)
    assert isinstance(build_teacher(cfg, device="cuda:3"), GeometricTeacher)  # numpy: the device is ignored


def test_train_builds_the_teacher_on_its_device(tmp_path, monkeypatch):
    import geopurify.distill.engine as engine  # the module whose build_teacher training calls
    from geopurify.config import defaults
    from geopurify.data.writers import write_scene
    from geopurify.distill.engine import train

    write_scene(
        tmp_path / "data" / "scene0001_00",
        np.random.default_rng(0).uniform(0, 2, (50, 3)),
        np.full((50, 3), 9, np.uint8),
    )
    cfg = defaults()
    cfg["data"].update(dataset="scannet", root=str(tmp_path / "data"))

    class Built(Exception):
        pass

    def fake_build(cfg, device="cpu"):
        raise Built(device)

    monkeypatch.setattr(engine, "build_teacher", fake_build)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # resolve_device checks cuda:1 exists
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    with pytest.raises(Built) as e:  # stopped before anything runs on that device
        train(cfg, tmp_path / "exp", device="cuda:1")
    assert e.value.args == ("cuda:1",)

"""`geopurify lift` on the real ScanNet test scenes with the simulated VLM (an offline stand-in).

scene0000_00 has 3 colour frames and no depth (z-buffer occlusion); scene0000_01 has no frames
(virtual cameras, simulated VLM only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.cli import main
from geopurify.lift.result import load_lifted

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scannet"
SCENE0, SCENE1 = DATA / "scene0000_00", DATA / "scene0000_01"
pytestmark = pytest.mark.skipif(not SCENE0.is_dir(), reason="shared ScanNet test data not present")


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    """Few virtual cameras and every real frame, to keep the test short."""
    p = tmp_path_factory.mktemp("cfg") / "lift.yaml"
    p.write_text("data:\n  frame_step: 1\nlift:\n  virtual_frames: 6\n")
    return p


def test_lift_one_scene_to_a_file(tmp_path, capsys, caplog, small_cfg):
    out = tmp_path / "x.lift.pt"
    rc = main(["lift", "--scene", str(SCENE0), "--vlm", "simulated", "--out", str(out), "--config", str(small_cfg)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "3 views" in printed
    assert "SIMULATED VLM" in caplog.text
    res = load_lifted(out, n_points=81369, dim=384)
    assert res.info["simulated"] is True and res.info["fusion"] == "mean" and res.info["scene"] == "scene0000_00"
    assert 0.05 < res.seen.float().mean() < 0.6 and int(res.n_views.max()) <= 3
    # features are unit-norm view averages of unit vectors: |f| <= 1, and the fill copies seen ones
    norms = res.feat.norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-2 and float(norms.min()) > 0.1
    # classification by cosine with the prompts beats chance by far on the seen, labelled points
    from geopurify.config import load_config
    from geopurify.data.labels import get_label_set
    from geopurify.vlm import build_vlm, text_embeddings

    vlm = build_vlm(load_config(None))
    ls = get_label_set("scannet20")
    gt = ls.map(np.load(SCENE0 / "labels_nyu40.npy"))
    pred = (res.feat @ text_embeddings(vlm, ls).t()).argmax(1).numpy()
    ok = res.seen.numpy() & (gt >= 0)
    assert (pred[ok] == gt[ok]).mean() > 0.5


def test_lift_several_scenes_to_a_directory_and_skip_done(tmp_path, capsys, small_cfg):
    out = tmp_path / "lifted"
    args = [
        "lift",
        "--scene",
        str(SCENE0),
        "--scene",
        str(SCENE1),
        "--vlm",
        "simulated",
        "--out",
        str(out),
        "--config",
        str(small_cfg),
        "--fusion",
        "consensus",
    ]
    assert main(args) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["scene0000_00.lift.pt", "scene0000_01.lift.pt"]
    printed = capsys.readouterr().out
    assert "virtual cameras" in printed
    r1 = load_lifted(out / "scene0000_01.lift.pt", n_points=80583, dim=384)
    assert r1.info["fusion"] == "consensus" and r1.seen.any() and not r1.seen.all()
    # unseen points hold their nearest seen point's feature
    from scipy.spatial import cKDTree

    xyz = np.load(SCENE1 / "points_xyzrgb.npy")[:, :3].astype(np.float64)
    seen = r1.seen.numpy()
    _, nn = cKDTree(xyz[seen]).query(xyz[~seen])
    assert torch.equal(r1.feat[~r1.seen], r1.feat[torch.from_numpy(np.flatnonzero(seen)[nn])])
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_lift_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["lift", "--scene", str(tmp_path / "nope"), "--vlm", "simulated", "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "nope" in err and err.count("\n") == 1
    rc = main(["lift", "--scene", str(SCENE0), "--vlm", "nosuchvlm", "--out", str(tmp_path / "o.pt")])
    assert rc == 2 and "nosuchvlm" in capsys.readouterr().err
    if not torch.cuda.is_available():
        rc = main(["lift", "--scene", str(SCENE0), "--out", str(tmp_path / "o.pt"), "--device", "cuda"])
        assert rc == 2 and "CUDA" in capsys.readouterr().err

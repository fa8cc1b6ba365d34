"""Training end to end on tiny procedural rooms: the student learns the teacher's affinities,
resuming reproduces an uninterrupted run bit for bit, and a 2-process torchrun run agrees.

Rooms are tiny (4000 points, ~15 cm apart), so the student uses 10 cm voxels to see neighbours.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support import cli_env

from geopurify.config import load_config
from geopurify.data.splits import resolve_scenes
from geopurify.distill.engine import train
from geopurify.distill.loss import info_nce, ranking_accuracy
from geopurify.distill.sampling import sample_pairs
from geopurify.distill.scenes import prepare_scene
from geopurify.errors import InputError
from geopurify.student.checkpoint import load_checkpoint, load_student
from geopurify.student.network import build_student
from geopurify.teacher import build_teacher
from geopurify.vlm import build_vlm

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    over = {
        "data": {"dataset": "synthetic", "root": str(tmp / "rooms"), "frame_step": 1, "cache_dir": str(tmp / "cache")},
        "synthetic": {"n_train": 2, "n_val": 1, "seed": 0, "points": 4000, "frames": 6},
        "lift": {"image_size": [160, 120]},
        "student": {"preset": "cpu", "width": 32, "blocks": 1, "voxel_size": 0.1},
        "distill": {"epochs": EPOCHS, "lr": 0.001, "warmup_epochs": 1, "seed": 3},
    }
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(over))
    cfg = load_config(cfg_path)
    train_scenes, val_scenes = resolve_scenes(cfg, "train"), resolve_scenes(cfg, "val")
    assert [p.name for p in train_scenes] == ["synth_0000", "synth_0001"]
    assert [p.name for p in val_scenes] == ["synth_0002"]
    exp = tmp / "a"
    final = train(cfg, exp)
    return {"tmp": tmp, "cfg": cfg, "cfg_path": cfg_path, "exp": exp, "final": final, "val": val_scenes[0]}


def _log(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_student_learns_teacher_affinities(setup):
    cfg, exp = setup["cfg"], setup["exp"]
    losses = [r["loss"] for r in _log(exp) if r["event"] == "epoch"]
    assert len(losses) == EPOCHS and losses[-1] < 0.7 * losses[0], losses
    model, meta = load_student(setup["final"])
    assert meta["teacher"]["stand_in"] and meta["vlm"]["simulated"] and meta["epoch"] == EPOCHS
    torch.manual_seed(cfg["distill"]["seed"])
    init = build_student(cfg["student"], meta["in_channels"]).eval()  # the same initial weights
    # held-out room: pairs the training never saw, ranked by the student's cosines
    b = prepare_scene(
        setup["val"], cfg, lambda: build_vlm(cfg), build_teacher(cfg), Path(cfg["data"]["cache_dir"]), "cpu"
    )
    pairs = sample_pairs(b.teacher, b.xyz, 1000, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        res = {}
        for name, m in (("trained", model), ("initial", init)):
            emb = m(b.feats, b.coords)[b.inverse]
            res[name] = {**ranking_accuracy(emb, pairs), "loss": float(info_nce(emb, pairs))}
    print(
        f"\nheld-out room {setup['val'].name}: teacher-pair agreement "
        + "; ".join(
            f"{k}: top-1 {v['top1']:.3f} (chance {v['chance_top1']:.3f}), pairwise {v['pairwise']:.3f} (chance 0.5), "
            f"loss {v['loss']:.3f}"
            for k, v in res.items()
        )
    )
    tr, ini = res["trained"], res["initial"]
    assert tr["top1"] > 10 * tr["chance_top1"] and tr["pairwise"] > 0.8
    assert (
        tr["pairwise"] > ini["pairwise"] + 0.05 and tr["top1"] > ini["top1"] + 0.05 and tr["loss"] < ini["loss"] - 0.5
    )


def test_resume_reproduces_uninterrupted_run(setup):
    cfg, exp = setup["cfg"], setup["exp"]
    b = setup["tmp"] / "b"
    (b / "model").mkdir(parents=True)
    shutil.copy(exp / "model" / "epoch_002.pth", b / "model" / "last.pth")  # as if killed during epoch 3
    final_b = train(cfg, b, resume=True)
    wa, wb = _weights(setup["final"]), _weights(final_b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    iters = lambda e: [(r["step"], r["loss"]) for r in _log(e) if r["event"] == "iter" and r["epoch"] > 2]
    assert iters(b) == iters(exp)
    # resuming a finished run does no more steps and rewrites the same final weights
    train(cfg, b, resume=True)
    wb2 = _weights(final_b)
    assert all(torch.equal(wa[k], wb2[k]) for k in wa)
    (b / "model" / "last.pth").write_bytes(b"truncated")
    with pytest.raises(InputError, match="last.pth"):
        train(cfg, b, resume=True)


# `python -m geopurify train` in a torchrun rank (cli.main, then cli.exit_process as __main__ does),
# recording in between whether the rank left the process group
_TRAIN_THEN_REPORT = """
import os, sys
import torch.distributed
from geopurify.cli import exit_process, main
rc = main(sys.argv[1:])
exp_dir = sys.argv[sys.argv.index("--exp_dir") + 1]
with open(os.path.join(exp_dir, "group_" + os.environ["RANK"]), "w") as f:
    f.write(str(torch.distributed.is_initialized()))
exit_process(rc)
"""


def test_torchrun_two_processes_agree(setup):
    out = setup["tmp"] / "ddp"
    env = cli_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python"]
    cmd += [sys.executable, "-c", _TRAIN_THEN_REPORT]
    cmd += ["train", "--exp_dir", str(out), "--config", str(setup["cfg_path"]), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert [(out / f"group_{r}").read_text() for r in (0, 1)] == ["False", "False"]  # each rank left the group
    done = [r for r in _log(out) if r["event"] == "done"][0]
    assert done["world_size"] == 2 and len(done["weights_digest"]) == 2 and done["ranks_agree"], done
    iters = [r for r in _log(out) if r["event"] == "iter"]
    assert len(iters) == EPOCHS  # 2 scenes on 2 ranks: one iteration per epoch per rank
    assert (out / "model" / "geopurify.pth").exists() and (out / "model" / f"epoch_{EPOCHS:03d}.pth").exists()


def test_recalibrate_batchnorm_gives_exact_statistics():
    """Precise BN: after recalibration the running mean / var are the exact averages of the
    per-scene batch statistics, whatever the momentum-lagged values were before."""
    import torch

    from geopurify.distill.step import recalibrate_batchnorm

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(3)

        def forward(self, feats, coords):
            return self.bn(feats)

    class B:
        def __init__(self, feats):
            self.feats, self.coords = feats, None

    batches = [B(torch.randn(50, 3) * (i + 1) + i) for i in range(3)]
    net = Net().eval()
    net.bn.running_mean.fill_(7.0)
    recalibrate_batchnorm(net, batches)
    assert not net.training and net.bn.momentum == 0.1  # mode and momentum restored
    mean = torch.stack([b.feats.mean(0) for b in batches]).mean(0)
    var = torch.stack([b.feats.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(net.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(net.bn.running_var, var, atol=1e-4)


def test_student_input_sampled_runs_the_student_on_the_sampled_voxels_only():
    """distill.student_input: sampled (the reference code) forwards the sub-tensor of the voxels that
    hold a sampled point; its embeddings differ from the whole-scene forward (fewer neighbours in the
    sparse convolutions), and the loss is InfoNCE on exactly those sub-tensor embeddings."""
    import numpy as np

    from geopurify.distill.engine import check_settings
    from geopurify.distill.sampling import Pairs, n_anchors_for
    from geopurify.distill.scenes import SceneBatch
    from geopurify.distill.step import scene_loss
    from geopurify.ops.voxel import voxelize

    rng = np.random.default_rng(4)
    xyz = rng.uniform(0, 0.6, (3000, 3)).astype(np.float32)
    coords, inverse = voxelize(torch.from_numpy(xyz), 0.05)
    V = coords.shape[0]
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(V, 10, generator=g)
    teacher = torch.nn.functional.normalize(torch.randn(len(xyz), 8, generator=g), dim=1)
    batch = SceneBatch("cube", feats, coords, inverse, teacher, xyz, {})
    torch.manual_seed(0)
    model = build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 16}, 10).eval()
    over = {"max_anchors": 40, "n_macro": 6, "n_micro": 3, "micro_k": 8}
    cfg = {name: load_config(None, {"distill": {**over, "student_input": name}}) for name in ("scene", "sampled")}
    with torch.no_grad():
        loss_s, pairs = scene_loss(model, batch, cfg["sampled"], torch.Generator().manual_seed(1))
        loss_w, pairs_w = scene_loss(model, batch, cfg["scene"], torch.Generator().manual_seed(1))
        assert torch.equal(pairs.negatives, pairs_w.negatives) and len(pairs) == n_anchors_for(len(xyz), 40, 3)
        # the definition: voxels of every sampled point, their sub-tensor, InfoNCE on its embeddings
        used = sorted(set(inverse[torch.cat([pairs.anchor, pairs.positive, pairs.negatives.reshape(-1)])].tolist()))
        assert 0 < len(used) < V
        sub = model(feats[used], coords[used])
        row = {v: i for i, v in enumerate(used)}
        remap = lambda t: torch.tensor([row[int(v)] for v in inverse[t].reshape(-1)]).reshape(t.shape)  # noqa: E731
        want = info_nce(
            sub,
            Pairs(remap(pairs.anchor), remap(pairs.positive), remap(pairs.negatives), pairs.n_macro),
            tau=cfg["sampled"]["distill"]["tau"],
        )
        torch.testing.assert_close(loss_s, want)
        whole = model(feats, coords)[used]
        cos = (sub * whole).sum(1)
        assert cos.min() < 0.99 and not torch.allclose(loss_s, loss_w)  # a different forward, not a re-indexing
    with pytest.raises(InputError, match="student_input"):
        check_settings(load_config(None, {"distill": {"student_input": "subset"}}))

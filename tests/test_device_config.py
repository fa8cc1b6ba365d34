"""One device policy (`--device auto` everywhere, inputs moved to the device at one boundary, the
device in every report), config overrides (`--set KEY=VALUE`, `base:` chains) and checkpoint
metadata that records the network actually built."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from geopurify.config import apply_sets, defaults, load_config, parse_set
from geopurify.device import resolve_device, to_device
from geopurify.errors import InputError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ device


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_resolve_device_auto_follows_cuda(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    _fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "spec, count, problem",
    [
        ("cuda", 0, "cuda asked for, but torch sees no CUDA device"),
        ("cuda:0", 0, "cuda:0 asked for, but torch sees no CUDA device"),
        ("cuda:2", 2, r"cuda:2 asked for, but torch sees 2 CUDA device\(s\)"),
        ("tpu", 0, "unknown device 'tpu'"),
        ("cuda:x", 1, "unknown device 'cuda:x'"),
    ],
)
def test_resolve_device_refuses_what_is_not_there(monkeypatch, spec, count, problem):
    _fake_cuda(monkeypatch, count)
    with pytest.raises(InputError, match=problem) as e:
        resolve_device(spec)
    assert e.value.path == "--device"


def test_to_device_moves_every_tensor_field():
    from geopurify.lift.result import LiftResult

    res = LiftResult(torch.ones(3, 2), torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.int64), {"a": 1})
    moved = to_device(res, "meta")
    assert {moved.feat.device.type, moved.seen.device.type, moved.n_views.device.type} == {"meta"}
    assert moved.info == {"a": 1} and res.feat.device.type == "cpu"  # the original is untouched
    assert to_device(None, "meta") is None and to_device(torch.ones(1), "meta").device.type == "meta"


MODEL_COMMANDS = ["lift", "eval", "train", "val", "demo", "query"]  # every command that runs torch work


def _subparsers():
    import argparse

    from geopurify.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_torch_command_defaults_to_auto_and_takes_set(name):
    """One policy: the same `--device` (default auto) and `--set` on every command that loads a model
    (before: train defaulted to cuda-when-available, the others to cpu)."""
    p = _subparsers()[name]
    opts = {o: a for a in p._actions for o in a.option_strings}
    assert opts["--device"].default == "auto"
    assert opts["--set"].default == [] and opts["--set"].dest == "set"


class _FakeVLM:
    """A VLM whose text side is all that evaluation needs here."""

    name, simulated, dim = "fake", True, 8

    def describe(self) -> str:
        return "fake (test)"

    def encode_text(self, prompts):
        return torch.randn(len(prompts), self.dim, generator=torch.Generator().manual_seed(0))


def test_evaluation_puts_features_and_text_on_one_device(tmp_path, monkeypatch):
    """`val --device cuda` crashed on its first scene: evaluation moved the text embeddings to the device
    but left the lifted features on the CPU, so the raw scores multiplied a CPU by a CUDA tensor; and the
    lifting inside evaluation always ran on the CPU. Here the 'device' is torch's meta device, so the
    same mismatch shows on a machine without a GPU: every product must see features and text on it."""
    import geopurify.evaluate.split as split
    from geopurify.data.writers import write_scene
    from geopurify.lift.result import LiftResult

    rng = np.random.default_rng(0)
    write_scene(
        tmp_path / "s",
        rng.uniform(0, 1, (40, 3)),
        np.full((40, 3), 128, np.uint8),
        labels=rng.integers(1, 12, 40).astype(np.int32),
    )
    lift_devices, products = [], []

    def fake_cached_lift(scene, cfg, vlm, cache_dir, device="cpu"):
        lift_devices.append(torch.device(device))
        n = scene.n_points  # what the cache returns: features read back on the CPU
        return LiftResult(torch.randn(n, 8), torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.int64), {})

    def spy_text_scores(feat, text_emb):
        products.append((feat.device, text_emb.device))
        return torch.zeros(feat.shape[0], text_emb.shape[0])

    monkeypatch.setattr(split, "cached_lift", fake_cached_lift)
    monkeypatch.setattr(split, "text_scores", spy_text_scores)
    report = split.evaluate_scenes(
        defaults(),
        [tmp_path / "s"],
        None,
        tmp_path / "out",
        tmp_path / "cache",
        device="meta",
        methods=("raw",),
        vlm=_FakeVLM(),
        reuse=False,
    )
    meta = torch.device("meta")
    assert lift_devices == [meta]  # lifting runs on the evaluation's device
    assert products == [(meta, meta)]  # features and prompts side by side on it
    assert report["device"] == "meta"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["device"] == "meta"


def test_purification_moves_its_inputs_at_its_entry():
    """purify_scene / knn_mean_scene take features and prompts from anywhere and run on `device`."""
    from geopurify.purify.infer import _check_inputs

    scene = SimpleNamespace(n_points=5, name="s", path=None)
    lifted = SimpleNamespace(feat=torch.randn(5, 4), seen=torch.ones(5, dtype=torch.bool))
    feat, seen, text = _check_inputs(scene, lifted, torch.randn(3, 4, dtype=torch.float64), "meta")
    assert feat.device.type == "meta" and text.device.type == "meta" and text.dtype == torch.float32
    assert seen.device.type == "cpu"  # the mask steers the CPU kd-tree fill


# ------------------------------------------------------------------------------ --set


def test_set_values_are_yaml_typed():
    cfg = apply_sets(
        defaults(),
        [
            "distill.epochs=2",
            "lift.image_size=[320, 240]",
            "lift.vlm_path=null",
            "lift.vlm=clip",
            "distill.lr=1.0e-4",
            "purify.k=7",
            "data.train_list=a b.txt",
            "distill.lr_mult={stem: 0.1, head: 5}",
            "lift.prompt_template=a {} photo",
        ],
    )
    assert cfg["distill"]["epochs"] == 2 and cfg["lift"]["image_size"] == [320, 240]
    assert cfg["lift"]["vlm_path"] is None and cfg["lift"]["vlm"] == "clip" and cfg["purify"]["k"] == 7
    assert cfg["distill"]["lr"] == 1e-4 and isinstance(cfg["distill"]["lr"], float)
    assert cfg["data"]["train_list"] == "a b.txt" and cfg["distill"]["lr_mult"] == {"stem": 0.1, "head": 5}
    assert cfg["lift"]["prompt_template"] == "a {} photo"
    assert cfg["purify"]["tau"] == defaults()["purify"]["tau"]  # the rest untouched
    assert parse_set("a.b.c=1") == {"a": {"b": {"c": 1}}} and parse_set("x=") == {"x": None}
    assert parse_set("lift.prompt_template=a=b {}") == {"lift": {"prompt_template": "a=b {}"}}  # first = splits


@pytest.mark.parametrize(
    "item, problem",
    [
        ("lift.fusoin=mean", "unknown config key 'lift.fusoin'"),
        ("distill.epochs=two", "config key 'distill.epochs' must be int, got str 'two'"),
        ("data.frame_step=null", "config key 'data.frame_step' must be int, got null"),
        ("distill.epochs", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("lift..vlm=clip", "expected KEY=VALUE"),
        ("lift.image_size=[320,", "VALUE is not valid YAML"),
        ("data=3", "config key 'data' must be dict, got int 3"),
        ("distill.lr=1e-4", "must be float, got str '1e-4' (YAML reads 1e-4 as text: write it as 0.0001)"),
    ],
)
def test_bad_set_is_an_input_error_naming_it(item, problem):
    with pytest.raises(InputError) as e:
        apply_sets(defaults(), [item])
    assert e.value.path == f"--set {item}" and problem in e.value.problem


def test_precedence_file_flags_set(tmp_path):
    """defaults < --config file < the command's flags < --set, in that order."""
    p = tmp_path / "c.yaml"
    p.write_text("lift:\n  vlm: openscene\n  fusion: consensus\ndistill:\n  epochs: 5\n")
    cfg = load_config(p, {"lift": {"vlm": "clip"}}, ["lift.vlm=external", "distill.epochs=3"])
    assert cfg["lift"]["vlm"] == "external" and cfg["distill"]["epochs"] == 3
    assert cfg["lift"]["fusion"] == "consensus"  # from the file
    assert load_config(p, {"lift": {"vlm": "clip"}})["lift"]["vlm"] == "clip"


def test_cli_set_reaches_the_command(tmp_path, capsys):
    """`geopurify eval --set`: the label set named by --set wins over --label-set (flags < --set)."""
    from geopurify.cli import main

    rc = main(
        [
            "-q",
            "eval",
            "--scene",
            str(tmp_path),
            "--pred",
            str(tmp_path),
            "--label-set",
            "scannet20",
            "--set",
            "data.label_set=nonesuch",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 2 and "nonesuch" in capsys.readouterr().err


# ------------------------------------------------------------------------------ base:


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_chain_overrides_only_what_differs(tmp_path):
    _write(tmp_path / "a" / "root.yaml", {"lift": {"fusion": "consensus", "border": 4}, "distill": {"epochs": 9}})
    mid = _write(tmp_path / "b" / "mid.yaml", {"base": "../a/root.yaml", "lift": {"border": 6}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": str(mid), "distill": {"lr": 0.5}})  # absolute path
    cfg = load_config(leaf)
    assert cfg["lift"]["fusion"] == "consensus" and cfg["lift"]["border"] == 6
    assert cfg["distill"]["epochs"] == 9 and cfg["distill"]["lr"] == 0.5
    assert cfg["lift"]["image_size"] == defaults()["lift"]["image_size"]
    assert "base" not in cfg
    # the same keys written out in one file give the same config
    flat = _write(
        tmp_path / "flat.yaml", {"lift": {"fusion": "consensus", "border": 6}, "distill": {"epochs": 9, "lr": 0.5}}
    )
    assert load_config(flat) == cfg


def test_base_errors_name_the_file(tmp_path):
    missing = _write(tmp_path / "m.yaml", {"base": "nope.yaml"})
    with pytest.raises(InputError, match=r"base config 'nope.yaml' not found") as e:
        load_config(missing)
    assert e.value.path == str(missing)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, {"base": "b.yaml"})
    _write(b, {"base": "a.yaml"})
    with pytest.raises(InputError, match="base configs form a cycle") as e:
        load_config(a)
    assert e.value.path == str(b)  # the file whose base closes the loop
    me = _write(tmp_path / "me.yaml", {"base": "me.yaml"})
    with pytest.raises(InputError, match="cycle"):
        load_config(me)
    bad = _write(tmp_path / "bad.yaml", {"base": 3})
    with pytest.raises(InputError, match="'base' must be the path of another config file"):
        load_config(bad)
    wrong = _write(tmp_path / "sub" / "wrong.yaml", {"lift": {"fusoin": "mean"}})
    child = _write(tmp_path / "child.yaml", {"base": "sub/wrong.yaml"})
    with pytest.raises(InputError, match="unknown config key 'lift.fusoin'") as e:
        load_config(child)
    assert e.value.path == str(wrong)  # an error inside the base names the base


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "lr_mult":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(
    "child, base, diff",
    [
        (
            "geopurify_scannet200.yaml",
            "geopurify_scannet.yaml",
            {
                "data.dataset": "scannet200",
                "data.label_set": "scannet200",
                "data.train_list": "data/scannet/subset_20_scannet200.txt",
                "eval.also_label_sets": [],
            },
        ),  # the base scores scannet20 beside scannet19; ScanNet200 has one setting
        (
            "geopurify_matterport40.yaml",
            "geopurify_matterport.yaml",
            {"data.label_set": "matterport40", "data.train_list": "data/matterport/subset_20_40.txt"},
        ),
        (
            "geopurify_matterport80.yaml",
            "geopurify_matterport.yaml",
            {
                "data.label_set": "matterport80",
                "data.train_list": "data/matterport/subset_20_80.txt",
                "distill.warmup_epochs": 3,
            },
        ),
        (
            "geopurify_matterport160.yaml",
            "geopurify_matterport.yaml",
            {
                "data.label_set": "matterport160",
                "data.train_list": "data/matterport/subset_20_160.txt",
                "distill.lr": 0.00008,
                "distill.weight_decay": 0.00002,
                "distill.warmup_epochs": 5,
            },
        ),
    ],
)
def test_shipped_variants_differ_from_their_base_exactly(child, base, diff):
    """The ScanNet200 and Matterport 40/80/160 configs say `base:` and hold only their differences;
    they load to the same values as the full copies they replaced (these differences, nothing else)."""
    assert yaml.safe_load((REPO / "config" / child).read_text())["base"] == base
    c, b = _flat(load_config(REPO / "config" / child)), _flat(load_config(REPO / "config" / base))
    assert {k: v for k, v in c.items() if b.get(k) != v} == diff
    assert set(c) == set(b)


def test_shipped_paper_settings_survive_the_base_chain():
    cfg = load_config(REPO / "config" / "geopurify_matterport160.yaml")
    assert cfg["student"]["preset"] == "paper" and cfg["teacher"]["name"] == "sonata"
    assert cfg["lift"]["fusion"] == "consensus" and cfg["lift"]["image_size"] == [640, 512]
    assert cfg["distill"]["lr_mult"] == {"stem": 0.1, "blocks": 1.0, "head": 5.0} and cfg["distill"]["seed"] == 5557
    cfg = load_config(REPO / "config" / "geopurify_scannet200.yaml")
    assert cfg["lift"]["image_size"] == [648, 484] and cfg["data"]["frame_step"] == 20
    assert cfg["data"]["val_list"] == "data/scannet/scannetv2_val.txt"


# ------------------------------------------------------------------------------ checkpoint metadata


def test_checkpoint_meta_records_the_network_built(tmp_path, monkeypatch):
    """The `paper` preset ignores the config's width / blocks; the checkpoint used to record the
    config's (64 / 2) instead of what was built. The preset is shrunk here (8 wide, 1 block) so the
    test trains on a CPU in seconds; the code path is the paper preset's."""
    import geopurify.student.network as network
    from geopurify.distill.engine import train
    from geopurify.student.checkpoint import load_checkpoint, load_student

    monkeypatch.setitem(network.PRESETS, "paper", {"width": 8, "blocks": 1})
    cfg = load_config(
        None,
        sets=[
            f"data.root={tmp_path / 'rooms'}",
            "data.frame_step=1",
            "synthetic.n_train=1",
            "synthetic.n_val=1",
            "synthetic.points=1500",
            "synthetic.frames=3",
            "lift.image_size=[64, 48]",
            "student.preset=paper",
            "student.voxel_size=0.1",
            "distill.epochs=1",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    assert (cfg["student"]["width"], cfg["student"]["blocks"]) == (64, 2)  # what the config says
    final = train(cfg, tmp_path / "exp", device="cpu")
    for name in ("geopurify.pth", "last.pth", "epoch_001.pth"):
        meta = load_checkpoint(final.parent / name)["meta"]
        assert meta["student"] == {"preset": "paper", "width": 8, "blocks": 1, "out_dim": 128, "voxel_size": 0.1}
        assert meta["device"] == "cpu"
    model, meta = load_student(final, "cpu")
    assert model.architecture() == {"width": 8, "blocks": 1, "out_dim": 128}
    assert meta["student"]["width"] == 8 and meta["student"]["blocks"] == 1
    done = [json.loads(x) for x in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()][-1]
    assert done["event"] == "done" and done["device"] == "cpu"


def test_load_student_reports_the_rebuilt_network_for_old_files(tmp_path):
    """A file written before the fix says width 64 / blocks 2 for a paper-preset student; loading it
    rebuilds the preset's network and reports that network, not the stale numbers."""
    import geopurify.student.network as network
    from geopurify.student.checkpoint import load_student, save_checkpoint
    from geopurify.student.network import build_student

    cfg = defaults()
    cfg["student"]["preset"] = "paper"
    old = network.PRESETS["paper"]
    network.PRESETS["paper"] = {"width": 8, "blocks": 1}
    try:
        model = build_student(cfg["student"], 14)
        save_checkpoint(
            tmp_path / "old.pth",
            {
                "model": model.state_dict(),
                "config": cfg,
                "in_channels": 14,
                "meta": {"student": dict(cfg["student"]), "epoch": 1},
            },
        )
        loaded, meta = load_student(tmp_path / "old.pth")
    finally:
        network.PRESETS["paper"] = old
    assert loaded.architecture() == {"width": 8, "blocks": 1, "out_dim": 128}
    assert (meta["student"]["width"], meta["student"]["blocks"]) == (8, 1)

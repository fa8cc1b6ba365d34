"""Checkpoints, feature caches and scene lists: round trips and one-line errors on bad files."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.config import defaults
from geopurify.data.layout import read_scene_list
from geopurify.data.scene import Scene
from geopurify.data.splits import resolve_scenes
from geopurify.distill.schedule import epoch_order, lr_factor, param_groups, slot_generator
from geopurify.errors import InputError
from geopurify.student.checkpoint import load_checkpoint, load_student, save_checkpoint
from geopurify.student.network import build_student
from geopurify.vlm.base import VLM

CIN = 10


def _ckpt(tmp_path, width=16, blocks=1, name="m.pth"):
    cfg = defaults()
    cfg["student"].update(width=width, blocks=blocks, out_dim=8)
    torch.manual_seed(0)
    model = build_student(cfg["student"], CIN)
    meta = {
        "teacher": {"name": "t", "stand_in": True},
        "vlm": {"name": "v", "simulated": True},
        "student": dict(cfg["student"]),
        "epoch": 3,
    }
    path = save_checkpoint(
        tmp_path / name,
        {"model": model.state_dict(), "epoch": 3, "step": 9, "config": cfg, "in_channels": CIN, "meta": meta},
    )
    return path, model, cfg


def test_round_trip_gives_same_outputs(tmp_path):
    path, model, _ = _ckpt(tmp_path)
    loaded, meta = load_student(path, "cpu")
    assert meta["epoch"] == 3 and meta["teacher"]["stand_in"] and meta["in_channels"] == CIN
    coords = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 0, 0], [3, 3, 3]], dtype=torch.int32)
    feats = torch.randn(4, CIN, generator=torch.Generator().manual_seed(1))
    model.eval()
    assert torch.equal(model(feats, coords), loaded(feats, coords))


def _one_line(err: InputError, path) -> str:
    msg = str(err)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_truncated_and_foreign_files(tmp_path):
    path, _, _ = _ckpt(tmp_path)
    with pytest.raises(InputError) as e:
        load_student(tmp_path / "nope.pth")
    assert "not found" in _one_line(e.value, tmp_path / "nope.pth")
    data = path.read_bytes()
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        load_student(bad)
    assert "truncated or corrupt" in _one_line(e.value, bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError) as e:
        load_checkpoint(junk)
    _one_line(e.value, junk)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError) as e:
        load_student(foreign)
    assert "not a GeoPurify" in _one_line(e.value, foreign)


def test_weights_not_matching_recorded_architecture(tmp_path):
    path, _, cfg = _ckpt(tmp_path, width=16)
    ck = torch.load(path, weights_only=True)
    ck["config"]["student"]["width"] = 32  # file claims a wider student than its weights
    bad = tmp_path / "wide.pth"
    torch.save(ck, bad)
    with pytest.raises(InputError) as e:
        load_student(bad)
    assert "do not match the recorded architecture" in _one_line(e.value, bad)
    ck["config"]["student"]["width"] = 16
    ck["in_channels"] = CIN + 1  # wrong input channels
    torch.save(ck, bad)
    with pytest.raises(InputError) as e:
        load_student(bad)
    assert "shape mismatch" in _one_line(e.value, bad)


def test_schedule_groups_and_order():
    # warm-up 1/4, 2/4, ... then cosine from 1 to ~0
    f = [lr_factor(s, 12, 4) for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0 and all(a > b for a, b in zip(f[4:], f[5:]))
    assert f[-1] < 0.05
    model = build_student({"preset": "cpu", "width": 8, "blocks": 1, "out_dim": 4}, CIN)
    groups = {g["name"]: g for g in param_groups(model, 1e-3, {"stem": 0.1, "head": 5.0})}
    assert groups["stem"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == pytest.approx(5e-3)
    assert groups["default"]["lr"] == pytest.approx(1e-3)
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))
    with pytest.raises(InputError, match="matches no student parameter"):
        param_groups(model, 1e-3, {"hed": 2.0})
    # 5 scenes on 2 ranks: padded to 6 slots, rank slices disjoint except the one wrapped slot
    o = epoch_order(5, 0, 1, world=2)
    assert len(o) == 6 and set(o[:5]) == set(range(5)) and o[5] == o[0]
    assert not np.array_equal(epoch_order(5, 0, 1), epoch_order(5, 0, 2))
    a, b = slot_generator(0, 1, 2), slot_generator(0, 1, 2)
    assert torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))


class _CountingTeacher:
    """A local stand-in teacher for the cache test: random unit rows, counts its calls."""

    name, stand_in, dim = "counting", True, 5

    def __init__(self):
        self._calls = 0

    def embed(self, scene):
        self._calls += 1
        g = torch.Generator().manual_seed(scene.n_points)
        return torch.nn.functional.normalize(torch.randn(scene.n_points, self.dim, generator=g), dim=1)


def test_teacher_cache_round_trip_and_repair(tmp_path, caplog):
    from geopurify.teacher.cache import cached_teacher, teacher_cache_path

    rng = np.random.default_rng(0)
    scene = Scene("s", rng.uniform(0, 1, (200, 3)).astype(np.float32), rng.integers(0, 255, (200, 3), dtype=np.uint8))
    t = _CountingTeacher()
    a = cached_teacher(scene, t, tmp_path)
    b = cached_teacher(scene, t, tmp_path)
    assert t._calls == 1 and torch.equal(a, b) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(200)) and torch.allclose(a, t.embed(scene), atol=2e-3)
    path = teacher_cache_path(scene, t, tmp_path)
    assert torch.load(path, weights_only=True)["feat"].dtype == torch.float16
    path.write_bytes(b"broken")
    with caplog.at_level(logging.WARNING):
        c = cached_teacher(scene, t, tmp_path)
    assert torch.equal(a, c) and "recomputing" in caplog.text
    torch.save({"feat": torch.zeros(10, 5, dtype=torch.float16)}, path)  # wrong number of points
    assert torch.equal(cached_teacher(scene, t, tmp_path), a) and t._calls == 4
    moved = Scene("s", scene.xyz + 1, scene.rgb)  # different content, same name: a different file
    assert teacher_cache_path(moved, t, tmp_path) != path


def test_scene_lists(tmp_path):
    root = tmp_path / "root"
    for n in ("a", "b"):
        (root / n).mkdir(parents=True)
        np.save(root / n / "points_xyzrgb.npy", np.zeros((1, 6), np.float32))
    cfg = defaults()
    cfg["data"].update(dataset="scannet", root=str(root))
    lst = tmp_path / "train.txt"
    lst.write_text("# subset\nb\n\na  # comment\n")
    cfg["data"]["train_list"] = str(lst)
    assert [p.name for p in resolve_scenes(cfg, "train")] == ["b", "a"]
    lst.write_text("a\nc\n")
    with pytest.raises(InputError) as e:
        resolve_scenes(cfg, "train")
    assert "scene 'c' not found" in _one_line(e.value, lst)
    lst.write_text("\n# nothing\n")
    with pytest.raises(InputError, match="empty"):
        read_scene_list(lst)
    cfg["data"]["train_list"] = str(tmp_path / "missing.txt")
    with pytest.raises(InputError) as e:
        resolve_scenes(cfg, "train")
    assert "not found" in _one_line(e.value, tmp_path / "missing.txt")


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "scannet" / "scene0000_00"


class _ColourVLM(VLM):
    """A local stand-in VLM for the cache test: the frame's colour image as a 3-d unit feature map."""

    name, simulated, dim = "colour (test stand-in)", False, 3

    def encode_text(self, prompts):
        raise NotImplementedError

    def frame_features(self, scene, frame_index, image_hw):
        img = torch.from_numpy(scene.frames[frame_index].color()).permute(2, 0, 1).float()[None]
        img = torch.nn.functional.interpolate(img, size=tuple(image_hw), mode="area")[0]
        return torch.nn.functional.normalize(img + 1.0, dim=0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data (real ScanNet scene)")
def test_lift_cache_on_a_real_scan(tmp_path, caplog):
    from geopurify.data.readers import load_scene
    from geopurify.lift.cache import cached_lift, lift_cache_path

    scene = load_scene(SHARED)
    cfg = defaults()
    cfg["lift"].update(vlm="external", image_size=[160, 120])
    built = []

    def vlm_factory():
        built.append(1)
        return _ColourVLM()

    a = cached_lift(scene, cfg, vlm_factory, tmp_path)
    b = cached_lift(scene, cfg, vlm_factory, tmp_path)  # a hit never builds the VLM
    assert len(built) == 1 and torch.equal(a.feat, b.feat) and torch.equal(a.seen, b.seen)
    assert a.feat.shape == (scene.n_points, 3) and a.seen.float().mean() > 0.05  # 3 views of a room
    path = lift_cache_path(scene, cfg, tmp_path)
    assert torch.load(path, weights_only=True)["feat"].dtype == torch.float16
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING):
        c = cached_lift(scene, cfg, vlm_factory, tmp_path)
    assert len(built) == 2 and torch.equal(a.feat, c.feat) and "recomputing" in caplog.text
    cfg["lift"]["occlusion_thr"] = 0.25  # a setting that changes the result: another file
    assert lift_cache_path(scene, cfg, tmp_path) != path
    cfg["lift"]["occlusion_thr"], cfg["lift"]["chunk_points"] = 0.05, 1000  # memory-only: the same file
    assert lift_cache_path(scene, cfg, tmp_path) == path

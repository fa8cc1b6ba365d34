"""Cache keys follow the content of every input file: a file re-exported under the same path is
recomputed, never read stale (lifted features, teacher features, evaluation predictions)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.config import load_config
from geopurify.data.readers import load_scene
from geopurify.data.scene import Scene
from geopurify.data.writers import write_frame, write_scene
from geopurify.errors import InputError
from geopurify.io import file_fingerprint
from geopurify.lift.cache import cached_lift, lift_cache_path
from geopurify.lift.multiview import lift_scene
from geopurify.teacher.cache import cached_teacher, teacher_cache_path
from geopurify.vlm import build_vlm
from geopurify.vlm.external import save_view_features

PROMPTS = ["a wall in a scene", "a chair in a scene"]


def _prompts(path: Path, c: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    torch.save({"prompts": PROMPTS, "embeddings": torch.randn(len(PROMPTS), c, generator=g)}, path)
    return path


def _rewrite(path: Path, write) -> None:
    """Write new content to `path`, keeping its size class; bump mtime so even coarse clocks differ."""
    st = path.stat()
    write()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_file_fingerprint_sees_rewrites_and_missing_files(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 1000)
    fp = file_fingerprint([a, None])
    assert file_fingerprint([a]) == fp  # None entries are skipped; stable when nothing changed
    st = a.stat()
    a.write_bytes(b"y" * 1000)  # same size, different head
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert file_fingerprint([a]) != fp
    fp2 = file_fingerprint([a])
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 5))  # touched: same bytes, newer mtime
    assert file_fingerprint([a]) != fp2
    missing = file_fingerprint([tmp_path / "nope"])
    assert missing != file_fingerprint([a]) and missing == file_fingerprint([tmp_path / "nope"])


def _openscene(dirpath: Path, n: int, c: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, dtype=torch.bool)
    torch.save({"feat": torch.randn(n, c, generator=g).half(), "mask_full": mask}, dirpath / "room_0.pt")


def test_reexported_openscene_features_are_lifted_again(tmp_path):
    n, c = 50, 6
    feats = tmp_path / "openscene"
    feats.mkdir()
    _openscene(feats, n, c, seed=0)
    _prompts(feats / "text_embeddings.pt", c, seed=1)
    cfg = load_config(None, {"lift": {"vlm": "openscene", "vlm_path": str(feats)}})
    scene = Scene("room", np.random.default_rng(0).uniform(0, 1, (n, 3)).astype(np.float32), np.zeros((n, 3), np.uint8))
    built = []

    def factory():
        built.append(1)
        return build_vlm(cfg)

    first = cached_lift(scene, cfg, factory, tmp_path / "cache")
    assert torch.equal(cached_lift(scene, cfg, factory, tmp_path / "cache").feat, first.feat) and len(built) == 1
    path = lift_cache_path(scene, cfg, tmp_path / "cache")
    _rewrite(feats / "room_0.pt", lambda: _openscene(feats, n, c, seed=2))  # re-exported, same path
    assert lift_cache_path(scene, cfg, tmp_path / "cache") != path
    again = cached_lift(scene, cfg, factory, tmp_path / "cache")
    assert len(built) == 2 and not torch.equal(again.feat, first.feat)
    fresh = lift_scene(scene, build_vlm(cfg), cfg)
    torch.testing.assert_close(again.feat, fresh.feat.half().float())
    # the prompt file is an input too (consensus fusion and the text side read it)
    path = lift_cache_path(scene, cfg, tmp_path / "cache")
    _rewrite(feats / "text_embeddings.pt", lambda: _prompts(feats / "text_embeddings.pt", c, seed=3))
    assert lift_cache_path(scene, cfg, tmp_path / "cache") != path


def _tiny_room(root: Path) -> Path:
    """Points on a plane 2 m in front of one camera with a constant-depth frame."""
    cols, rows = np.meshgrid(np.arange(16), np.arange(12))
    xyz = np.stack([(cols.ravel() - 7.5) / 8, (rows.ravel() - 5.5) / 8, np.full(cols.size, 2.0)], 1).astype(np.float32)
    d = root / "tiny"
    write_scene(d, xyz, np.full((len(xyz), 3), 128, np.uint8))
    K = np.array([[16.0, 0, 7.5], [0, 16.0, 5.5], [0, 0, 1]])
    write_frame(d, 0, np.eye(4), K, color=np.full((12, 16, 3), 100, np.uint8), depth=np.full((12, 16), 2.0, np.float32))
    return d


def test_reexported_external_view_features_are_lifted_again_and_predictions_rekeyed(tmp_path):
    from geopurify.evaluate.split import prediction_key

    d = _tiny_room(tmp_path)
    c = 5
    g = torch.Generator().manual_seed(0)
    save_view_features(d / "features" / "0.pt", feat=torch.randn(c, 12, 16, generator=g))
    text = _prompts(tmp_path / "text.pt", c, seed=4)
    cfg = load_config(
        None,
        {"lift": {"vlm": "external", "text_path": str(text), "image_size": [16, 12], "border": 0, "fusion": "mean"}},
    )
    scene = load_scene(d)
    first = cached_lift(scene, cfg, lambda: build_vlm(cfg), tmp_path / "cache")
    key = prediction_key(scene, cfg, "digest", ("raw",))
    _rewrite(
        d / "features" / "0.pt",
        lambda: save_view_features(d / "features" / "0.pt", feat=torch.randn(c, 12, 16, generator=g)),
    )
    again = cached_lift(scene, cfg, lambda: build_vlm(cfg), tmp_path / "cache")
    assert first.seen.all() and not torch.equal(again.feat, first.feat)
    torch.testing.assert_close(again.feat, lift_scene(scene, build_vlm(cfg), cfg).feat.half().float())
    assert prediction_key(scene, cfg, "digest", ("raw",)) != key
    # a changed point file re-keys both, even before the scene is reloaded
    key = prediction_key(scene, cfg, "digest", ("raw",))
    path = lift_cache_path(scene, cfg, tmp_path / "cache")
    pts = d / "points_xyzrgb.npy"
    _rewrite(pts, lambda: np.save(pts, np.load(pts)[::-1].copy()))
    assert (
        prediction_key(scene, cfg, "digest", ("raw",)) != key
        and lift_cache_path(scene, cfg, tmp_path / "cache") != path
    )


class _FileTeacher:
    """A teacher whose output depends on a checkpoint file (like Sonata's): its bytes seed the rows."""

    name, stand_in, dim = "file-teacher", True, 4

    def __init__(self, ckpt: Path):
        self.ckpt = str(ckpt)
        self._calls = 0

    def embed(self, scene):
        self._calls += 1
        seed = int.from_bytes(Path(self.ckpt).read_bytes()[:4], "little")
        g = torch.Generator().manual_seed(seed)
        return torch.nn.functional.normalize(torch.randn(scene.n_points, self.dim, generator=g), dim=1)


def test_teacher_cache_follows_its_checkpoint_and_precision(tmp_path):
    ckpt = tmp_path / "teacher.pth"
    ckpt.write_bytes((1).to_bytes(4, "little") * 8)
    scene = Scene("s", np.random.default_rng(1).uniform(0, 1, (40, 3)).astype(np.float32), np.zeros((40, 3), np.uint8))
    t = _FileTeacher(ckpt)
    a = cached_teacher(scene, t, tmp_path / "cache")
    assert torch.equal(cached_teacher(scene, t, tmp_path / "cache"), a) and t._calls == 1
    _rewrite(ckpt, lambda: ckpt.write_bytes((2).to_bytes(4, "little") * 8))  # a new checkpoint, same path
    b = cached_teacher(scene, t, tmp_path / "cache")
    assert t._calls == 2 and not torch.allclose(a, b, atol=1e-2)
    # float32 cache: a file of its own, holding float32, returning the teacher's exact (unit) rows
    p16 = teacher_cache_path(scene, t, tmp_path / "cache", "float16")
    p32 = teacher_cache_path(scene, t, tmp_path / "cache", "float32")
    assert p16 != p32
    c = cached_teacher(scene, t, tmp_path / "cache", "float32")
    assert torch.load(p32, weights_only=True)["feat"].dtype == torch.float32
    assert torch.load(p16, weights_only=True)["feat"].dtype == torch.float16
    assert torch.equal(c, torch.nn.functional.normalize(t.embed(scene), dim=1))
    assert not torch.equal(c, b) and torch.allclose(c, b, atol=2e-3)  # float16 rounds
    with pytest.raises(InputError, match="teacher.cache_dtype"):
        cached_teacher(scene, t, tmp_path / "cache", "bfloat16")

"""Size caps of the lift and teacher caches: least-recently-used eviction (geopurify.diskcache)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify import diskcache
from geopurify.config import load_config
from geopurify.data.scene import Scene
from geopurify.diskcache import GB, enforce_cap
from geopurify.errors import InputError
from geopurify.lift import cache as lift_cache
from geopurify.lift.cache import cached_lift, lift_cache_path
from geopurify.teacher.cache import cached_teacher, teacher_cache_path
from geopurify.vlm import build_vlm

REPO = Path(__file__).resolve().parents[1]


def _file(d: Path, name: str, size: int, age_s: int) -> Path:
    """A cache file of `size` bytes last used `age_s` seconds before a fixed time."""
    p = d / name
    p.write_bytes(b"x" * size)
    t = 1_700_000_000 - age_s
    os.utime(p, (t, t))
    return p


def test_enforce_cap_evicts_oldest_first_keeps_the_new_file_and_temporaries(tmp_path):
    old = _file(tmp_path, "a.0.lift.pt", 100, 40)
    mid = _file(tmp_path, "b.0.lift.pt", 100, 30)
    new = _file(tmp_path, "c.0.lift.pt", 100, 20)
    just = _file(tmp_path, "d.0.lift.pt", 100, 50)  # oldest time, but the file just written: kept
    tmp = _file(tmp_path, ".e.0.lift.pt.tmp-host-1-xyz", 1000, 99)  # a write in progress: not counted, kept
    other = _file(tmp_path, "notes.txt", 1000, 99)  # not a cache file of this kind
    usage = enforce_cap(tmp_path, ".lift.pt", 250, keep=just)
    assert usage.evicted == [old, mid] and usage.evicted_bytes == 200
    assert usage.total_bytes == 200 and usage.n_files == 2
    assert new.exists() and just.exists() and tmp.exists() and other.exists()
    # no cap: nothing deleted, the size still measured
    assert enforce_cap(tmp_path, ".lift.pt", 0).total_bytes == 200 and new.exists()
    # the file just written larger than the cap alone: everything else goes, it stays
    usage = enforce_cap(tmp_path, ".lift.pt", 50, keep=new)
    assert usage.evicted == [just] and new.exists() and usage.n_files == 1


def test_enforce_cap_tolerates_files_another_process_evicted(tmp_path, monkeypatch):
    a = _file(tmp_path, "a.0.pt", 100, 40)
    b = _file(tmp_path, "b.0.pt", 100, 30)
    c = _file(tmp_path, "c.0.pt", 100, 20)
    real = diskcache._entries

    def racing(directory, suffix):
        out = real(directory, suffix)
        a.unlink()  # another rank evicts `a` between our listing and our unlink
        return out

    monkeypatch.setattr(diskcache, "_entries", racing)
    usage = enforce_cap(tmp_path, ".pt", 150, keep=c)
    assert usage.evicted == [b] and not a.exists() and not b.exists() and c.exists()
    assert usage.total_bytes == 100
    diskcache.touch(a)  # touching a vanished file is no error either


def test_cap_setting_is_range_checked():
    assert diskcache.cap_bytes("lift.cache_max_gb", None) == 0
    assert diskcache.cap_bytes("lift.cache_max_gb", 0) == 0
    assert diskcache.cap_bytes("teacher.cache_max_gb", 1.5) == int(1.5 * GB)
    with pytest.raises(InputError, match="lift.cache_max_gb"):
        diskcache.cap_bytes("lift.cache_max_gb", -1)
    with pytest.raises(InputError, match="teacher.cache_max_gb"):
        big = load_config(None, {"teacher": {"cache_max_gb": "big"}})["teacher"]["cache_max_gb"]
        diskcache.cap_bytes("teacher.cache_max_gb", big)


def _openscene_cfg(tmp_path: Path, names, n: int, c: int, cap_gb) -> dict:
    feats = tmp_path / "openscene"
    feats.mkdir(parents=True)
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(i)
        mask = torch.ones(n, dtype=torch.bool)
        torch.save({"feat": torch.randn(n, c, generator=g).half(), "mask_full": mask}, feats / f"{name}.pt")
    g = torch.Generator().manual_seed(99)
    torch.save({"prompts": ["a wall", "a chair"], "embeddings": torch.randn(2, c, generator=g)}, feats / "text.pt")
    lift = {"vlm": "openscene", "vlm_path": str(feats), "text_path": str(feats / "text.pt"), "cache_max_gb": cap_gb}
    return load_config(None, {"lift": lift})


def _scene(name: str, n: int) -> Scene:
    xyz = np.random.default_rng(len(name)).uniform(0, 1, (n, 3)).astype(np.float32)
    return Scene(name, xyz, np.zeros((n, 3), np.uint8))


def test_lift_cache_cap_evicts_least_recently_used_and_recomputes_the_same(tmp_path, caplog):
    n, c = 400, 16
    names = ["room_a", "room_b", "room_c"]
    probe = _openscene_cfg(tmp_path / "probe", names, n, c, None)
    cached_lift(_scene("room_a", n), probe, build_vlm(probe), tmp_path / "probe_cache")
    one = next((tmp_path / "probe_cache" / "lift").glob("*.lift.pt")).stat().st_size
    cfg = _openscene_cfg(tmp_path, names, n, c, 2.5 * one / GB)  # room for two scenes, not three
    assert lift_cache_path(_scene("room_a", n), cfg, "x") == lift_cache_path(
        _scene("room_a", n), {**cfg, "lift": {**cfg["lift"], "cache_max_gb": None}}, "x"
    )  # the cap is no part of the key
    built = []

    def factory():
        built.append(1)
        return build_vlm(cfg)

    scenes = {name: _scene(name, n) for name in names}
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="geopurify.diskcache"):
        first = {name: cached_lift(scenes[name], cfg, factory, cache) for name in ["room_a", "room_b"]}
    assert f"room_a wrote {one / (1 << 20):.1f} MB" in caplog.text  # bytes per scene logged
    path = {name: lift_cache_path(scenes[name], cfg, cache) for name in names}
    t = path["room_b"].stat().st_mtime
    os.utime(path["room_a"], (t - 10, t - 10))
    os.utime(path["room_b"], (t - 5, t - 5))
    assert torch.equal(cached_lift(scenes["room_a"], cfg, factory, cache).feat, first["room_a"].feat)
    assert len(built) == 2  # a hit
    with caplog.at_level(logging.INFO, logger="geopurify.diskcache"):
        cached_lift(scenes["room_c"], cfg, factory, cache)  # room_b is now the least recently used
    assert "evicted 1 least recently used" in caplog.text
    assert path["room_a"].exists() and not path["room_b"].exists() and path["room_c"].exists()
    total = sum(p.stat().st_size for p in (cache / "lift").glob("*.lift.pt"))
    assert total <= 2.5 * one
    again = cached_lift(scenes["room_b"], cfg, factory, cache)  # evicted: recomputed, the same values
    assert len(built) == 4 and torch.equal(again.feat, first["room_b"].feat)
    assert torch.equal(again.seen, first["room_b"].seen)


def test_lift_cache_file_vanishing_while_read_is_recomputed_quietly(tmp_path, monkeypatch, caplog):
    n, c = 200, 8
    cfg = _openscene_cfg(tmp_path, ["room_a"], n, c, None)
    scene = _scene("room_a", n)
    first = cached_lift(scene, cfg, build_vlm(cfg), tmp_path / "cache")
    real = lift_cache.load_lifted
    calls = []

    def evicted_first(path, **kw):
        if not calls:
            Path(path).unlink()  # another rank evicts it between our exists() and our read
        calls.append(1)
        return real(path, **kw)

    monkeypatch.setattr(lift_cache, "load_lifted", evicted_first)
    with caplog.at_level(logging.INFO):
        again = cached_lift(scene, cfg, build_vlm(cfg), tmp_path / "cache")
    assert torch.equal(again.feat, first.feat)
    assert "evicted by another process" in caplog.text and "unusable" not in caplog.text


class _Teacher:
    name, stand_in, dim = "random-teacher", True, 8

    def __init__(self):
        self._calls = 0

    def embed(self, scene):
        self._calls += 1
        g = torch.Generator().manual_seed(len(scene.name))
        return torch.randn(scene.n_points, self.dim, generator=g)


def test_teacher_cache_cap_evicts_least_recently_used(tmp_path):
    t = _Teacher()
    scenes = [_scene(name, 300) for name in ["s", "ss", "sss"]]
    cache = tmp_path / "cache"
    a = cached_teacher(scenes[0], t, cache)
    one = teacher_cache_path(scenes[0], t, cache).stat().st_size
    cap = 2.5 * one / GB
    cached_teacher(scenes[1], t, cache, max_gb=cap)
    p = [teacher_cache_path(s, t, cache) for s in scenes]
    now = p[1].stat().st_mtime
    os.utime(p[1], (now - 10, now - 10))  # scene 1 older than scene 0: scene 0 was read since
    assert torch.equal(cached_teacher(scenes[0], t, cache, max_gb=cap), a) and t._calls == 2
    cached_teacher(scenes[2], t, cache, max_gb=cap)
    assert p[0].exists() and not p[1].exists() and p[2].exists()
    with pytest.raises(InputError, match="teacher.cache_max_gb"):
        cached_teacher(scenes[0], t, cache, max_gb=-2)


_WRITER = """
import sys
from pathlib import Path
from geopurify.diskcache import after_write
from geopurify.io import write_text
d, rank = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    p = d / f"s{rank}_{i}.0.lift.pt"
    write_text(p, "x" * 4096)
    after_write(p, ".lift.pt", 5 * 4096, "lift", p.name)
"""


def test_concurrent_writers_share_a_capped_directory(tmp_path):
    """Two processes writing and evicting in one directory at once: no error, the cap holds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER), str(tmp_path), str(r)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    left = [f for f in tmp_path.iterdir()]
    assert all(not f.name.startswith(".") for f in left)  # no temporaries left behind
    assert 1 <= len(left) <= 5 and {f.name for f in left} & {"s0_39.0.lift.pt", "s1_39.0.lift.pt"}

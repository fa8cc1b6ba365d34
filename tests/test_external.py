"""External features: prompt-embedding files, OpenScene's released point features, per-view
feature files of external 2D models lifted by the project's own fusion.

Known answers come from plain definitions written here (brute-force nearest neighbours, a
pinhole projection in numpy, per-pixel loops over masks), never from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.config import load_config
from geopurify.data.labels import get_label_set
from geopurify.data.readers import load_scene
from geopurify.data.scene import Scene
from geopurify.data.writers import write_frame, write_scene
from geopurify.errors import InputError
from geopurify.lift.multiview import lift_scene
from geopurify.lift.openscene import (
    OpenSceneVLM,
    lift_from_openscene,
    load_openscene_features,
    openscene_files,
    read_openscene_file,
)
from geopurify.vlm import build_vlm
from geopurify.vlm.external import ExternalVLM, mask_owner, read_view_features, save_view_features
from geopurify.vlm.prompts import PrecomputedVLM, load_prompt_embeddings, text_source
from geopurify.vlm.text import text_embeddings

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet" / "scene0000_00"


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


def _brute_nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Index into src of each dst point's nearest src point (plain O(N M) distances)."""
    d = ((dst[:, None, :].astype(np.float64) - src[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


# ------------------------------------------------------------------ prompt embeddings


def _write_prompt_pt(path: Path, prompts: list[str], emb: torch.Tensor) -> Path:
    torch.save({"prompts": prompts, "embeddings": emb}, path)
    return path


def test_prompt_file_layouts_agree_and_lookup_follows_the_request_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    prompts = [f"a {c} in a scene" for c in ("wall", "floor", "chair", "table")]
    emb = torch.randn(4, 6, generator=g)
    a = _write_prompt_pt(tmp_path / "a.pt", prompts, emb.half())
    np.save(tmp_path / "b.npy", emb.numpy())
    (tmp_path / "b.txt").write_text("\n".join(prompts) + "\n\n")
    torch.save(emb, tmp_path / "c.pt")
    (tmp_path / "c.txt").write_text("\n".join(prompts))
    want = emb[[2, 0]] / emb[[2, 0]].norm(dim=1, keepdim=True)
    for f, tol in ((a, 2e-3), (tmp_path / "b.npy", 1e-6), (tmp_path / "c.pt", 1e-6)):
        vlm = PrecomputedVLM(f)
        assert vlm.dim == 6 and not vlm.simulated
        got = vlm.encode_text(["a chair in a scene", " a wall in a scene"])
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
        torch.testing.assert_close(got.norm(dim=1), torch.ones(2))
    with pytest.raises(InputError) as e:
        PrecomputedVLM(a).encode_text(["a chair in a scene", "a sofa in a scene"])
    assert str(a) in str(e.value) and "a sofa in a scene" in str(e.value)
    with pytest.raises(InputError):
        PrecomputedVLM(a).frame_features(
            Scene("s", np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)), 0, (8, 8)
        )


def test_prompt_file_serves_a_label_set(tmp_path):
    ls = get_label_set("scannet20")
    prompts = ls.prompts("a {} in a scene")
    emb = torch.randn(len(prompts), 5, generator=torch.Generator().manual_seed(1))
    vlm = PrecomputedVLM(_write_prompt_pt(tmp_path / "t.pt", prompts[::-1], emb.flip(0)))
    torch.testing.assert_close(text_embeddings(vlm, ls, "a {} in a scene"), emb / emb.norm(dim=1, keepdim=True))


@pytest.mark.parametrize(
    "case",
    [
        "no_sidecar",
        "rows",
        "duplicate",
        "nan",
        "zero_row",
        "garbage",
        "suffix",
        "not_dict_or_tensor",
        "missing_key",
        "blank_line",
    ],
)
def test_bad_prompt_files_raise_input_error(tmp_path, case):
    emb = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    p = tmp_path / "t.pt"
    prompts = ["x", "y", "z"]
    if case == "no_sidecar":
        torch.save(emb, p)
    elif case == "rows":
        _write_prompt_pt(p, prompts[:2], emb)
    elif case == "duplicate":
        _write_prompt_pt(p, ["x", "y", "x"], emb)
    elif case == "nan":
        emb[1, 2] = float("nan")
        _write_prompt_pt(p, prompts, emb)
    elif case == "zero_row":
        emb[2] = 0
        _write_prompt_pt(p, prompts, emb)
    elif case == "garbage":
        p.write_bytes(b"\x00not a torch file")
    elif case == "suffix":
        p = tmp_path / "t.csv"
        p.write_text("1,2\n")
    elif case == "not_dict_or_tensor":
        torch.save([1, 2, 3], p)
    elif case == "missing_key":
        torch.save({"prompts": prompts}, p)
    elif case == "blank_line":
        torch.save(emb, p)
        (tmp_path / "t.txt").write_text("x\n\nz\n")
    with pytest.raises(InputError) as e:
        load_prompt_embeddings(p)
    assert str(p.name) in str(e.value) or "t.txt" in str(e.value)


def test_text_source_rejects_a_plain_directory(tmp_path):
    with pytest.raises(InputError):
        text_source(tmp_path)


# ------------------------------------------------------------------ OpenScene point features


def _openscene_file(path: Path, bank: torch.Tensor, mask: torch.Tensor) -> Path:
    """A file as OpenScene's save_fused_feature writes it: rows of the masked points, in order."""
    torch.save({"feat": bank[mask].half(), "mask_full": mask}, path)
    return path


def _cloud(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 2, size=(n, 3)).astype(np.float32)


def test_openscene_rows_follow_the_mask_and_unseen_points_take_the_nearest_seen_feature(tmp_path):
    n, c = 400, 12
    xyz = _cloud(n, 3)
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(n, c, generator=g)
    mask = torch.rand(n, generator=g) < 0.4
    f = _openscene_file(tmp_path / "s_0.pt", bank, mask)
    feat, m = read_openscene_file(f, n_points=n, dim=c)
    assert torch.equal(m, mask) and torch.equal(feat, bank[mask].half())
    res = load_openscene_features(f, n, xyz=xyz, dim=c)
    want = bank.half().float().numpy()
    seen = mask.numpy()
    assert torch.equal(res.seen, mask) and torch.equal(res.n_views, mask.long())
    np.testing.assert_array_equal(res.feat.numpy()[seen], want[seen])
    src = np.flatnonzero(seen)
    nn = src[_brute_nearest(xyz[src], xyz[~seen])]
    np.testing.assert_array_equal(res.feat.numpy()[~seen], want[nn])
    assert res.info["vlm"] == "openscene" and res.info["simulated"] is False


def test_openscene_samples_of_one_scene_merge_into_a_larger_mask(tmp_path):
    n, c = 300, 8
    xyz = _cloud(n, 4)
    g = torch.Generator().manual_seed(4)
    bank = torch.randn(n, c, generator=g)
    visible = torch.rand(n, generator=g) < 0.7  # seen by some view
    masks = [visible & (torch.rand(n, generator=g) < 0.5) for _ in range(3)]  # random chunks, as the release
    for i, m in enumerate(masks):
        _openscene_file(tmp_path / f"scene0001_00_{i}.pt", bank, m)
    _openscene_file(tmp_path / "scene0001_001_0.pt", torch.zeros(n, c), torch.ones(n, dtype=torch.bool))  # other scene
    (tmp_path / "scene0001_00_vh_clean_2.pt").write_bytes(b"not features")
    scene = Scene("scene0001_00", xyz, np.zeros((n, 3), np.uint8))
    assert [p.name for p in openscene_files(tmp_path, scene.name)] == [f"scene0001_00_{i}.pt" for i in range(3)]
    res = lift_from_openscene(scene, tmp_path, dim=c)
    union = masks[0] | masks[1] | masks[2]
    assert torch.equal(res.seen, union)
    torch.testing.assert_close(res.feat[union], bank.half().float()[union], rtol=0, atol=0)
    one = lift_from_openscene(scene, tmp_path, sample=1)
    assert torch.equal(one.seen, masks[1])
    with pytest.raises(InputError):
        lift_from_openscene(scene, tmp_path, sample=7)


def test_openscene_legacy_layout_with_visibility_rows(tmp_path):
    n, c = 50, 4
    g = torch.Generator().manual_seed(5)
    chunk = torch.rand(n, generator=g) < 0.6
    rows = torch.rand(int(chunk.sum()), generator=g) < 0.5  # which chunk rows were seen
    feat = torch.randn(int(chunk.sum()), c, generator=g)
    torch.save({"feat": feat.half(), "mask": rows, "mask_full": chunk}, tmp_path / "old.pt")
    got, m = read_openscene_file(tmp_path / "old.pt", n_points=n)
    want_mask = torch.zeros(n, dtype=torch.bool)
    chunk_idx = [i for i in range(n) if chunk[i]]
    for r, i in enumerate(chunk_idx):
        want_mask[i] = bool(rows[r])
    assert torch.equal(m, want_mask)
    assert torch.equal(got, feat.half()[rows])
    torch.save({"feat": feat.half(), "mask": rows.nonzero().flatten(), "mask_full": chunk}, tmp_path / "idx.pt")
    got2, m2 = read_openscene_file(tmp_path / "idx.pt", n_points=n)
    assert torch.equal(m2, want_mask) and torch.equal(got2, got)


@pytest.mark.parametrize("case", ["points", "dim", "nan", "rows", "garbage", "keys", "float_mask", "missing"])
def test_bad_openscene_files_raise_input_error(tmp_path, case):
    n, c = 40, 6
    g = torch.Generator().manual_seed(6)
    bank = torch.randn(n, c, generator=g)
    mask = torch.rand(n, generator=g) < 0.5
    p = tmp_path / "s_0.pt"
    n_points, dim = n, c
    if case == "points":
        _openscene_file(p, bank, mask)
        n_points = n + 1
    elif case == "dim":
        _openscene_file(p, bank, mask)
        dim = 768
    elif case == "nan":
        bank[mask.nonzero()[0, 0], 1] = float("nan")
        _openscene_file(p, bank, mask)
    elif case == "rows":
        torch.save({"feat": bank[:3].half(), "mask_full": mask}, p)
    elif case == "garbage":
        p.write_bytes(b"PK\x03\x04 truncated")
    elif case == "keys":
        torch.save({"features": bank.half()}, p)
    elif case == "float_mask":
        torch.save({"feat": bank[mask].half(), "mask_full": mask.float() * 0.5}, p)
    elif case == "missing":
        p = tmp_path / "absent_0.pt"
    with pytest.raises(InputError) as e:
        load_openscene_features(p, n_points, xyz=_cloud(n_points, 0), dim=dim)
    assert p.name in str(e.value)


@pytest.mark.skipif(not (REAL / "points_xyzrgb.npy").is_file(), reason="real ScanNet test data not available")
def test_openscene_nearest_fill_on_a_real_scan_transfers_labels(tmp_path):
    """Real ScanNet points (81k): features = one-hot ScanNet-20 class of the seen 30%; after the
    nearest fill, the unseen points' argmax class is their true class for most points (nearest
    neighbour label transfer on a dense scan), and the scene reader's point order is the file's."""
    scene = load_scene(REAL)
    ls = get_label_set("scannet20")
    cls = ls.map(scene.labels)
    n = scene.n_points
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(n, generator=g) < 0.3) & torch.from_numpy(cls >= 0)
    bank = torch.zeros(n, len(ls.names))
    ok = cls >= 0
    bank[torch.from_numpy(np.flatnonzero(ok)), torch.from_numpy(cls[ok])] = 1.0
    _openscene_file(tmp_path / f"{scene.name}_0.pt", bank, mask)
    res = lift_from_openscene(scene, tmp_path, dim=len(ls.names))
    pred = res.feat.argmax(1).numpy()
    unseen_lab = ~mask.numpy() & ok
    acc = float((pred[unseen_lab] == cls[unseen_lab]).mean())
    assert acc > 0.9, acc
    assert np.array_equal(pred[mask.numpy()], cls[mask.numpy()])
    sub = np.flatnonzero(~mask.numpy())[::400]  # spot-check the kd-tree against brute force
    src = np.flatnonzero(mask.numpy())
    nn = src[_brute_nearest(scene.xyz[src], scene.xyz[sub])]
    same = np.all(res.feat.numpy()[sub] == bank.numpy()[nn], axis=1)
    assert same.mean() > 0.99  # equidistant ties may pick another point of another class


def test_openscene_vlm_from_config(tmp_path):
    n, c = 60, 5
    xyz = _cloud(n, 8)
    g = torch.Generator().manual_seed(8)
    bank = torch.randn(n, c, generator=g)
    mask = torch.rand(n, generator=g) < 0.5
    _openscene_file(tmp_path / "room_0.pt", bank, mask)
    prompts = ["a wall in a scene", "a chair in a scene"]
    _write_prompt_pt(tmp_path / "text_embeddings.pt", prompts, torch.randn(2, c, generator=g))
    cfg = load_config(None, {"lift": {"vlm": "openscene", "vlm_path": str(tmp_path)}})
    vlm = build_vlm(cfg)
    assert isinstance(vlm, OpenSceneVLM) and vlm.dim == c and vlm.lifts_points
    assert vlm.encode_text(prompts[::-1]).shape == (2, c)
    scene = Scene("room", xyz, np.zeros((n, 3), np.uint8))
    torch.testing.assert_close(vlm.lift(scene).feat, lift_from_openscene(scene, tmp_path).feat)
    with pytest.raises(InputError):
        vlm.frame_features(scene, 0, (8, 8))
    with pytest.raises(InputError):
        build_vlm(load_config(None, {"lift": {"vlm": "openscene", "vlm_path": str(tmp_path / "nope")}}))
    with pytest.raises(InputError):
        build_vlm(load_config(None, {"lift": {"vlm": "openscene"}}))


# ------------------------------------------------------------------ per-view external features

H, W, F, Z = 48, 64, 32.0, 2.0  # image size, focal length (pixels), plane depth (metres)
CX, CY = (W - 1) / 2, (H - 1) / 2
BORDER = 2
SHIFTS = (0.0, 0.125)  # camera x positions: the second view sees every point 2 pixels further left


def _tiny_scene(root: Path) -> Path:
    """A plane of points at z = 2 m, one point on every pixel centre of view 0 (and a margin
    outside it), seen by two cameras with constant-depth frames."""
    cols, rows = np.meshgrid(np.arange(-4, W + 4), np.arange(-4, H + 4))
    x = (cols.ravel() - CX) * Z / F
    y = (rows.ravel() - CY) * Z / F
    xyz = np.stack([x, y, np.full_like(x, Z)], 1).astype(np.float32)
    d = root / "tiny"
    write_scene(d, xyz, np.full((len(xyz), 3), 128, np.uint8))
    K = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]])
    for k, sx in enumerate(SHIFTS):
        pose = np.eye(4)
        pose[0, 3] = sx
        write_frame(d, k, pose, K, color=np.full((H, W, 3), 100, np.uint8), depth=np.full((H, W), Z, np.float32))
    return d


def _pixels(xyz: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(col, row, inside-the-border mask) of each point in the view at camera x = shift."""
    u = F * (xyz[:, 0].astype(np.float64) - shift) / xyz[:, 2] + CX
    v = F * xyz[:, 1].astype(np.float64) / xyz[:, 2] + CY
    c, r = np.round(u).astype(int), np.round(v).astype(int)
    ok = (c >= BORDER) & (c < W - BORDER) & (r >= BORDER) & (r < H - BORDER)
    return c, r, ok


def _expected(xyz: np.ndarray, maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over views of the (C, h, w) map cell under each point's pixel; seen mask."""
    total = np.zeros((len(xyz), maps[0].shape[0]))
    count = np.zeros(len(xyz))
    for shift, m in zip(SHIFTS, maps):
        c, r, ok = _pixels(xyz, shift)
        h, w = m.shape[1:]
        cell_c = np.floor((c + 0.5) * w / W).astype(int)
        cell_r = np.floor((r + 0.5) * h / H).astype(int)
        total[ok] += m[:, cell_r[ok], cell_c[ok]].T
        count[ok] += 1
    seen = count > 0
    total[seen] /= count[seen, None]
    return total, seen


def _cfg():
    return load_config(None, {"lift": {"image_size": [W, H], "border": BORDER, "fusion": "mean"}})


def _text(tmp_path: Path, c: int) -> Path:
    g = torch.Generator().manual_seed(9)
    return _write_prompt_pt(
        tmp_path / "text.pt", ["a wall in a scene", "a chair in a scene"], torch.randn(2, c, generator=g)
    )


@pytest.mark.parametrize("map_hw", [(2 * H, 2 * W), (H, W), (H // 2, W // 2), (H // 8, W // 8)])
def test_external_feature_maps_lift_to_their_pixels(tmp_path, map_hw):
    d = _tiny_scene(tmp_path)
    c = 7
    g = torch.Generator().manual_seed(10)
    maps = [torch.randn(c, *map_hw, generator=g) for _ in SHIFTS]
    for k, m in enumerate(maps):
        save_view_features(d / "features" / f"{k}.pt", feat=m)
    scene = load_scene(d)
    vlm = ExternalVLM(_text(tmp_path, c))
    res = lift_scene(scene, vlm, _cfg())
    stored = [_unit(m.half().float().numpy(), axis=0) for m in maps]  # float16 on disk, unit per pixel
    want, seen = _expected(scene.xyz, stored)
    assert seen.any() and (~seen).any()
    np.testing.assert_array_equal(res.seen.numpy(), seen)
    np.testing.assert_allclose(res.feat.numpy()[seen], want[seen], atol=1e-5)
    assert res.info["simulated"] is False and res.info["frames_with_depth"] == 2


def _masks_and_expectation(kind: str, g: torch.Generator, m: int):
    """Masks of one view in format `kind` and the per-pixel owner by a plain loop (-1: none)."""
    if kind == "ids":
        ids = torch.randint(-1, m, (H, W), generator=g)
        return {"masks": ids}, ids.numpy()
    if kind == "binary":
        masks = torch.rand(m, H, W, generator=g) < 0.35
        scores = torch.rand(m, generator=g)
        owner = np.full((H, W), -1)
        for r in range(H):
            for col in range(W):
                best = -np.inf
                for i in range(m):
                    if masks[i, r, col] and scores[i] > best:
                        best, owner[r, col] = float(scores[i]), i
        return {"masks": masks, "scores": scores}, owner
    if kind == "binary_noscores":
        masks = (torch.rand(m, H, W, generator=g) < 0.35).to(torch.uint8)
        owner = np.full((H, W), -1)
        for r in range(H):
            for col in range(W):
                hits = [i for i in range(m) if masks[i, r, col]]
                owner[r, col] = hits[0] if hits else -1
        return {"masks": masks}, owner
    if kind == "soft":  # X-Decoder: argmax over masks of class score x sigmoid(mask logit)
        prob = torch.sigmoid(torch.randn(m, H, W, generator=g) * 3)
        scores = torch.rand(m, generator=g)
        stored = prob.half().float()
        owner = np.zeros((H, W), int)
        for r in range(H):
            for col in range(W):
                owner[r, col] = int(np.argmax([float(scores[i]) * float(stored[i, r, col]) for i in range(m)]))
        return {"masks": prob, "scores": scores}, owner
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["ids", "binary", "binary_noscores", "soft"])
def test_mask_owner_matches_a_per_pixel_loop(kind):
    g = torch.Generator().manual_seed(11)
    kw, owner = _masks_and_expectation(kind, g, 5)
    masks = kw["masks"].half() if kw["masks"].is_floating_point() else kw["masks"]
    got = mask_owner(masks, kw.get("scores"), 5, "x.pt")
    np.testing.assert_array_equal(got.numpy(), owner)


@pytest.mark.parametrize("kind", ["ids", "binary", "soft"])
def test_external_mask_embeddings_lift_to_the_owning_mask(tmp_path, kind):
    d = _tiny_scene(tmp_path)
    c, m = 6, 5
    g = torch.Generator().manual_seed(12)
    maps = []
    for k in range(len(SHIFTS)):
        emb = torch.randn(m, c, generator=g)
        kw, owner = _masks_and_expectation(kind, g, m)
        save_view_features(d / "features" / f"{k}.pt", mask_embeddings=emb, **kw)
        e = _unit(emb.half().float().numpy())
        painted = np.zeros((c, H, W))
        painted[:, owner >= 0] = e[owner[owner >= 0]].T
        maps.append(painted)
    scene = load_scene(d)
    res = lift_scene(scene, ExternalVLM(_text(tmp_path, c)), _cfg())
    want, seen = _expected(scene.xyz, maps)
    np.testing.assert_array_equal(res.seen.numpy(), seen)
    np.testing.assert_allclose(res.feat.numpy()[seen], want[seen], atol=1e-5)


def test_full_resolution_masks_give_the_same_lift_as_masks_at_the_lift_size(tmp_path):
    """Masks at 2x the lift resolution are resized before painting; lifting must read the same
    cells it would read from the full-resolution map (pixel-centre nearest sampling)."""
    g = torch.Generator().manual_seed(13)
    c, m = 4, 3
    ids = torch.randint(0, m, (2 * H, 2 * W), generator=g)
    emb = torch.randn(m, c, generator=g)
    save_view_features(tmp_path / "big.pt", mask_embeddings=emb, masks=ids)
    small = read_view_features(tmp_path / "big.pt", c, (H, W))
    assert small.shape == (c, H, W)
    e = _unit(emb.half().float().numpy())
    full = e[ids.numpy()].transpose(2, 0, 1)  # (C, 2H, 2W) painted at full resolution
    rows = np.floor((np.arange(H) + 0.5) * 2 * H / H).astype(int)
    cols = np.floor((np.arange(W) + 0.5) * 2 * W / W).astype(int)
    np.testing.assert_allclose(small.numpy(), full[:, rows][:, :, cols], atol=1e-6)


def test_external_feature_root_layout_and_errors(tmp_path):
    d = _tiny_scene(tmp_path)
    c = 3
    root = tmp_path / "root"
    g = torch.Generator().manual_seed(14)
    for k in range(len(SHIFTS)):
        save_view_features(root / "tiny" / f"{k}.pt", feat=torch.randn(c, H // 4, W // 4, generator=g))
    scene = load_scene(d)
    text = _text(tmp_path, c)
    vlm = ExternalVLM(text, feature_root=root)
    assert vlm.frame_features(scene, 1, (H, W)).shape == (c, H // 4, W // 4)
    # config route: vlm_path = feature root, text embeddings inside it
    torch.save(torch.load(text), root / "text_embeddings.pt")
    cfg = load_config(None, {"lift": {"vlm": "external", "vlm_path": str(root)}})
    assert isinstance(build_vlm(cfg), ExternalVLM)
    with pytest.raises(InputError):  # scene-relative default: <scene>/features/ does not exist
        ExternalVLM(text).frame_features(scene, 0, (H, W))
    bad = root / "tiny" / "0.pt"
    save_view_features(bad, feat=torch.randn(c + 1, 6, 8))
    with pytest.raises(InputError) as e:
        vlm.frame_features(scene, 0, (H, W))
    assert "0.pt" in str(e.value) and "channels" in str(e.value)
    save_view_features(bad, feat=torch.randn(c, 8, 6))  # portrait map for a landscape image
    with pytest.raises(InputError) as e:
        vlm.frame_features(scene, 0, (H, W))
    assert "aspect" in str(e.value)
    save_view_features(bad, mask_embeddings=torch.randn(2, c), masks=torch.full((H, W), 5))
    with pytest.raises(InputError):
        vlm.frame_features(scene, 0, (H, W))
    torch.save({"feat": torch.full((c, 6, 8), float("nan"))}, bad)
    with pytest.raises(InputError):
        vlm.frame_features(scene, 0, (H, W))
    bad.write_bytes(b"junk")
    with pytest.raises(InputError):
        vlm.frame_features(scene, 0, (H, W))
    torch.save({"something": torch.zeros(2)}, bad)
    with pytest.raises(InputError):
        vlm.frame_features(scene, 0, (H, W))
    with pytest.raises(InputError):
        build_vlm(load_config(None, {"lift": {"vlm": "external"}}))  # no text side at all


def test_background_prompt_scores_masks_as_the_reference_and_is_never_a_label(tmp_path):
    """lift.background_prompt: mask confidences recomputed as the reference's X-Decoder fusion does
    (softmax over the label set's prompts + "background", background column dropped, max); a
    background-like mask then loses the pixels it covered, and no label can be the background."""
    from geopurify.lift.cache import lift_settings
    from geopurify.vlm import build_vlm
    from geopurify.vlm.external import reference_mask_scores

    d = _tiny_scene(tmp_path)
    labels = get_label_set("scannet20")
    c = 8
    g = torch.Generator().manual_seed(15)
    prompts = labels.prompts("a {} in a scene") + ["background"]
    text = torch.nn.functional.normalize(torch.randn(len(prompts), c, generator=g), dim=1)
    _write_prompt_pt(tmp_path / "text.pt", prompts, text)
    chair = labels.index("chair")
    emb = torch.stack([text[-1] + 0.05 * text[chair], text[chair]])  # mask 0 looks like background
    masks = torch.stack([torch.full((H, W), 0.9), torch.full((H, W), 0.6)])  # mask 0 more certain
    for k in range(len(SHIFTS)):
        save_view_features(d / "features" / f"{k}.pt", mask_embeddings=emb, masks=masks)
    over = {"vlm": "external", "text_path": str(tmp_path / "text.pt"), "image_size": [W, H], "border": BORDER}
    plain = load_config(None, {"lift": {**over, "fusion": "consensus"}})
    ref = load_config(None, {"lift": {**over, "fusion": "consensus", "background_prompt": "background"}})
    scene = load_scene(d)
    e = _unit(emb.half().float().numpy())
    # without: mask 0 owns every pixel (no file scores: 0.9 > 0.6)
    vlm = build_vlm(plain)
    np.testing.assert_allclose(vlm.frame_features(scene, 0, (H, W))[:, 0, 0].numpy(), e[0], atol=1e-6)
    # with: the hand formula of the reference's mask confidence, and mask 1 wins
    vlm = build_vlm(ref)
    logits = 100.0 * torch.from_numpy(e).float() @ text.T
    want = logits.softmax(1)[:, :-1].max(1).values
    torch.testing.assert_close(reference_mask_scores(emb.half().float(), text, 100.0), want)
    assert want[0] * 0.9 < want[1] * 0.6
    assert vlm.mask_text.shape == (len(prompts), c)
    res = lift_scene(scene, vlm, ref)
    np.testing.assert_allclose(
        res.feat.numpy()[res.seen.numpy()], np.broadcast_to(e[1], (int(res.seen.sum()), c)), atol=1e-5
    )
    # the background is in the mask scoring only: classification and consensus use the label set's prompts
    cls = text_embeddings(vlm, labels)
    assert cls.shape[0] == labels.n_classes and (res.feat @ cls.T).argmax(1).eq(chair).all()
    assert lift_settings(ref) != lift_settings(plain) and "label_set" in lift_settings(ref)
    with pytest.raises(InputError, match="background_prompt"):
        build_vlm(load_config(None, {"lift": {"background_prompt": "background"}}))  # simulated: no masks
    torch.save(
        {"feat": torch.randn(c, 6, 8, generator=g), "mask_embeddings": emb.half(), "masks": masks},
        d / "features" / "0.pt",
    )  # both: the masks are scored, the dense map is not used
    np.testing.assert_allclose(vlm.frame_features(scene, 0, (H, W))[:, 3, 5].numpy(), e[1], atol=1e-6)
    save_view_features(d / "features" / "0.pt", feat=torch.randn(c, 6, 8, generator=g))
    with pytest.raises(InputError, match="no 'mask_embeddings'"):
        vlm.frame_features(scene, 0, (H, W))
    _write_prompt_pt(tmp_path / "text.pt", prompts[:-1], text[:-1])  # no background embedding in the file
    with pytest.raises(InputError, match="background"):
        build_vlm(ref)

"""The simulated VLM (an offline stand-in) and the shared text side.

Uses the real all-MiniLM-L6-v2 encoder (loaded once per module) and the real ScanNet scenes
under ../shared/data for the z-buffer-rendered views.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from geopurify.config import defaults
from geopurify.data.labels import get_label_set
from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError
from geopurify.ops.resize import resize_nearest
from geopurify.standins.simulated_vlm import (
    SimulatedVLM,
    close_class_probs,
    corrupt_classes,
    features_from_fractions,
    object_map,
    patch_fractions,
)
from geopurify.vlm import build_vlm, text_embeddings
from geopurify.vlm.text import MiniLMTextEncoder, prompts_for

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet"
HW = (240, 320)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder()


@pytest.fixture(scope="module")
def labels20():
    return get_label_set("scannet20")


def sim_cfg(**vlm_sim) -> dict:
    cfg = defaults()
    cfg["vlm_sim"].update(vlm_sim)
    return cfg


OFF = dict(confusion_prob=0.0, mask_error_prob=0.0, noise_std=0.0)


class ArrayFrame(Frame):
    """A frame whose label image is held in memory (a stand-in for a procedural room's label PNG)."""

    def __init__(self, name: str, labels: np.ndarray):
        super().__init__(name=name, pose=np.eye(4), intrinsic=np.eye(3))
        self._labels = labels

    def label_image(self) -> np.ndarray:
        return self._labels


def blocks_scene(n_frames: int = 6, seed: int = 0, hw=HW) -> Scene:
    """Label images made of random axis-aligned boxes of NYU40 ids (0 = unannotated background)."""
    rng = np.random.default_rng(seed)
    ids = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
    frames = []
    for k in range(n_frames):
        img = np.zeros(hw, np.int32)
        for _ in range(14):
            r0, c0 = rng.integers(0, hw[0] - 20), rng.integers(0, hw[1] - 20)
            h, w = rng.integers(12, hw[0] // 2), rng.integers(12, hw[1] // 2)
            img[r0 : r0 + h, c0 : c0 + w] = rng.choice(ids)
        frames.append(ArrayFrame(str(k), img))
    xyz = np.zeros((1, 3), np.float32)
    return Scene(name=f"blocks{seed}", xyz=xyz, rgb=np.zeros((1, 3), np.uint8), frames=frames)


def load_scannet(name: str, with_frames: bool) -> Scene:
    d = DATA / name
    p = np.load(d / "points_xyzrgb.npy")
    frames = []
    if with_frames:
        align = np.loadtxt(d / "axis_align_matrix.txt").reshape(4, 4)
        K = np.loadtxt(d / "intrinsic" / "intrinsic_color.txt")[:3, :3]
        for k in sorted(int(f.stem) for f in (d / "pose").glob("*.txt")):
            frames.append(
                Frame(
                    name=str(k),
                    pose=align @ np.loadtxt(d / "pose" / f"{k}.txt"),
                    intrinsic=K,
                    color_path=d / "color" / f"{k}.jpg",
                )
            )
    return Scene(
        name=name,
        xyz=p[:, :3].astype(np.float32),
        rgb=p[:, 3:].astype(np.uint8),
        labels=np.load(d / "labels_nyu40.npy"),
        instances=np.load(d / "instances.npy"),
        frames=frames,
        path=d,
    )


def with_virtual_frames(scene: Scene, n: int, seed: int = 0) -> Scene:
    from geopurify.data.cameras import virtual_frames

    scene.frames = virtual_frames(scene.xyz, n, image_hw=HW, seed=seed)
    return scene


def pixel_argmax(fmap: torch.Tensor, class_emb: torch.Tensor, hw) -> np.ndarray:
    """Argmax class of each image pixel, read from the coarse map cell holding its centre."""
    C, h, w = fmap.shape
    H, W = hw
    scores = torch.einsum("chw,kc->hwk", fmap, class_emb).argmax(-1).numpy()
    r = (2 * np.arange(H) + 1) * h // (2 * H)
    c = (2 * np.arange(W) + 1) * w // (2 * W)
    return scores[r[:, None], c[None, :]]


# ---------------------------------------------------------------- text side


def test_text_embeddings_are_unit_and_semantic(encoder, labels20):
    vlm = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    T = text_embeddings(vlm, labels20)
    assert T.shape == (20, 384) and T.dtype == torch.float32
    assert torch.allclose(T.norm(dim=1), torch.ones(20), atol=1e-5)
    # same as encoding the prompts directly; the label set's prompt wording is used ("other" furniture)
    prompts = prompts_for(labels20)
    assert prompts[labels20.index("otherfurniture")] == "a other in a scene"
    assert torch.allclose(T, encoder.encode(prompts), atol=1e-6)
    # a real sentence encoder: chair is closer to sofa than to toilet
    i = labels20.index
    assert T[i("chair")] @ T[i("sofa")] > T[i("chair")] @ T[i("toilet")] + 0.1
    names = ["lamp", "pillow"]
    assert torch.allclose(
        text_embeddings(vlm, names, "a photo of a {}"),
        encoder.encode(["a photo of a lamp", "a photo of a pillow"]),
        atol=1e-6,
    )


def test_text_cache_equals_a_fresh_encoding_and_skips_the_model_load(tmp_path, monkeypatch):
    """A prompt list is encoded once: a new process reads it from the text cache without loading
    sentence-transformers, bit for bit the same; on one thread whatever the process's count; a
    corrupt cache file is encoded again; GEOPURIFY_TEXT_CACHE=off keeps nothing."""
    import subprocess
    import sys

    from tests.support import cli_env

    prompts = ["a chair in a scene", "a sofa in a scene", "a toilet in a scene"]
    monkeypatch.setenv("GEOPURIFY_TEXT_CACHE", str(tmp_path / "text"))
    torch.set_num_threads(2)
    try:
        fresh = MiniLMTextEncoder().encode(prompts)
    finally:
        torch.set_num_threads(1)
    files = list((tmp_path / "text").glob("minilm.*.pt"))
    assert len(files) == 1
    code = (
        "import sys, torch; from geopurify.vlm.text import MiniLMTextEncoder; "
        f"e = MiniLMTextEncoder().encode({prompts!r}); torch.save(e, sys.argv[1]); "
        "print('sentence_transformers' in sys.modules)"
    )
    env = {**cli_env(), "GEOPURIFY_TEXT_CACHE": str(tmp_path / "text")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e.pt")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"  # read from the cache: the model was never loaded
    assert torch.equal(torch.load(tmp_path / "e.pt"), fresh)
    # another list is its own entry (batch composition changes the last bits, so rows are not shared)
    torch.testing.assert_close(MiniLMTextEncoder().encode(prompts[:2]), fresh[:2], atol=1e-5, rtol=0)
    assert len(list((tmp_path / "text").glob("minilm.*.pt"))) == 2
    files[0].write_bytes(b"not a torch file")
    assert torch.equal(MiniLMTextEncoder().encode(prompts), fresh)
    assert torch.equal(torch.load(files[0])["emb"], fresh)  # encoded again and rewritten
    monkeypatch.setenv("GEOPURIFY_TEXT_CACHE", "off")
    for f in (tmp_path / "text").glob("*.pt"):
        f.unlink()
    assert torch.equal(MiniLMTextEncoder().encode(prompts), fresh)
    assert not list((tmp_path / "text").glob("*.pt"))


@pytest.mark.parametrize("bad", ["no placeholder", "{} and {}"])
def test_prompt_template_must_have_one_placeholder(bad):
    with pytest.raises(InputError, match="template"):
        prompts_for(["chair"], bad)


def test_prompts_need_names():
    with pytest.raises(InputError):
        prompts_for([], "a {}")
    with pytest.raises(InputError):
        prompts_for("chair", "a {}")


# ---------------------------------------------------------------- pure steps against plain definitions


def test_patch_fractions_match_plain_loop():
    rng = np.random.default_rng(1)
    cls_map = rng.integers(0, 5, size=(19, 27))
    p = 4
    frac = patch_fractions(cls_map, 5, p)
    assert frac.shape == (5, 7, 5)
    for i in range(5):
        for j in range(7):
            cell = cls_map[i * p : (i + 1) * p, j * p : (j + 1) * p].ravel()
            expect = np.bincount(cell, minlength=5) / cell.size
            np.testing.assert_allclose(frac[i, j], expect, atol=1e-6)


def test_features_are_normalised_share_weighted_embeddings():
    rng = np.random.default_rng(2)
    table = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    frac = rng.dirichlet(np.ones(4), size=(3, 5)).astype(np.float32)
    f = features_from_fractions(frac, table, 0.0, rng)
    assert f.shape == (16, 3, 5)
    for i in range(3):
        for j in range(5):
            mix = sum(float(frac[i, j, k]) * table[k] for k in range(4))
            assert torch.allclose(f[:, i, j], mix / mix.norm(), atol=1e-5)
    noisy = features_from_fractions(frac, table, 0.05, np.random.default_rng(3))
    assert torch.allclose(noisy.norm(dim=0), torch.ones(3, 5), atol=1e-5)
    assert not torch.allclose(noisy, f, atol=1e-3)


def test_object_map_is_connected_components_per_class():
    rng = np.random.default_rng(4)
    cls_map = ndimage.zoom(rng.integers(0, 4, size=(8, 10)), 4, order=0)  # blocky, K=3 plus background 3
    cls_map[rng.random(cls_map.shape) < 0.05] = 3
    obj, obj_cls = object_map(cls_map, 3)
    valid = cls_map < 3
    assert ((obj >= 0) == valid).all()
    assert (obj_cls[obj[valid]] == cls_map[valid]).all()  # one class per object
    for m in range(len(obj_cls)):  # each object is one 8-connected region
        assert ndimage.label(obj == m, structure=np.ones((3, 3)))[1] == 1
    # 8-neighbours of one class are one object
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        a = cls_map[max(dy, 0) :, max(dx, 0) : cls_map.shape[1] + min(dx, 0)]
        b = cls_map[: cls_map.shape[0] - dy, max(-dx, 0) : cls_map.shape[1] - max(dx, 0)]
        oa = obj[max(dy, 0) :, max(dx, 0) : cls_map.shape[1] + min(dx, 0)]
        ob = obj[: cls_map.shape[0] - dy, max(-dx, 0) : cls_map.shape[1] - max(dx, 0)]
        same = (a == b) & (a < 3)
        assert (oa[same] == ob[same]).all()


def test_object_map_uses_instances_across_gaps():
    cls_map = np.full((6, 12), 2)
    cls_map[1:5, 1:4] = 0
    cls_map[1:5, 8:11] = 0  # two separate class-0 blobs ...
    inst = np.zeros_like(cls_map)
    inst[1:5, 1:4] = 7
    inst[1:5, 8:11] = 7  # ... of one instance
    obj, obj_cls = object_map(cls_map, 2, inst)
    assert obj[2, 2] == obj[2, 9] >= 0
    assert (obj[cls_map == 2] == -1).all()
    obj2, _ = object_map(cls_map, 2, None)
    assert obj2[2, 2] != obj2[2, 9]


def test_confusions_follow_text_similarity(encoder, labels20):
    """Swaps are drawn from softmax(similarity / temp) over the other classes; mask errors uniformly."""
    emb = encoder.encode(prompts_for(labels20))
    P = close_class_probs(emb, 0.05)
    assert np.allclose(P.sum(1), 1) and np.allclose(np.diag(P), 0)
    S = (emb @ emb.T).numpy()
    c = labels20.index("chair")
    rng = np.random.default_rng(5)
    n = 40_000
    src = np.full(n, c)
    conf = corrupt_classes(src, rng, P, confusion_prob=1.0, mask_error_prob=0.0)
    freq = np.bincount(conf, minlength=20) / n
    np.testing.assert_allclose(freq, P[c], atol=0.01)
    assert freq[labels20.index("sofa")] > 5 * freq[labels20.index("toilet")]
    mask = corrupt_classes(src, rng, P, confusion_prob=0.0, mask_error_prob=1.0)
    mfreq = np.bincount(mask, minlength=20) / n
    assert mfreq[c] == 0
    np.testing.assert_allclose(np.delete(mfreq, c), 1 / 19, atol=0.01)
    # confusions land on far closer classes than uniform mask errors do
    others = np.delete(np.arange(20), c)
    assert S[c, conf].mean() > S[c, others].mean() + 0.05
    # the rates: prob 0.3 confusions + 0.1 mask errors change ~40% of objects
    src = rng.integers(0, 20, size=n)
    out = corrupt_classes(src, rng, P, confusion_prob=0.3, mask_error_prob=0.1)
    assert abs((out != src).mean() - 0.4) < 0.01


def test_resize_nearest_keeps_labels():
    img = np.arange(12).reshape(3, 4)
    up = resize_nearest(img, (6, 8))
    assert (up[::2, ::2] == img).all() and (up[1::2, 1::2] == img).all()
    assert (resize_nearest(up, (3, 4)) == img).all()


# ---------------------------------------------------------------- the backend


def test_simulated_is_labelled_as_such(encoder, labels20, caplog):
    with caplog.at_level(logging.INFO, logger="geopurify.standins.simulated_vlm"):
        vlm = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    assert vlm.simulated is True and vlm.name == "simulated-vlm (stand-in)" and vlm.dim == 384
    assert "SIMULATED" in vlm.describe()
    assert any("SIMULATED VLM" in r.getMessage() and "stand-in" in r.getMessage() for r in caplog.records)


def test_features_shape_and_unit_norm(encoder, labels20):
    vlm = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    scene = blocks_scene(2)
    f = vlm.frame_features(scene, 0, HW)
    assert f.shape == (384, 30, 40) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=0), torch.ones(30, 40), atol=1e-5)
    g = vlm.frame_features(scene, 1, (237, 318))  # not a multiple of the patch: ceil
    assert g.shape == (384, 30, 40)
    with pytest.raises(InputError, match="out of range"):
        vlm.frame_features(scene, 2, HW)


@pytest.mark.parametrize("patch", [1, 8])
def test_without_degradations_pure_cells_are_exact(encoder, labels20, patch):
    """Degradations off: every cell lying inside one region is that class's (or background's) embedding."""
    vlm = SimulatedVLM(sim_cfg(patch=patch, **OFF), label_set=labels20, text_encoder=encoder)
    hw = (96, 128)
    scene = blocks_scene(3, seed=7, hw=hw)
    T = text_embeddings(vlm, labels20)
    bg = encoder.encode(["background"])[0]
    for i in range(3):
        f = vlm.frame_features(scene, i, hw)
        gt = vlm.view_classes(scene, i, hw).gt
        frac = patch_fractions(gt, 21, patch)
        pure = frac.max(-1) == 1.0
        cls = frac.argmax(-1)
        assert pure.sum() > 0.5 * pure.size
        arg = torch.einsum("chw,kc->hwk", f, T).argmax(-1).numpy()
        fg = pure & (cls < 20)
        assert (arg[fg] == cls[fg]).all()
        assert torch.allclose(f.permute(1, 2, 0)[torch.from_numpy(fg)], T[cls[fg]], atol=1e-5)
        bgc = pure & (cls == 20)
        assert bgc.any() and torch.allclose(
            f.permute(1, 2, 0)[torch.from_numpy(bgc)], bg.expand(int(bgc.sum()), -1), atol=1e-5
        )
        if patch == 1:  # every labelled pixel is exact
            assert (arg[gt < 20] == gt[gt < 20]).all()


def test_label_image_ids_map_through_label_set(encoder, labels20):
    img = np.zeros((16, 16), np.int32)
    img[:8] = 5  # chair
    img[8:, :8] = 13  # NYU40 pillow: not a ScanNet-20 class -> background
    img[8:, 8:] = 39  # otherfurniture
    scene = Scene("one", np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), frames=[ArrayFrame("0", img)])
    vlm = SimulatedVLM(sim_cfg(patch=1, **OFF), label_set=labels20, text_encoder=encoder)
    gt = vlm.view_classes(scene, 0, (16, 16)).gt
    assert (gt[:8] == labels20.index("chair")).all()
    assert (gt[8:, :8] == 20).all()
    assert (gt[8:, 8:] == labels20.index("otherfurniture")).all()
    # a label image at another size is resized (nearest) to the VLM image size
    assert (vlm.view_classes(scene, 0, (32, 48)).gt == resize_nearest(gt, (32, 48))).all()


def test_deterministic_per_seed_scene_and_frame(encoder, labels20):
    scene = blocks_scene(4, seed=3)
    a = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    b = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    fa = [a.frame_features(scene, i, HW) for i in range(4)]
    fb = [b.frame_features(scene, i, HW) for i in reversed(range(4))][::-1]  # order does not matter
    for x, y in zip(fa, fb):
        assert torch.equal(x, y)
    c = SimulatedVLM(sim_cfg(seed=1), label_set=labels20, text_encoder=encoder)
    assert not torch.allclose(c.frame_features(scene, 0, HW), fa[0])
    renamed = Scene("other", scene.xyz, scene.rgb, frames=scene.frames)
    assert not torch.allclose(a.frame_features(renamed, 0, HW), fa[0])


def test_defaults_per_view_accuracy_on_real_scene(encoder, labels20):
    """Defaults on real ScanNet geometry (z-buffer-rendered views): clearly degraded, far above chance."""
    scene = with_virtual_frames(load_scannet("scene0000_01", with_frames=False), 14)
    vlm = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    clean = SimulatedVLM(sim_cfg(**OFF), label_set=labels20, text_encoder=encoder)  # patch features only
    T = text_embeddings(vlm, labels20)
    acc, acc_clean, swapped = [], [], []
    for i in range(len(scene.frames)):
        view = vlm.view_classes(scene, i, HW)
        valid = view.gt < 20
        if valid.sum() < 1000:
            continue
        pred = pixel_argmax(vlm.frame_features(scene, i, HW), T, HW)
        acc.append((pred[valid] == view.gt[valid]).mean())
        pc = pixel_argmax(clean.frame_features(scene, i, HW), T, HW)
        acc_clean.append((pc[valid] == view.gt[valid]).mean())
        swapped.append((view.obj_shown != view.obj_gt).mean())
        # confusions are per object: one shown class per object
        shown_per_obj = np.zeros(len(view.obj_gt), np.int64)
        shown_per_obj[view.objects[valid]] = view.shown[valid]
        assert (view.shown[valid] == shown_per_obj[view.objects[valid]]).all()
    acc, acc_clean = np.mean(acc), np.mean(acc_clean)
    print(
        f"simulated VLM per-view pixel accuracy: defaults {acc:.3f}, degradations off {acc_clean:.3f}, "
        f"objects swapped {np.mean(swapped):.3f}"
    )
    assert len(swapped) >= 10
    assert acc_clean > 0.9  # boundary bleeding of the patch features alone costs a few percent
    assert 0.45 < acc < acc_clean - 0.08  # well below 100%, far above chance (1/20)
    assert 0.1 < np.mean(swapped) < 0.32  # ~ confusion_prob + mask_error_prob = 0.2


def test_rendered_labels_line_up_with_real_frame(encoder, labels20):
    """Real ScanNet pose/intrinsics: the class at each visible point's pixel is that point's class."""
    from geopurify.ops.project import rescale_intrinsic, visible

    scene = load_scannet("scene0000_00", with_frames=True)
    vlm = SimulatedVLM(sim_cfg(patch=1, **OFF), label_set=labels20, text_encoder=encoder)
    T = text_embeddings(vlm, labels20)
    gt_pts = labels20.map(scene.labels)
    hw = (120, 160)
    for i, frame in enumerate(scene.frames):
        pred = pixel_argmax(vlm.frame_features(scene, i, hw), T, hw)
        K = rescale_intrinsic(frame.intrinsic, (968, 1296), hw)
        idx, pix = visible(torch.from_numpy(scene.xyz), frame.pose, K, hw, border=4, thr=0.05)
        idx, pix = idx.numpy(), pix.numpy()
        keep = gt_pts[idx] >= 0
        assert keep.sum() > 1000
        agree = (pred[pix[keep, 1], pix[keep, 0]] == gt_pts[idx[keep]]).mean()
        print(f"frame {frame.name}: {keep.sum()} visible labelled points, rendered class agrees for {agree:.3f}")
        assert agree > 0.9, (frame.name, agree)


def test_needs_labels_for_rendering(encoder, labels20):
    scene = with_virtual_frames(load_scannet("scene0000_01", with_frames=False), 2)
    scene.labels = None
    vlm = SimulatedVLM(sim_cfg(), label_set=labels20, text_encoder=encoder)
    with pytest.raises(InputError, match="labels"):
        vlm.frame_features(scene, 0, HW)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "bad",
    [
        dict(patch=0),
        dict(confusion_prob=1.5),
        dict(confusion_prob=0.7, mask_error_prob=0.4),
        dict(confusion_temp=0.0),
        dict(noise_std=-1.0),
    ],
)
def test_bad_sim_config_is_input_error(encoder, labels20, bad):
    with pytest.raises(InputError, match="vlm_sim"):
        SimulatedVLM(sim_cfg(**bad), label_set=labels20, text_encoder=encoder)


def test_build_vlm(tmp_path):
    cfg = defaults()
    vlm = build_vlm(cfg)
    assert isinstance(vlm, SimulatedVLM) and vlm.simulated and vlm.n_classes == 20
    cfg["lift"]["vlm"] = "lseg"
    with pytest.raises(InputError, match="unknown VLM"):
        build_vlm(cfg)
    cfg["lift"]["vlm"] = "clip"
    with pytest.raises(InputError, match="vlm_path"):
        build_vlm(cfg)
    cfg["lift"]["vlm_path"] = str(tmp_path / "missing")
    with pytest.raises(InputError, match="not found"):
        build_vlm(cfg)
    cfg["lift"]["vlm_path"] = str(tmp_path)
    with pytest.raises(InputError, match="config.json"):
        build_vlm(cfg)


def test_procedural_room_label_images_from_disk(encoder, labels20, tmp_path):
    """A procedural room written in the on-disk layout: label PNGs are read, resized and mapped."""
    from geopurify.data.readers import load_scene
    from geopurify.standins.rooms import make_room, write_room

    write_room(make_room(0, n_points=20_000, n_frames=2), tmp_path / "room")
    scene = load_scene(tmp_path / "room")
    assert scene.frames and scene.frames[0].label_path is not None
    vlm = SimulatedVLM(sim_cfg(patch=1, **OFF), label_set=labels20, text_encoder=encoder)
    T = text_embeddings(vlm, labels20)
    hw = (120, 160)
    for i, frame in enumerate(scene.frames):
        gt = labels20.map(resize_nearest(frame.label_image(), hw), space="nyu40")
        assert (gt >= 0).mean() > 0.5
        pred = pixel_argmax(vlm.frame_features(scene, i, hw), T, hw)
        assert (pred[gt >= 0] == gt[gt >= 0]).all()

"""The CLIP backend on a tiny randomly initialised CLIPModel saved as a local checkpoint.

The dense features are checked against a hand computation (plain tensor algebra on the model's
weights) of MaskCLIP's value path; the text side against `get_text_features`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from geopurify.config import defaults
from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError
from geopurify.vlm import build_vlm, text_embeddings
from geopurify.vlm.clip import CLIP_MEAN, CLIP_STD, ClipVLM, clip_input_grid, normalize_image

transformers = pytest.importorskip("transformers")

PATCH, SIZE = 8, 32


def write_tokenizer(d) -> int:
    """A minimal CLIP BPE vocabulary (letters, word-final letters, one merge); returns its size."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters] + ["in</w>"])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\ni n</w>\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 24}))
    return len(vocab)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_clip")
    n_vocab = write_tokenizer(d)
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=n_vocab,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=24,
            bos_token_id=n_vocab - 2,
            eos_token_id=n_vocab - 1,
            pad_token_id=n_vocab - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=SIZE,
            patch_size=PATCH,
        ),
        projection_dim=24,
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # make the layer norms and biases non-trivial so the hand check means something
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape))
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def vlm(ckpt):
    return ClipVLM(ckpt)


def ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def hand_block(x, layer, heads):
    """One CLIP encoder block written out: pre-LN attention and pre-LN quick-GELU MLP, residuals."""
    a = layer.self_attn
    B, L, D = x.shape
    h = ln(x, layer.layer_norm1)
    q = (h @ a.q_proj.weight.T + a.q_proj.bias).view(B, L, heads, -1).transpose(1, 2)
    k = (h @ a.k_proj.weight.T + a.k_proj.bias).view(B, L, heads, -1).transpose(1, 2)
    v = (h @ a.v_proj.weight.T + a.v_proj.bias).view(B, L, heads, -1).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(B, L, D)
    x = x + o @ a.out_proj.weight.T + a.out_proj.bias
    return x + hand_mlp(ln(x, layer.layer_norm2), layer.mlp)


def hand_mlp(h, mlp):
    z = h @ mlp.fc1.weight.T + mlp.fc1.bias
    z = z * torch.sigmoid(1.702 * z)  # quick_gelu, CLIP's activation
    return z @ mlp.fc2.weight.T + mlp.fc2.bias


def hand_dense(model, pixel):
    """MaskCLIP dense features computed from the weights: (C, gh, gw)."""
    vm = model.vision_model
    vm = getattr(vm, "vision_model", vm)
    emb = vm.embeddings
    B, _, H, W = pixel.shape
    gh, gw = H // PATCH, W // PATCH
    patches = F.conv2d(pixel, emb.patch_embedding.weight, stride=PATCH).flatten(2).transpose(1, 2)
    tokens = torch.cat([emb.class_embedding.view(1, 1, -1), patches], 1)
    if (gh, gw) == (SIZE // PATCH, SIZE // PATCH):
        pos = emb.position_embedding.weight[None]
    else:  # position embeddings resized by transformers' own interpolation
        pos = emb.interpolate_pos_encoding(tokens, H, W)
    x = ln(tokens + pos, vm.pre_layrnorm)
    layers = vm.encoder.layers
    heads = model.config.vision_config.num_attention_heads
    for layer in layers[:-1]:
        x = hand_block(x, layer, heads)
    last = layers[-1]
    a = last.self_attn
    h = ln(x, last.layer_norm1)
    v = x + (h @ a.v_proj.weight.T + a.v_proj.bias) @ a.out_proj.weight.T + a.out_proj.bias
    v = v + hand_mlp(ln(v, last.layer_norm2), last.mlp)
    f = ln(v, vm.post_layernorm) @ model.visual_projection.weight.T
    f = f / f.norm(dim=-1, keepdim=True)
    return f[0, 1:].reshape(gh, gw, -1).permute(2, 0, 1)


def test_hand_block_matches_transformers(vlm):
    """The hand-written block is CLIP's block (so the value-path check below compares like with like)."""
    layer = vlm.model.vision_model.encoder.layers[0]
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x, None)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(hand_block(x, layer, 4), out, atol=1e-5)


@pytest.mark.parametrize("hw", [(SIZE, SIZE), (SIZE, 2 * SIZE - PATCH)])
def test_dense_features_equal_hand_value_path(vlm, hw):
    g = torch.Generator().manual_seed(2)
    pixel = torch.randn(1, 3, *hw, generator=g)
    f = vlm.dense_features(pixel)
    assert f.shape == (24, hw[0] // PATCH, hw[1] // PATCH) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=0), torch.ones(f.shape[1:]), atol=1e-5)
    with torch.no_grad():
        expect = hand_dense(vlm.model, pixel)
    assert torch.allclose(f, expect, atol=1e-4)
    # and it is not the ordinary (attention) output: the value path changes the features
    with torch.no_grad():
        vm = vlm.model.vision_model
        vm = getattr(vm, "vision_model", vm)
        full = vm(pixel_values=pixel, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        full = F.normalize(vlm.model.visual_projection(vm.post_layernorm(full)), dim=-1)[0]
    assert not torch.allclose(f.reshape(24, -1).T, full, atol=1e-2)


def test_encode_text_is_normalised_get_text_features(vlm):
    prompts = ["a chair in a scene", "a sofa", "an in"]
    e = vlm.encode_text(prompts)
    tok = vlm.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = vlm.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    ref = ref if torch.is_tensor(ref) else ref.pooler_output
    assert e.shape == (3, 24)
    assert torch.allclose(e, F.normalize(ref, dim=-1), atol=1e-5)
    T = text_embeddings(vlm, ["chair", "sofa"])
    assert torch.allclose(T, vlm.encode_text(["a chair in a scene", "a sofa in a scene"]), atol=1e-6)
    vlm.batch_size, old = 2, vlm.batch_size  # batching does not change the result
    try:
        assert torch.allclose(vlm.encode_text(prompts), e, atol=1e-5)
    finally:
        vlm.batch_size = old


def test_input_grid_keeps_aspect():
    assert clip_input_grid((968, 1296), 224, 16) == (14, 19)
    assert clip_input_grid((240, 320), 336, 14) == (24, 32)
    assert clip_input_grid((480, 480), 224, 32) == (7, 7)


def test_normalize_image_standardises_without_resize():
    img = np.random.default_rng(3).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    x = normalize_image(img, (2, 3), 8, CLIP_MEAN, CLIP_STD)
    expect = (img / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert x.shape == (1, 3, 16, 24)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expect, atol=1e-5)


def test_frame_features_from_colour_image(vlm, tmp_path):
    img = np.random.default_rng(4).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "0.png")
    frame = Frame("0", np.eye(4), np.eye(3), color_path=tmp_path / "0.png")
    scene = Scene("s", np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), frames=[frame])
    f = vlm.frame_features(scene, 0, (240, 320))
    grid = clip_input_grid((60, 80), SIZE, PATCH)
    assert f.shape == (24, *grid) == (24, 4, 5)
    pixel = normalize_image(img, grid, PATCH, vlm.mean, vlm.std)
    with torch.no_grad():
        assert torch.allclose(f, hand_dense(vlm.model, pixel), atol=1e-4)
    bare = Scene("s", scene.xyz, scene.rgb, frames=[Frame("v", np.eye(4), np.eye(3))])
    with pytest.raises(InputError, match="colour"):
        vlm.frame_features(bare, 0, (240, 320))


def test_build_vlm_clip(ckpt):
    cfg = defaults()
    cfg["lift"]["vlm"] = "clip"
    cfg["lift"]["vlm_path"] = str(ckpt)
    v = build_vlm(cfg)
    assert isinstance(v, ClipVLM) and not v.simulated and v.dim == 24


def test_unloadable_checkpoint_is_input_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError):
        ClipVLM(tmp_path)


@pytest.mark.parametrize("where", ["procedural room", "scene0000_00"])
def test_lift_cli_with_tiny_clip(ckpt, where, tmp_path, capsys):
    """`geopurify lift --vlm clip --vlm-path TINY_RANDOM_CLIP_DIR` runs on a procedural room and on
    the real ScanNet scene0000_00 (colour frames only, z-buffer occlusion); the features have the
    CLIP projection width, are means of unit vectors (norm in (0, 1]) where seen, and cover the
    points the frames see."""
    from pathlib import Path

    from geopurify.cli import main
    from geopurify.lift.result import load_lifted
    from geopurify.standins.rooms import make_room, write_room

    if where == "procedural room":
        scene_dir = tmp_path / "room"
        write_room(make_room(3, n_points=6000, n_frames=4, image_hw=(120, 160)), scene_dir)
    else:
        scene_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "scannet" / "scene0000_00"
        if not scene_dir.is_dir():
            pytest.skip("../shared/data not present")
    out = tmp_path / "f.lift.pt"
    rc = main(["-q", "lift", "--scene", str(scene_dir), "--vlm", "clip", "--vlm-path", str(ckpt), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = load_lifted(out)
    dim = ClipVLM(ckpt).dim
    assert res.feat.shape[1] == dim
    seen = res.seen.numpy()
    assert 0.05 < seen.mean() <= 1.0
    norms = res.feat[res.seen].float().norm(dim=1)
    assert torch.isfinite(res.feat.float()).all()
    assert (norms > 0.05).all() and (norms < 1.0 + 2e-2).all()  # float16 on disk

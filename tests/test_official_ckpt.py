"""Official GeoPurify (MinkowskiEngine) checkpoints -> this project's spconv AffinityNet.

MinkowskiEngine cannot be installed here, so its semantics are transcribed from its source
(docs/official_checkpoint.md cites the functions) into plain loops below: `me_coordinate_at`
(kernel_region::coordinate_at, HYPER_CUBE) and `me_conv` (kernel_map + ConvolutionForwardKernelCPU:
out[x] += in[coordinate_at(k, x)] @ kernel[k]). The converted spconv model must reproduce them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geopurify.errors import InputError
from geopurify.student import spconv_compat as sc
from geopurify.student.network import AffinityNet
from geopurify.student.official import (
    convert_official_checkpoint,
    convert_official_state_dict,
    infer_architecture,
    load_official_checkpoint,
    me_kernel_offsets,
    me_to_spconv_kernel,
)


def me_coordinate_at(kernel_index: int, src: tuple[int, int, int], sizes=(3, 3, 3)) -> tuple[int, ...]:
    """kernel_region::coordinate_at for HYPER_CUBE, odd sizes, stride and dilation 1."""
    dst = list(src)
    for i, size in enumerate(sizes):
        cur = kernel_index % size
        dst[i] = src[i] + (cur - size // 2)
        kernel_index //= size
    return tuple(dst)


def me_conv(feats: torch.Tensor, coords: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Stride-1 MinkowskiConvolution (output sites = input sites), kernel (27, in, out) or (in, out)."""
    if kernel.dim() == 2:  # kernel_size 1: features @ kernel
        return feats @ kernel
    site = {tuple(c): i for i, c in enumerate(coords.tolist())}
    out = torch.zeros(len(coords), kernel.shape[2], dtype=torch.float64)
    for i, c in enumerate(coords.tolist()):
        for k in range(kernel.shape[0]):
            j = site.get(me_coordinate_at(k, tuple(c)))
            if j is not None:
                out[i] += feats[j].double() @ kernel[k].double()
    return out


def me_bn(x, sd, prefix, eps=1e-5):
    """MinkowskiBatchNorm in eval mode (its `bn` is a torch BatchNorm1d)."""
    g = lambda k: sd[f"{prefix}.bn.{k}"].double()  # noqa: E731
    return (x - g("running_mean")) / torch.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def me_affinity_predictor(sd: dict, feats: torch.Tensor, coords: torch.Tensor, blocks: int) -> torch.Tensor:
    """The reference AffinityPredictor.forward (eval), then the L2 normalisation the reference
    applies to its output before use."""
    x = torch.relu(me_bn(me_conv(feats, coords, sd["input_layer.0.kernel"]), sd, "input_layer.1"))
    for i in range(blocks):
        y = torch.relu(me_bn(me_conv(x, coords, sd[f"res_blocks.{i}.conv1.kernel"]), sd, f"res_blocks.{i}.norm1"))
        y = me_bn(me_conv(y, coords, sd[f"res_blocks.{i}.conv2.kernel"]), sd, f"res_blocks.{i}.norm2")
        x = torch.relu(y + x)
    return F.normalize(me_conv(x, coords, sd["output_layer.kernel"].double()), dim=1)


def official_state_dict(cin: int, width: int, blocks: int, out: int, seed: int) -> dict:
    """A random state_dict with the reference's keys and MinkowskiEngine shapes."""
    g = torch.Generator().manual_seed(seed)

    def bn(prefix):
        return {
            f"{prefix}.bn.weight": 1 + 0.3 * torch.randn(width, generator=g),
            f"{prefix}.bn.bias": 0.2 * torch.randn(width, generator=g),
            f"{prefix}.bn.running_mean": 0.1 * torch.randn(width, generator=g),
            f"{prefix}.bn.running_var": 0.5 + torch.rand(width, generator=g),
            f"{prefix}.bn.num_batches_tracked": torch.tensor(123),
        }

    sd = {"input_layer.0.kernel": torch.randn(27, cin, width, generator=g) / (27 * cin) ** 0.5, **bn("input_layer.1")}
    for i in range(blocks):
        for j in (1, 2):
            sd[f"res_blocks.{i}.conv{j}.kernel"] = torch.randn(27, width, width, generator=g) / (27 * width) ** 0.5
            sd.update(bn(f"res_blocks.{i}.norm{j}"))
    sd["output_layer.kernel"] = torch.randn(width, out, generator=g)  # kernel_size 1, stride 1: (in, out)
    return sd


def _sites(n: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(0, side, (n, 3), generator=g), dim=0).int()


def test_me_offsets_are_the_coordinate_at_enumeration_first_axis_fastest():
    offs = me_kernel_offsets()
    assert offs.shape == (27, 3)
    for k in range(27):
        assert tuple(offs[k]) == me_coordinate_at(k, (0, 0, 0))
    assert tuple(offs[1]) == (0, -1, -1) and tuple(offs[3]) == (-1, 0, -1) and tuple(offs[9]) == (-1, -1, 0)
    assert tuple(offs[13]) == (0, 0, 0)
    assert len({tuple(o) for o in offs}) == 27


@pytest.mark.parametrize("offset", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, -1, 0), (-1, 0, 1)])
def test_one_tap_kernel_shifts_features_the_me_way(offset):
    """An ME kernel that is the identity at one tap k reads the input at x + d_k. After the
    conversion, spconv must do exactly that (catches swapped axes and mirrored kernels)."""
    k = [i for i in range(27) if me_coordinate_at(i, (0, 0, 0)) == offset][0]
    kern = torch.zeros(27, 2, 2)
    kern[k] = torch.eye(2)
    coords = _sites(60, 5, seed=1)
    feats = torch.arange(2 * len(coords), dtype=torch.float32).reshape(-1, 2) + 1
    conv = sc.SubMConv3d(2, 2, 3, bias=False)
    with torch.no_grad():
        conv.conv.weight.copy_(me_to_spconv_kernel(kern))
    got = conv(sc.sparse_tensor(feats, coords)).features
    site = {tuple(c): i for i, c in enumerate(coords.tolist())}
    for i, c in enumerate(coords.tolist()):
        j = site.get(tuple(a + b for a, b in zip(c, offset)))
        want = feats[j] if j is not None else torch.zeros(2)
        torch.testing.assert_close(got[i], want)


def test_converted_conv_equals_the_me_semantics_on_random_kernels():
    coords = _sites(120, 6, seed=2)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(len(coords), 4, generator=g)
    kern = torch.randn(27, 4, 5, generator=g)
    conv = sc.SubMConv3d(4, 5, 3, bias=False)
    with torch.no_grad():
        conv.conv.weight.copy_(me_to_spconv_kernel(kern))
    got = conv(sc.sparse_tensor(feats, coords)).features
    torch.testing.assert_close(got.double(), me_conv(feats, coords, kern), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("wrap", ["trainer", "bare", "ddp"])
def test_loaded_official_checkpoint_reproduces_the_reference_forward(tmp_path, wrap):
    cin, width, blocks, out = 7, 6, 2, 5
    sd = official_state_dict(cin, width, blocks, out, seed=4)
    if wrap == "trainer":  # run/train.py's format
        obj = {"epoch": 34, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    elif wrap == "bare":
        obj = sd
    else:
        obj = {f"module.{k}": v for k, v in sd.items()}
    torch.save(obj, tmp_path / "geopurify.pth")
    model = load_official_checkpoint(tmp_path / "geopurify.pth")
    assert (model.in_channels, model.width, model.n_blocks, model.out_dim) == (cin, width, blocks, out)
    assert not model.training
    coords = _sites(90, 5, seed=5)
    feats = torch.randn(len(coords), cin, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = model(feats, coords)
    want = me_affinity_predictor(sd, feats, coords, blocks)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_official_checkpoint_converts_to_a_student_checkpoint(tmp_path):
    from geopurify.student.checkpoint import load_student

    sd = official_state_dict(5, 4, 1, 3, seed=7)
    torch.save({"epoch": 34, "model_state_dict": sd}, tmp_path / "official.pth")
    convert_official_checkpoint(tmp_path / "official.pth", tmp_path / "student.pth")
    model, meta = load_student(tmp_path / "student.pth")
    assert meta["epoch"] == 34 and meta["in_channels"] == 5 and meta["student"]["blocks"] == 1
    coords = _sites(50, 4, seed=8)
    feats = torch.randn(len(coords), 5, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got = model(feats, coords)
    torch.testing.assert_close(got.double(), me_affinity_predictor(sd, feats, coords, 1), atol=1e-4, rtol=1e-4)


def test_paper_shapes_and_key_coverage():
    """The released model's shapes (518 -> 512, 4 blocks, 128) are read off the tensors, and the
    key map covers every AffinityNet tensor of that depth exactly once."""
    shapes = {k: tuple(v.shape) for k, v in official_state_dict(1, 1, 4, 1, seed=0).items()}
    meta = {k: torch.empty(sh, device="meta") for k, sh in shapes.items()}
    meta["input_layer.0.kernel"] = torch.empty(27, 518, 512, device="meta")
    meta["output_layer.kernel"] = torch.empty(512, 128, device="meta")
    assert infer_architecture(meta) == {"in_channels": 518, "width": 512, "blocks": 4, "out_dim": 128}
    small = official_state_dict(3, 4, 4, 2, seed=1)
    conv = convert_official_state_dict(small)
    assert set(conv) == set(AffinityNet(3, 4, 4, 2).state_dict())


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "garbage", "not_sd", "absent", "nan", "kernel5"])
def test_bad_official_checkpoints_raise_input_error(tmp_path, case):
    sd = official_state_dict(3, 4, 1, 2, seed=10)
    p = tmp_path / "ckpt.pth"
    if case == "missing":
        del sd["res_blocks.0.norm2.bn.running_var"]
    elif case == "extra":
        sd["res_blocks.0.conv3.kernel"] = torch.zeros(27, 4, 4)
    elif case == "shape":
        sd["res_blocks.0.conv1.kernel"] = torch.zeros(27, 4, 5)
    elif case == "nan":
        sd["input_layer.1.bn.weight"][0] = float("nan")
    elif case == "kernel5":
        sd["input_layer.0.kernel"] = torch.zeros(125, 3, 4)
    if case == "garbage":
        p.write_bytes(b"\x80\x02 truncated pickle")
    elif case == "not_sd":
        torch.save({"epoch": 3, "note": "x"}, p)
    elif case != "absent":
        torch.save({"model_state_dict": sd}, p)
    with pytest.raises(InputError) as e:
        load_official_checkpoint(p)
    assert p.name in str(e.value)

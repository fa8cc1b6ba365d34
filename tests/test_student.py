"""Student: spconv CPU shims, voxelisation, the affinity network (checked against dense / loop
definitions, not against stored numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geopurify.errors import InputError
from geopurify.ops.voxel import voxel_mean, voxelize
from geopurify.student import spconv_compat as sc
from geopurify.student.network import AffinityNet, build_student, student_input

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _sites(n: int, side: int, seed: int) -> torch.Tensor:
    """Distinct random integer sites in [0, side)^3, int32 (V, 3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(0, side, (n, 3), generator=g), dim=0).int()


def _scatter(dense: torch.Tensor, feats: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Dense grid (1, C, ...) holding feats (V, C) at sites c (V, 3), zero elsewhere."""
    dense = dense.clone()
    dense[0, :, c[:, 0], c[:, 1], c[:, 2]] = feats.T
    return dense


# ---------------------------------------------------------------- spconv shims


def test_stream_shim_returns_default_stream_without_cuda():
    spt = sc.spconv()
    from spconv.pytorch import cppcore, ops

    if torch.cuda.is_available():
        assert ops.get_current_stream() == torch.cuda.current_stream().cuda_stream
    else:
        assert ops.get_current_stream() == 0 and cppcore.get_current_stream() == 0
    assert spt.SparseConvTensor is not None


_CONV_DIGEST = """
import hashlib, sys, torch
if sys.argv[1] == "full":
    import spconv.pytorch  # before geopurify: its CUDA kernel tables are built as spconv builds them
from geopurify.student import spconv_compat as sc
from geopurify.student.network import AffinityNet
import spconv.core
torch.manual_seed(0)
model = AffinityNet(in_channels=6, width=16, blocks=2, out_dim=8)
g = torch.Generator().manual_seed(0)
coords = torch.unique(torch.randint(0, 24, (3000, 3), generator=g), dim=0)
x = torch.randn(len(coords), 6, generator=g, requires_grad=True)
out = model(x, coords)
out.square().sum().backward()
h = hashlib.sha256(out.detach().numpy().tobytes() + x.grad.numpy().tobytes())
for p in model.parameters():
    h.update(p.grad.numpy().tobytes())
print(len(spconv.core.ALL_IMPGEMM_PARAMS) + len(spconv.core.ALL_NATIVE_PARAMS), h.hexdigest())
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernel tables are trimmed only without CUDA")
def test_trimmed_spconv_import_computes_the_same_bits():
    """Without CUDA, spconv() empties spconv's CUDA kernel tables before importing it (sharp edge
    5); the student's outputs and gradients are then those of a full import, bit for bit."""
    import subprocess
    import sys

    from tests.support import cli_env

    got = {}
    for how in ("full", "trimmed"):
        run = subprocess.run([sys.executable, "-c", _CONV_DIGEST, how], env=cli_env(), capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        got[how] = run.stdout.split()
    assert int(got["full"][0]) > 0 and int(got["trimmed"][0]) == 0
    assert got["full"][1] == got["trimmed"][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Python GEMM fallback path is CPU-only here")
def test_python_gemm_path_runs_backward_on_cpu(monkeypatch):
    """CPU-only spconv builds have no C++ GEMM (ops.GEMM_CPP is None); their Python backward
    asks for the CUDA stream unconditionally. With the shim it runs and agrees with the C++ path."""
    from spconv.pytorch import ops

    coords = _sites(80, 6, seed=1)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(len(coords), 4, generator=g)
    conv = sc.SubMConv3d(4, 5, 3, bias=True)

    def grads():
        x = feats.clone().requires_grad_(True)
        conv.zero_grad()
        y = conv(sc.sparse_tensor(x, coords)).features
        (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
        return y.detach(), x.grad, conv.weight.grad.clone()

    ref = grads()
    monkeypatch.setattr(ops, "GEMM_CPP", None)
    alt = grads()
    for a, b in zip(ref, alt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bias", [False, True])
def test_subm_conv_equals_dense_conv3d(device, mode, bias):
    """Outputs and gradients of the 3x3x3 submanifold conv equal a dense conv3d (same weights in
    conv3d layout) read at the occupied sites, in train and eval mode, with and without bias."""
    side = 7
    coords = _sites(150, side, seed=3).to(device)
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(len(coords), 4, generator=g).to(device)
    conv = sc.SubMConv3d(4, 6, 3, bias=bias, indice_key="k").to(device)
    getattr(conv, mode)()
    upstream = torch.randn(len(coords), 6, generator=g).to(device)

    x = feats.clone().requires_grad_(True)
    y = conv(sc.sparse_tensor(x, coords)).features
    (y * upstream).sum().backward()

    xd = feats.clone().requires_grad_(True)
    w = sc.to_conv3d_weight(conv.weight.detach()).clone().requires_grad_(True)
    c = coords.long()
    dense = _scatter(xd.new_zeros(1, 4, side, side, side), xd, c)
    out = F.conv3d(dense, w, conv.bias.detach() if bias else None, padding=1)
    yd = out[0, :, c[:, 0], c[:, 1], c[:, 2]].T
    (yd * upstream).sum().backward()

    torch.testing.assert_close(y.detach(), yd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sc.to_conv3d_weight(conv.weight.grad), w.grad, rtol=1e-4, atol=1e-4)


def test_sparse_tensor_rejects_bad_coords():
    with pytest.raises(ValueError):
        sc.sparse_tensor(torch.zeros(2, 3), torch.tensor([[0, 0, 0], [-1, 0, 0]]))
    with pytest.raises(ValueError):
        sc.sparse_tensor(torch.zeros(3, 3), torch.tensor([[0, 0, 0], [1, 0, 0]]))


# ---------------------------------------------------------------- voxels


def test_voxelize_round_trip():
    g = torch.Generator().manual_seed(5)
    xyz = torch.rand(5000, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3]) - 2.0
    vs = 0.05
    coords, inv = voxelize(xyz, vs)
    assert coords.dtype == torch.int32 and inv.dtype == torch.int64 and inv.shape == (5000,)
    assert coords.min(0).values.tolist() == [0, 0, 0]
    # every point lies in its voxel: voxel = floor(xyz / vs) up to one global integer shift
    cell = torch.floor(xyz.double() / vs).long()
    shift = cell - coords[inv].long()
    assert (shift == shift[0]).all()
    # distinct voxels, all occupied, sorted by linearised key
    assert len(torch.unique(coords, dim=0)) == len(coords)
    assert torch.bincount(inv, minlength=len(coords)).min() >= 1
    c = coords.long()
    key = (c[:, 0] * (c[:, 1].max() + 1) + c[:, 1]) * (c[:, 2].max() + 1) + c[:, 2]
    assert (key[1:] > key[:-1]).all()


def test_voxelize_is_independent_of_point_order():
    g = torch.Generator().manual_seed(6)
    xyz = torch.rand(3000, 3, generator=g)
    perm = torch.randperm(3000, generator=g)
    c1, i1 = voxelize(xyz, 0.1)
    c2, i2 = voxelize(xyz[perm], 0.1)
    assert torch.equal(c1, c2) and torch.equal(i1[perm], i2)


def test_voxelize_accepts_numpy_and_rejects_bad_shapes():
    coords, inv = voxelize(np.array([[0.0, 0, 0], [0.01, 0.01, 0.01], [0.05, 0, 0]], np.float32), 0.02)
    assert coords.tolist() == [[0, 0, 0], [2, 0, 0]] and inv.tolist() == [0, 0, 1]
    with pytest.raises(ValueError):
        voxelize(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        voxelize(torch.zeros(4, 3), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_voxel_mean_equals_loop(dtype, monkeypatch):
    import geopurify.ops.voxel as vox

    monkeypatch.setattr(vox, "_CHUNK", 37)  # exercise the chunked accumulation
    g = torch.Generator().manual_seed(7)
    values = torch.randn(500, 6, generator=g).to(dtype)
    inv = torch.randint(0, 40, (500,), generator=g)
    got = voxel_mean(values, inv, 42)  # voxels 40, 41 are empty
    ref = torch.zeros(42, 6, dtype=torch.float64)
    for v in range(42):
        m = inv == v
        if m.any():
            ref[v] = values[m].double().mean(0)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(voxel_mean(values[:, 0], inv, 42).double(), ref[:, 0], rtol=1e-5, atol=1e-5)


def test_student_input_equals_loop():
    g = torch.Generator().manual_seed(8)
    n = 400
    xyz = torch.rand(n, 3, generator=g) * 0.3
    coords, inv = voxelize(xyz, 0.05)
    lifted = F.normalize(torch.randn(n, 16, generator=g), dim=1).half()
    rgb = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.uint8).numpy()
    normals = F.normalize(torch.randn(n, 3, generator=g), dim=1).numpy()
    x = student_input(lifted, rgb, normals, inv, len(coords))
    assert x.shape == (len(coords), 22) and x.dtype == torch.float32
    for v in range(len(coords)):
        m = (inv == v).numpy()
        ref = np.concatenate(
            [lifted.float().numpy()[m].mean(0), rgb[m].astype(np.float64).mean(0) / 255.0, normals[m].mean(0)]
        )
        np.testing.assert_allclose(x[v].numpy(), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- network


def _toy(n_sites=300, side=10, cin=8, seed=9):
    coords = _sites(n_sites, side, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(len(coords), cin, generator=g), coords


def _net(cin=8, width=16, blocks=2, seed=0):
    torch.manual_seed(seed)  # parameter init is the only global-RNG use, and only in tests
    return AffinityNet(cin, width, blocks, out_dim=12)


def test_network_shape_unit_norm_and_determinism():
    feats, coords = _toy()
    net = _net()
    y1, y2 = net(feats, coords), net(feats, coords)
    assert y1.shape == (len(coords), 12) and y1.dtype == torch.float32
    torch.testing.assert_close(y1.norm(dim=1), torch.ones(len(coords)), rtol=0, atol=1e-5)
    assert torch.equal(y1, y2)
    net.eval()
    assert torch.equal(net(feats, coords), net(feats, coords))
    assert torch.equal(_net()(feats, coords), y1)  # same init seed, same output


def test_network_gradients_reach_every_parameter():
    feats, coords = _toy()
    net = _net()
    emb = net(feats.requires_grad_(True), coords)
    g = torch.Generator().manual_seed(10)
    loss = (emb * torch.randn(emb.shape, generator=g)).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert feats.grad.abs().sum() > 0


def test_network_is_equivariant_to_voxel_order_and_translation():
    feats, coords = _toy()
    net = _net().eval()
    ref = net(feats, coords)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(net(feats[perm], coords[perm]), ref[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        net(feats, coords + torch.tensor([5, 0, 3], dtype=torch.int32)), ref, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("blocks", [0, 1, 2])
def test_receptive_field_is_stride_one_stack(blocks):
    """A voxel's output depends on voxels within Chebyshev distance 1 + 2 * blocks, not beyond:
    no downsampling, all convs 3x3x3 submanifold."""
    radius = 1 + 2 * blocks
    side = 2 * radius + 5
    coords = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3).int()
    g = torch.Generator().manual_seed(12)
    feats = torch.randn(len(coords), 4, generator=g)
    net = _net(cin=4, width=8, blocks=blocks).eval()
    centre = torch.tensor([0, side // 2, side // 2])
    i0 = int(((coords - centre).abs().sum(1) == 0).nonzero())
    base = net(feats, coords)[i0]
    for dist, changes in ((radius, True), (radius + 1, False)):
        j = int(((coords - centre - torch.tensor([dist, 0, 0])).abs().sum(1) == 0).nonzero())
        f2 = feats.clone()
        f2[j] += 10.0
        moved = (net(f2, coords)[i0] - base).abs().max() > 1e-6
        assert bool(moved) == changes, (dist, radius)


def test_paper_preset_parameter_count():
    net = build_student({"preset": "paper", "width": 64, "blocks": 2, "out_dim": 128}, in_channels=518)
    n = sum(p.numel() for p in net.parameters())
    conv3 = 27 * 518 * 512 + 8 * 27 * 512 * 512
    bn = 9 * 2 * 512
    head = 512 * 128 + 128
    assert n == conv3 + bn + head
    assert 63.0e6 < n < 64.5e6  # "about 64M parameters"
    assert (net.width, net.n_blocks) == (512, 4)


def test_cpu_preset_and_param_groups():
    net = build_student({"preset": "cpu", "width": 24, "blocks": 3, "out_dim": 32}, in_channels=10)
    assert (net.width, net.n_blocks, net.out_dim) == (24, 3, 32)
    groups = net.param_groups()
    assert set(groups) == {"stem", "blocks", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in net.parameters()) and len(set(ids)) == len(ids)
    assert all(name.split(".")[0] in groups for name, _ in net.named_parameters())
    with pytest.raises(InputError, match="student.preset"):
        build_student({"preset": "huge", "width": 24, "blocks": 3}, in_channels=10)
    with pytest.raises(ValueError):
        net(torch.zeros(5, 11), torch.zeros(5, 3, dtype=torch.int32))

"""Sonata teacher: the PTv3 encoder's pieces against plain definitions (official serialization
codes, spconv's submanifold conv, patch attention with the official padding, grid pooling,
up-casting), the official checkpoint's key names and shapes, checkpoint errors, and the whole
teacher (shapes, determinism, permutation equivariance) with random weights."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.config import defaults
from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.teacher import build_teacher, ptv3
from geopurify.teacher.sonata import (
    SONATA_CONFIG,
    SonataTeacher,
    build_encoder,
    grid_sample,
    load_sonata,
    read_checkpoint,
    sonata_features,
    sonata_input,
)

S00 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet" / "scene0000_00"
needs_scannet = pytest.mark.skipif(not S00.is_dir(), reason="../shared/data/scannet not present")

# A reduced config for speed: 5 stages like Sonata, tiny widths, patches of 64 so that the
# padded last patch is exercised on a few thousand points.
SMALL = dict(
    SONATA_CONFIG,
    enc_depths=(1, 1, 1, 2, 1),
    enc_channels=(8, 16, 16, 32, 32),
    enc_num_head=(2, 2, 2, 4, 4),
    enc_patch_size=(64,) * 5,
)


def small_model(seed=0, cfg=SMALL):
    torch.manual_seed(seed)
    model = build_encoder(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases (they start at 1 / 0)
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def surfaces(n=3000, seed=0):
    """A floor, a wall and a box, 2 mm jitter, random colours, with unit normals."""
    rng = np.random.default_rng(seed)
    k = n // 3
    floor = np.c_[rng.uniform(0, 2, (k, 2)), np.zeros(k)]
    wall = np.c_[np.zeros(k), rng.uniform(0, 2, k), rng.uniform(0, 1.5, k)]
    box = rng.uniform(0.8, 1.2, (n - 2 * k, 3))
    box[:, 2] -= 0.8
    xyz = (np.concatenate([floor, wall, box]) + rng.normal(0, 0.002, (n, 3))).astype(np.float32)
    nrm = np.repeat(np.eye(3)[[2, 0, 1]], [k, k, n - 2 * k], 0).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    return xyz, rgb, nrm


def save_ckpt(path, model, config=SMALL, prefix=""):
    torch.save({"config": dict(config), "state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    return path


# ----------------------------------------------------------------------------- serialization

# codes computed with the official sonata/serialization (hilbert.encode, z_order.xyz2key)
OFFICIAL_CODES = {
    3: (
        [[4, 7, 5], [0, 3, 3], [3, 7, 1], [3, 5, 2], [4, 7, 6], [0, 0, 4]],
        [346, 54, 227, 194, 339, 64],
        [467, 27, 183, 174, 474, 64],
    ),
    11: (
        [[2046, 1871, 1455], [448, 850, 99], [2008, 1201, 755], [797, 659, 1171]],
        [6002776940, 250451121, 5186810812, 1662087777],
        [8451182587, 379363353, 7196768267, 1952479519],
    ),
    16: (
        [[53887, 41504, 55839], [49866, 18676, 57495], [60067, 31230, 11723]],
        [203974842459282, 218543919509169, 275547534922878],
        [269733476916077, 207275674908905, 171173303232189],
    ),
}


@pytest.mark.parametrize("depth", sorted(OFFICIAL_CODES))
def test_codes_match_official_serialization(depth):
    coords, hil, zor = OFFICIAL_CODES[depth]
    c = torch.tensor(coords)
    assert ptv3.hilbert_code(c, depth).tolist() == hil
    assert ptv3.morton_code(c, depth).tolist() == zor


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hilbert_is_a_unit_step_walk_and_morton_a_bijection(depth):
    side = 1 << depth
    cube = torch.tensor(list(itertools.product(range(side), repeat=3)))
    h = ptv3.hilbert_code(cube, depth)
    assert sorted(h.tolist()) == list(range(side**3))
    walk = cube[torch.argsort(h)]
    assert (walk[1:] - walk[:-1]).abs().sum(1).eq(1).all()  # consecutive cells are face neighbours
    assert walk[0].tolist() == [0, 0, 0]
    z = ptv3.morton_code(cube, depth)
    assert sorted(z.tolist()) == list(range(side**3))


def test_serialize_orders_and_inverse():
    g = torch.Generator().manual_seed(0)
    grid = torch.unique(torch.randint(0, 40, (500, 3), generator=g), dim=0)
    order, inverse = ptv3.serialize(grid, ptv3.ORDERS, shuffle=False)
    depth = (int(grid.max()) + 1).bit_length()
    for k, name in enumerate(ptv3.ORDERS):
        code = ptv3.serial_code(grid, depth, name)
        assert (code[order[k]][1:] > code[order[k]][:-1]).all()
        assert torch.equal(order[k][inverse[k]], torch.arange(len(grid)))
    swapped = grid[:, [1, 0, 2]]
    assert torch.equal(ptv3.serial_code(grid, depth, "z-trans"), ptv3.morton_code(swapped, depth))
    o1, _ = ptv3.serialize(grid, ptv3.ORDERS, True, torch.Generator().manual_seed(3))
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(o1, order[perm])


# ----------------------------------------------------------------------------- conv, attention, pooling


def test_submanifold_conv_matches_spconv():
    from geopurify.student.spconv_compat import SubMConv3d as SpconvSubM
    from geopurify.student.spconv_compat import sparse_tensor

    g = torch.Generator().manual_seed(0)
    grid = torch.unique(torch.randint(0, 9, (400, 3), generator=g), dim=0)
    x = torch.randn(len(grid), 5, generator=g)
    mine = ptv3.SubMConv3d(5, 7)
    ref = SpconvSubM(5, 7, 3, bias=True)
    with torch.no_grad():
        mine.weight.normal_(generator=g)
        mine.bias.normal_(generator=g)
        ref.conv.weight.copy_(mine.weight)
        ref.bias.copy_(mine.bias)
        a = mine(x, ptv3.neighbour_table(grid))
        b = ref(sparse_tensor(x, grid.int())).features
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        mine.weight.copy_(mine.weight.flip(1))  # a mirrored kernel must give something else
        assert (mine(x, ptv3.neighbour_table(grid)) - b).abs().max() > 0.1


def test_neighbour_table_against_loop():
    g = torch.Generator().manual_seed(1)
    grid = torch.unique(torch.randint(0, 6, (120, 3), generator=g), dim=0)
    table = ptv3.neighbour_table(grid)
    where = {tuple(c): i for i, c in enumerate(grid.tolist())}
    offsets = list(itertools.product((-1, 0, 1), repeat=3))
    for i, c in enumerate(grid.tolist()):
        for k, o in enumerate(offsets):
            assert table[i, k] == where.get((c[0] + o[0], c[1] + o[1], c[2] + o[2]), -1)


def attention_loop(att, feat, order, patch):
    """Plain definition: split the curve into patches of `patch`; the last, incomplete one is
    topped up with the curve positions one patch earlier (official padding); softmax attention
    per head inside each patch; each point takes the output at its own (real) position."""
    n, c = feat.shape
    h = att.num_heads
    d = c // h
    qkv = att.qkv(feat)
    out = torch.zeros(n, c)
    n_patches = -(-n // patch)
    for p in range(n_patches):
        pos = list(range(p * patch, min((p + 1) * patch, n)))
        if len(pos) < patch:
            pos += list(range(n - patch, n - patch + (patch - len(pos))))
        members = order[pos]
        for head in range(h):
            q = qkv[members, head * d : (head + 1) * d]
            k = qkv[members, c + head * d : c + (head + 1) * d]
            v = qkv[members, 2 * c + head * d : 2 * c + (head + 1) * d]
            w = torch.softmax(q @ k.T * d**-0.5, dim=1)
            res = w @ v
            for j, position in enumerate(pos):
                if position >= p * patch:  # a real slot of this patch, not a pad copy
                    out[order[position], head * d : (head + 1) * d] = res[j]
    return att.proj(out)


@pytest.mark.parametrize("n,patch", [(150, 64), (128, 64), (40, 64)])
def test_serialized_attention_matches_plain_patches(n, patch):
    torch.manual_seed(0)
    att = ptv3.SerializedAttention(16, 4, patch)
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(n, 16, generator=g)
    order = torch.randperm(n, generator=g)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    with torch.no_grad():
        got = att(feat, order, inverse, chunk_bytes=4 * 4 * patch * patch)  # one patch per chunk
        want = attention_loop(att, feat, order, min(n, patch))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_grid_pooling_is_max_over_cells():
    torch.manual_seed(0)
    pool = ptv3.GridPooling(6, 4, stride=2)
    g = torch.Generator().manual_seed(0)
    grid = torch.unique(torch.randint(0, 10, (200, 3), generator=g), dim=0)
    x = torch.randn(len(grid), 6, generator=g)
    with torch.no_grad():
        out, coarse, cell = pool(x, grid)
        assert torch.equal(coarse[cell], grid // 2)
        assert len(torch.unique(coarse, dim=0)) == len(coarse)
        y = pool.proj(x)
        for m in range(len(coarse)):
            want = pool.act(pool.norm[0](y[cell == m].max(0).values))
            torch.testing.assert_close(out[m], want, atol=1e-6, rtol=1e-5)


def test_upcast_against_ancestor_loop():
    model = small_model()
    xyz, rgb, nrm = surfaces(1500)
    feat, grid, _ = sonata_input(xyz, rgb, nrm)
    with torch.no_grad():
        levels = model(feat, grid, generator=torch.Generator().manual_seed(0))
        top, index = ptv3.upcast(levels, 2)
    assert top.shape[1] == model.upcast_dim(2) == 16 + 32 + 32
    for v in range(0, len(grid), 37):
        anc = [v]
        for s in range(1, len(levels)):
            anc.append(int(levels[s].parent[anc[-1]]))
            # pooling by stride 2 four times: ancestors are the cells of grid // 2**s
            assert levels[s].grid[anc[s]].tolist() == (grid[v] // 2**s).tolist()
        want = torch.cat([levels[2].feat[anc[2]], levels[3].feat[anc[3]], levels[4].feat[anc[4]]])
        assert torch.equal(top[index[v]], want)


# ----------------------------------------------------------------------------- official checkpoint layout


def official_sonata_keys() -> dict[str, tuple]:
    """Names and shapes of the encoder parameters in the official sonata.pth, written out from
    the official module tree (sonata/model.py, PointTransformerV3 with enc_mode=True,
    mask_token=True, layer_scale=None): embedding.stem.{linear,norm}, embedding.mask_token,
    enc.enc<s>.down.{proj, norm.0} (s > 0), enc.enc<s>.block<i>.{cpe.0 (spconv SubMConv3d, weight
    (out, 3, 3, 3, in)), cpe.1 (Linear), cpe.2 (LayerNorm), norm1.0, attn.qkv, attn.proj, norm2.0,
    mlp.0.fc1, mlp.0.fc2}."""
    ch, depths = (48, 96, 192, 384, 512), (3, 3, 3, 12, 3)
    keys = {
        "embedding.mask_token": (1, 48),
        "embedding.stem.linear.weight": (48, 9),
        "embedding.stem.linear.bias": (48,),
        "embedding.stem.norm.weight": (48,),
        "embedding.stem.norm.bias": (48,),
    }
    for s, (c, depth) in enumerate(zip(ch, depths)):
        pre = f"enc.enc{s}."
        if s:
            keys.update(
                {
                    pre + "down.proj.weight": (c, ch[s - 1]),
                    pre + "down.proj.bias": (c,),
                    pre + "down.norm.0.weight": (c,),
                    pre + "down.norm.0.bias": (c,),
                }
            )
        for i in range(depth):
            b = f"{pre}block{i}."
            keys.update(
                {
                    b + "cpe.0.weight": (c, 3, 3, 3, c),
                    b + "cpe.0.bias": (c,),
                    b + "cpe.1.weight": (c, c),
                    b + "cpe.1.bias": (c,),
                    b + "cpe.2.weight": (c,),
                    b + "cpe.2.bias": (c,),
                    b + "norm1.0.weight": (c,),
                    b + "norm1.0.bias": (c,),
                    b + "attn.qkv.weight": (3 * c, c),
                    b + "attn.qkv.bias": (3 * c,),
                    b + "attn.proj.weight": (c, c),
                    b + "attn.proj.bias": (c,),
                    b + "norm2.0.weight": (c,),
                    b + "norm2.0.bias": (c,),
                    b + "mlp.0.fc1.weight": (4 * c, c),
                    b + "mlp.0.fc1.bias": (4 * c,),
                    b + "mlp.0.fc2.weight": (c, 4 * c),
                    b + "mlp.0.fc2.bias": (c,),
                }
            )
    return keys


def test_official_state_dict_loads_strictly():
    spec = official_sonata_keys()
    model = build_encoder(SONATA_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec
    assert sum(int(np.prod(s)) for s in spec.values()) == ptv3.n_parameters(model) == 108_461_376
    state = {k: torch.full(s, 0.5) for k, s in spec.items()}
    res = model.load_state_dict(state, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert model.upcast_dim(2) == 1088 and model.upcast_dim(4) == 1232  # Sonata's head / linear-probe widths


@needs_scannet
def test_official_config_on_2k_real_points():
    torch.manual_seed(0)
    model = build_encoder(SONATA_CONFIG).eval()
    d = np.load(S00 / "points_xyzrgb.npy")[:2000]
    scene = Scene("s", d[:, :3].copy(), d[:, 3:].astype(np.uint8))
    feat = sonata_features(model, scene.xyz, scene.rgb, scene.normals)
    assert feat.shape == (2000, 1088) and feat.dtype == torch.float32
    assert torch.isfinite(feat).all()
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(2000), atol=1e-5, rtol=0)
    # points of one 8 cm cell (stage 2) share a feature; different cells differ
    _, grid, inverse = sonata_input(scene.xyz, scene.rgb, scene.normals)
    cell = (grid[inverse] // 4).numpy()
    _, cid = np.unique(cell, axis=0, return_inverse=True)
    cid = cid.ravel()
    first = np.unique(cid, return_index=True)[1]
    assert torch.equal(feat, feat[torch.from_numpy(first[cid])])
    assert len(torch.unique(feat[torch.from_numpy(first)], dim=0)) == len(first)


# ----------------------------------------------------------------------------- input transform


def test_grid_sample_representatives():
    """GridSample as Sonata's inference transform runs it: float32 cells, one point per cell drawn
    uniformly (seeded, independent of the input order)."""
    rng = np.random.default_rng(0)
    coord = rng.uniform(-0.1, 0.1, (3000, 3)).astype(np.float32)
    grid, rep, inverse = grid_sample(coord, 0.02)
    cells = np.floor(coord / np.float32(0.02)).astype(np.int64)
    assert np.array_equal(grid[inverse], cells - cells.min(0))
    assert len(np.unique(grid, axis=0)) == len(grid)
    assert np.array_equal(inverse[rep], np.arange(len(grid)))  # each cell keeps one of its own points
    again = grid_sample(coord, 0.02)[1]
    assert np.array_equal(again, rep) and not np.array_equal(grid_sample(coord, 0.02, seed=1)[1], rep)
    perm = rng.permutation(len(coord))
    g2, rep2, _ = grid_sample(coord[perm], 0.02)
    assert np.array_equal(g2, grid) and np.array_equal(coord[perm][rep2], coord[rep])  # same points, any order
    # the draw is uniform over a cell's points: 4 points in one cell, 800 seeds
    cell4 = np.float32([[0.001, 0.001, 0.001], [0.005, 0.002, 0.003], [0.012, 0.019, 0.001], [0.019, 0.0, 0.01]])
    picks = np.bincount([grid_sample(cell4, 0.02, seed=s)[1][0] for s in range(800)], minlength=4)
    assert picks.min() > 150 and picks.max() < 250, picks  # 200 expected, sd ~12
    # a coordinate on a cell boundary in float32 (0.04 = 2 x 0.02 in float32, 1.99999... in float64)
    edge = grid_sample(np.float32([[0.0, 0, 0], [0.04, 0, 0]]), 0.02)[0]
    assert edge[:, 0].tolist() == [0, 2]


def test_sonata_input_features():
    xyz, rgb, nrm = surfaces(900)
    xyz = xyz + np.float32([10, -4, 2])
    feat, grid, inverse = sonata_input(xyz, rgb, nrm)
    assert feat.shape == (len(grid), 9) and inverse.shape == (900,)
    coord = feat[:, :3].numpy()
    lo, hi = xyz.min(0), xyz.max(0)
    # centred in x, y on the bounding box, floor at z = 0; the representatives are input points
    np.testing.assert_allclose(coord.min(0)[2], 0, atol=1e-6)
    np.testing.assert_allclose(coord[:, :2].min(0) + coord[:, :2].max(0), 0, atol=0.04)
    np.testing.assert_allclose(
        coord[inverse.numpy()], xyz - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], atol=0.035
    )
    assert feat[:, 3:6].min() >= 0 and feat[:, 3:6].max() <= 1
    np.testing.assert_allclose(feat[:, 6:].norm(dim=1), 1, atol=1e-6)


@needs_scannet
def test_sonata_input_is_the_official_transform_on_real_points():
    """Sonata's transform.default() on scene0000_00, recomputed step by step as the official code
    computes it (under the numpy 1.26 Sonata and GeoPurify pin: float32 coordinates, CenterShift's
    x/y shift in float64): CenterShift(apply_z=True); GridSample(0.02) keeping one point of each
    occupied cell, with the inverse; NormalizeColor (/ 255); Collect(feat = coord, color, normal)."""
    d = np.load(S00 / "points_xyzrgb.npy")
    xyz, rgb = d[:, :3].astype(np.float32), d[:, 3:].astype(np.uint8)
    nrm = np.random.default_rng(0).normal(size=xyz.shape).astype(np.float32)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    lo, hi = xyz.min(0), xyz.max(0)
    shift = np.array([np.float64(lo[0] + hi[0]) / 2, np.float64(lo[1] + hi[1]) / 2, lo[2]])
    coord = (xyz.astype(np.float64) - shift).astype(np.float32)
    cell = np.floor(coord / np.float32(0.02)).astype(np.int64)
    cell -= cell.min(0)
    color = rgb.astype(np.float32) / 255
    expected = np.concatenate([coord, color, nrm], 1)  # each point's features, were it its cell's pick

    feat, grid, inverse = (t.numpy() for t in sonata_input(xyz, rgb, nrm))
    assert feat.dtype == np.float32 and feat.shape == (len(grid), 9) and inverse.shape == (len(xyz),)
    assert np.array_equal(grid[inverse], cell)  # every point in its own cell
    assert len(grid) == len(np.unique(cell, axis=0)) == len(np.unique(grid, axis=0))  # one voxel per cell
    own = (expected == feat[inverse]).all(1)  # points whose features are exactly their voxel's
    assert (np.bincount(inverse[own], minlength=len(grid)) >= 1).all()  # every voxel is one of its points
    assert 0 <= feat[:, 3:6].min() and feat[:, 3:6].max() == color.max() > 0.9  # Sonata's [0, 1] colours
    assert abs(feat[:, 0].min() + feat[:, 0].max()) < 0.03 and feat[:, 2].min() < 0.02  # centred, floor at 0

    ref = sonata_input(xyz, rgb, nrm, color_scale="reference")[0].numpy()  # GeoPurify's code: / 255 twice
    np.testing.assert_array_equal(ref[:, 3:6], feat[:, 3:6] / np.float32(255))
    assert ref[:, 3:6].max() <= 1 / 255 and np.array_equal(ref[:, [0, 1, 2, 6, 7, 8]], feat[:, [0, 1, 2, 6, 7, 8]])
    none = sonata_input(xyz, None, None)[0].numpy()  # no colours / normals: zeros, as Sonata documents
    assert not none[:, 3:].any() and np.array_equal(none[:, :3], feat[:, :3])


# ----------------------------------------------------------------------------- the teacher


def test_teacher_shapes_determinism_and_seed(tmp_path):
    path = save_ckpt(tmp_path / "sonata.pth", small_model(), prefix="module.")
    xyz, rgb, nrm = surfaces(2500)
    scene = Scene("toy", xyz, rgb)
    scene.normals = nrm
    t = SonataTeacher(path, progress=False)
    assert not t.stand_in and t.describe() == "sonata" and t.dim == 80
    a, b = t.embed(scene), t.embed(scene)
    assert a.shape == (2500, 80) and a.dtype == torch.float32 and not a.requires_grad
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2500), atol=1e-5, rtol=0)
    other = SonataTeacher(path, seed=1, progress=False).embed(scene)
    assert (other - a).abs().max() > 1e-3  # the shuffled serialization orders matter
    again = SonataTeacher(path, progress=False).embed(scene)
    assert torch.equal(a, again)


def test_teacher_input_switches(tmp_path):
    """teacher.missing_normals: a bare point cloud (PCA normals only) gives Sonata zero normals by
    default; teacher.color_scale: reference feeds colours / 255 twice. Both key the cache."""
    from geopurify.teacher.cache import teacher_key

    path = save_ckpt(tmp_path / "sonata.pth", small_model())
    xyz, rgb, nrm = surfaces(1200)
    bare = Scene("bare", xyz, rgb)
    meshy = Scene("mesh", xyz, rgb)
    meshy.set_normals(nrm, "mesh")
    t = SonataTeacher(path, progress=False)
    assert t.input_normals(bare) is None and bare.normals_source == "pca" and bare._normals is None
    assert t.input_normals(meshy) is nrm
    torch.testing.assert_close(t.embed(bare), sonata_features(t.model, xyz, rgb, np.zeros_like(nrm)), atol=1e-6, rtol=0)
    tp = SonataTeacher(path, progress=False, missing_normals="pca")
    assert np.array_equal(tp.input_normals(bare), bare.normals)
    tr = SonataTeacher(path, progress=False, color_scale="reference")
    a, b = t.embed(meshy), tr.embed(meshy)
    torch.testing.assert_close(b, sonata_features(t.model, xyz, rgb, nrm, color_scale="reference"), atol=1e-6, rtol=0)
    assert (a - b).abs().max() > 1e-3
    keys = [teacher_key(x)["settings"] for x in (t, tp, tr)]
    assert keys[0] != keys[1] and keys[0] != keys[2]
    for key, bad in (("color_scale", "255"), ("missing_normals", "none")):
        with pytest.raises(InputError, match=f"teacher.{key}"):
            SonataTeacher(path, **{key: bad})


def test_permuting_points_permutes_features():
    model = small_model(1)
    xyz, rgb, nrm = surfaces(2400, seed=3)
    perm = np.random.default_rng(5).permutation(len(xyz))
    a = sonata_features(model, xyz, rgb, nrm, seed=4)
    b = sonata_features(model, xyz[perm], rgb[perm], nrm[perm], seed=4)
    torch.testing.assert_close(b, a[torch.from_numpy(perm)], atol=2e-5, rtol=1e-4)


def test_safetensors_checkpoint_matches_pth(tmp_path):
    import json

    from safetensors.torch import save_file

    model = small_model(2)
    pth = save_ckpt(tmp_path / "sonata.pth", model)
    (tmp_path / "hub").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "hub" / "model.safetensors")
    (tmp_path / "hub" / "config.json").write_text(json.dumps(SMALL))
    xyz, rgb, nrm = surfaces(900)
    a = sonata_features(load_sonata(pth), xyz, rgb, nrm)
    b = sonata_features(load_sonata(tmp_path / "hub" / "model.safetensors"), xyz, rgb, nrm)
    assert torch.equal(a, b)


def test_layer_scale_and_post_norm_configs_run():
    cfg = dict(SMALL, layer_scale=1e-3, pre_norm=False)
    model = build_encoder(cfg).eval()
    assert "enc.enc0.block0.ls1.0.gamma" in model.state_dict()
    xyz, rgb, nrm = surfaces(600)
    out = sonata_features(model, xyz, rgb, nrm)
    assert out.shape == (600, 80) and torch.isfinite(out).all()


def test_build_teacher_sonata(tmp_path):
    path = save_ckpt(tmp_path / "s.pth", small_model())
    cfg = defaults()
    cfg["teacher"].update(name="sonata", ckpt=str(path))
    t = build_teacher(cfg)
    assert isinstance(t, SonataTeacher) and t.ckpt == str(path) and t.dim == 80


# ----------------------------------------------------------------------------- bad checkpoints


def _problem(excinfo, path):
    e = excinfo.value
    assert e.path == str(path) and "\n" not in str(e)
    return e.problem


def test_missing_and_unset_checkpoint(tmp_path):
    with pytest.raises(InputError) as ei:
        SonataTeacher(tmp_path / "nope.pth")
    assert "not found" in _problem(ei, tmp_path / "nope.pth")
    with pytest.raises(InputError, match="teacher.ckpt"):
        SonataTeacher(None)


def test_corrupt_checkpoints(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InputError) as ei:
        SonataTeacher(junk)
    assert "not a readable PyTorch checkpoint" in _problem(ei, junk)

    truncated = tmp_path / "trunc.pth"
    save_ckpt(truncated, small_model())
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(InputError) as ei:
        read_checkpoint(truncated)
    _problem(ei, truncated)

    bare = tmp_path / "bare.pth"
    torch.save(small_model().state_dict(), bare)  # no config
    with pytest.raises(InputError) as ei:
        SonataTeacher(bare)
    assert "'config' and 'state_dict'" in _problem(ei, bare)


def test_mismatched_checkpoints(tmp_path):
    state = small_model().state_dict()
    short = tmp_path / "short.pth"
    torch.save({"config": SMALL, "state_dict": {k: v for k, v in state.items() if "enc4" not in k}}, short)
    with pytest.raises(InputError) as ei:
        load_sonata(short)
    assert "missing keys" in _problem(ei, short)

    extra = tmp_path / "extra.pth"
    torch.save({"config": SMALL, "state_dict": {**state, "seg_head.weight": torch.zeros(2)}}, extra)
    with pytest.raises(InputError) as ei:
        load_sonata(extra)
    assert "unexpected keys" in _problem(ei, extra) and "seg_head.weight" in str(ei.value)

    wrong = tmp_path / "wrong.pth"
    torch.save(
        {"config": dict(SMALL, enc_channels=(8, 16, 16, 32, 64), enc_num_head=(2, 2, 2, 4, 8)), "state_dict": state},
        wrong,
    )
    with pytest.raises(InputError) as ei:
        load_sonata(wrong)
    assert "wrong shape" in _problem(ei, wrong)

    for bad_cfg, words in (
        (dict(SMALL, enc_mode=False), "enc_mode"),
        (dict(SMALL, colour_jitter=1), "unknown"),
        (dict(SMALL, enable_rpe=True), "relative position"),
        (dict(SMALL, in_channels=6), "in_channels"),
    ):
        p = tmp_path / "cfg.pth"
        torch.save({"config": bad_cfg, "state_dict": state}, p)
        with pytest.raises(InputError) as ei:
            load_sonata(p)
        assert words in _problem(ei, p)


def test_scene_too_wide_for_serialization(tmp_path):
    t = SonataTeacher(save_ckpt(tmp_path / "s.pth", small_model()), progress=False)
    xyz = np.float32([[0, 0, 0], [1400, 0, 0], [0, 1, 0]])  # 70,000 cells of 2 cm > 2**16
    scene = Scene("wide", xyz, np.zeros((3, 3), np.uint8))
    scene.normals = np.tile(np.float32([0, 0, 1]), (3, 1))
    with pytest.raises(InputError, match="exceeds"):
        t.embed(scene)

"""Pair sampling and InfoNCE: hand-checked cases and equality with plain-loop definitions."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.distill.loss import info_nce, ranking_accuracy
from geopurify.distill.sampling import Pairs, n_anchors_for, row_argmax, sample_pairs, spatial_neighbours


def _unit2d(deg):
    t = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return torch.from_numpy(np.stack([np.cos(t), np.sin(t)], 1))


def _row(pairs, a):
    i = int((pairs.anchor == a).nonzero()[0, 0])
    return int(pairs.positive[i]), pairs.negatives[i].tolist()


def test_hand_checked_case():
    # points on a line (metres) with 2-d teacher directions (degrees); distances and angles tie-free
    x = [0, 1, 1.5, 3, 3.2, 5, 7.05, 7.1, 9, 12]
    deg = [0, 10, 170, 30, 90, 45, 180, 20, 135, 65]
    xyz = np.stack([x, np.zeros(10), np.zeros(10)], 1)
    pairs = sample_pairs(
        _unit2d(deg), xyz, n_anchors=10, n_macro=2, n_micro=2, micro_k=4, generator=torch.Generator().manual_seed(3)
    )
    assert sorted(pairs.anchor.tolist()) == list(range(10))
    # anchor 0 (0 deg, x=0): positive 10 deg (#1); lowest cosines 180 (#6), 170 (#2);
    # 4 nearest {1, 2, 3, 4} minus the positive -> lowest cosine: #2 (170), #4 (90)
    assert _row(pairs, 0) == (1, [6, 2, 2, 4])
    # anchor 5 (45 deg, x=5): positive 30 deg (#3); lowest 180 (#6), 170 (#2);
    # 4 nearest {4 (1.8 m), 3 (2.0), 6 (2.05), 7 (2.1)} minus #3 -> #6 (135 deg off), #4 (45 off)
    assert _row(pairs, 5) == (3, [6, 2, 6, 4])


def _naive(teacher, xyz, a, n_macro, n_micro, k):
    """Plain-loop definition for one anchor."""
    n = len(teacher)
    cos = [float(np.dot(teacher[a], teacher[j])) for j in range(n)]
    others = [j for j in range(n) if j != a]
    pos = max(others, key=lambda j: cos[j])
    macro = sorted([j for j in others if j != pos], key=lambda j: cos[j])[:n_macro]
    dist = [float(np.sum((xyz[a] - xyz[j]) ** 2)) for j in range(n)]
    near = sorted(others, key=lambda j: dist[j])[:k]
    micro = sorted([j for j in near if j != pos], key=lambda j: cos[j])[:n_micro]
    return pos, macro + micro


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_naive_definition(seed):
    rng = np.random.default_rng(seed)
    n, d = 300, 8
    t = rng.normal(size=(n, d))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    xyz = rng.uniform(0, 2, size=(n, 3))
    teacher = torch.from_numpy(t)
    g = torch.Generator().manual_seed(seed)
    pairs = sample_pairs(
        teacher, xyz, n_anchors=40, n_macro=48, n_micro=15, micro_k=96, generator=g, chunk_elems=7 * n
    )  # several chunks
    assert pairs.negatives.shape == (40, 63) and len(set(pairs.anchor.tolist())) == 40
    for i, a in enumerate(pairs.anchor.tolist()):
        pos, neg = _naive(t, xyz, a, 48, 15, 96)
        assert int(pairs.positive[i]) == pos
        assert pairs.negatives[i].tolist() == neg
    # same seed, same pairs; chunking and float32 do not change the answer on tie-free data
    again = sample_pairs(teacher.float(), torch.from_numpy(xyz), 40, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.anchor, pairs.anchor) and torch.equal(again.positive, pairs.positive)
    assert torch.equal(again.negatives, pairs.negatives)


def test_neighbours_exclude_self_even_with_duplicates():
    xyz = np.zeros((6, 3))
    xyz[3:] = [[1, 0, 0], [2, 0, 0], [3, 0, 0]]  # points 0, 1, 2 coincide
    nb = spatial_neighbours(xyz, np.array([0, 1, 5]), 2)
    assert 0 not in nb[0] and set(nb[0]) == {1, 2}
    assert 1 not in nb[1] and set(nb[1]) == {0, 2}
    assert nb[2].tolist() == [4, 3]


def test_sizes_checked():
    t = _unit2d(np.arange(20) * 7.0)
    with pytest.raises(ValueError):
        sample_pairs(t, np.random.default_rng(0).normal(size=(20, 3)), 5, n_macro=48)
    assert n_anchors_for(100_000) == 4096 and n_anchors_for(900) == 300


@pytest.mark.parametrize("config", [None, *sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))])
def test_anchor_count_is_the_reference_integer_division(config):
    """anchors = min(4096, N // 3) exactly, with every shipped config. The old float key
    (anchor_frac 0.3333333333) gave int(N * 0.333..) = N // 3 - 1 whenever 3 divides N below ~12,300."""
    from geopurify.config import load_config

    d = load_config(config)["distill"]
    for n in (3, 300, 900, 9999, 12285, 12288, 12289, 12300, 100_000):
        assert n_anchors_for(n, d["max_anchors"], d["anchor_div"]) == min(4096, n // 3), n


def test_info_nce_hand_computation():
    emb = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]], dtype=torch.float64), dim=1
    )
    pairs = Pairs(torch.tensor([0, 2]), torch.tensor([1, 1]), torch.tensor([[3, 4], [0, 3]]), 1)
    tau = 0.5
    want = 0.0
    for a, p, ns in ((0, 1, (3, 4)), (2, 1, (0, 3))):
        cos = lambda i, j: float(emb[i] @ emb[j])
        num = math.exp(cos(a, p) / tau)
        want += -math.log(num / (num + sum(math.exp(cos(a, n) / tau) for n in ns)))
    want /= 2
    assert info_nce(emb, pairs, tau=tau).item() == pytest.approx(want, rel=1e-12)
    # anchor 0: positive cos .8 beats -1 and .6; anchor 2: positive .6 beats 0 and 0 -> both top-1
    acc = ranking_accuracy(emb, pairs)
    assert acc["top1"] == 1.0 and acc["pairwise"] == 1.0 and acc["chance_top1"] == pytest.approx(1 / 3)


def test_info_nce_gradient_pulls_positive():
    torch.manual_seed(0)
    emb0 = torch.nn.functional.normalize(torch.randn(50, 4, dtype=torch.float64), dim=1).requires_grad_()
    g = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64, generator=g), dim=1)
    pairs = sample_pairs(
        teacher, np.random.default_rng(0).normal(size=(50, 3)), 16, n_macro=10, n_micro=3, micro_k=8, generator=g
    )
    loss = info_nce(emb0, pairs)
    loss.backward()
    emb1 = torch.nn.functional.normalize(emb0.detach() - 0.05 * emb0.grad, dim=1)
    assert info_nce(emb1, pairs) < loss


def test_row_argmax_is_torch_argmax_with_ties_and_infinities():
    """The CPU shortcut of the positive's argmax picks exactly torch's index: the first maximum
    among ties, -inf (the masked anchor) never, +inf first; float32 and float64, wide rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (64, 3001), generator=g).float()  # many ties per row
    x[:, 0] = -torch.inf
    x[3, 7] = x[3, 9] = torch.inf
    for t in (x, x.double(), x[:, ::2]):  # the last one is a non-contiguous view
        got = row_argmax(t)
        assert got.dtype == torch.int64
        assert torch.equal(got, t.argmax(1))
    assert int(row_argmax(x)[3]) == 7

"""Scene selection for the ~1.5% subset: median filters, k-means clusters, best score per cluster."""

import math

import numpy as np
import pytest

from geopurify.distill.subset import kmeans, label_histogram, scene_stats, select_subset, select_subset_details


def H(*counts):
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


# two room types (classes 0-2 vs 3-5) plus scenes too poor to pass the median filters
HISTS = {
    "a1": [50, 30, 20, 0, 0, 0],  # Nc 3, Hc 1.485 -> fails Hc >= median
    "a2": [40, 40, 20, 5, 0, 0],  # Nc 4, Hc 1.725
    "a3": [34, 33, 33, 0, 0, 0],  # Nc 3, Hc 1.585
    "b1": [0, 0, 5, 40, 30, 30],  # Nc 4, Hc 1.771
    "b2": [0, 0, 0, 34, 33, 33],  # Nc 3, Hc 1.585
    "f1": [100, 0, 0, 0, 0, 0],  # Nc 1
    "f2": [0, 0, 0, 90, 10, 0],  # Nc 2
    "f3": [0, 50, 50, 0, 0, 0],  # Nc 2
}


def test_stats_and_histogram():
    assert scene_stats([40, 40, 20, 5, 0, 0]) == (4, pytest.approx(H(40, 40, 20, 5)))
    assert scene_stats([0, 0]) == (0, 0.0)
    assert scene_stats([7, 0]) == (1, 0.0)
    labels = np.array([0, 2, 2, -1, 5, 2, -1])
    np.testing.assert_array_equal(label_histogram(labels, 6), [1, 0, 3, 0, 0, 1])
    with pytest.raises(ValueError):
        label_histogram(np.array([6]), 6)


def test_filter_clusters_and_best_per_cluster():
    sel = select_subset_details(HISTS, k=2, gamma=1.0, seed=0)
    assert sel.median_nc == 3.0
    assert sel.median_hc == pytest.approx((H(50, 30, 20) + H(34, 33, 33)) / 2)
    assert sel.kept == ["a2", "a3", "b1", "b2"]
    assert sel.cluster["a2"] == sel.cluster["a3"] != sel.cluster["b1"] == sel.cluster["b2"]
    # S = norm(H) + norm(Nc) over the kept scenes: b1 = 1 + 1, a2 = (1.725-1.585)/(1.771-1.585) + 1
    h_lo, h_hi = H(34, 33, 33), H(5, 40, 30, 30)
    assert sel.score["b1"] == pytest.approx(2.0)
    assert sel.score["a2"] == pytest.approx((H(40, 40, 20, 5) - h_lo) / (h_hi - h_lo) + 1.0)
    assert sel.score["a3"] == pytest.approx(0.0) and sel.score["b2"] == pytest.approx(0.0)
    assert sel.selected == ["b1", "a2"]
    assert select_subset(HISTS, k=2) == ["b1", "a2"]


def test_clusters_raw_class_counts_not_proportions():
    """k-means runs on raw point counts (the reference's data_choose_zero.py): two large rooms of
    different composition cluster together, apart from two small rooms; proportions would pair each
    large room with the small room of its composition (what the old code did)."""
    hists = {
        "big_a": [1000, 1000, 500],
        "big_b": [500, 1000, 1000],
        "small_a": [10, 10, 5],
        "small_b": [5, 10, 10],
    }  # same Nc and Hc: all pass the filters
    for seed in range(5):
        sel = select_subset_details(hists, k=2, seed=seed)
        assert sel.kept == sorted(hists)
        assert sel.cluster["big_a"] == sel.cluster["big_b"] != sel.cluster["small_a"] == sel.cluster["small_b"]


def test_gamma_trades_entropy_against_class_count():
    hists = {
        "x": [60, 10, 10, 10, 10],
        "y": [25, 25, 25, 25, 0],  # x: more classes, y: higher entropy
        "p": [10, 0, 0, 0, 0],
        "q": [0, 5, 0, 0, 0],
    }
    assert select_subset_details(hists, k=1).kept == ["x", "y"]
    assert select_subset(hists, k=1, gamma=2.0) == ["x"]
    assert select_subset(hists, k=1, gamma=0.5) == ["y"]
    assert select_subset(hists, k=1, gamma=1.0) == ["x"]  # tie (1 vs 1): first name


def test_fewer_kept_than_k_and_nothing_kept():
    sel = select_subset_details(HISTS, k=20)
    assert sel.k == 4 and sorted(sel.selected) == ["a2", "a3", "b1", "b2"]
    # medians of Nc and Hc met by no single scene: empty subset
    assert select_subset({"m": [5, 5, 5, 5, 100], "n": [1, 1, 0, 0, 0]}, k=2) == []


def test_deterministic_and_order_independent():
    rng = np.random.default_rng(7)
    hists = {f"scene{i:04d}_00": rng.integers(0, 50, 20) * (rng.random(20) < 0.6) for i in range(120)}
    first = select_subset(hists, k=20, seed=3)
    assert len(first) == 20 and len(set(first)) == 20
    shuffled = dict(sorted(hists.items(), key=lambda kv: rng.random()))
    assert select_subset(shuffled, k=20, seed=3) == first
    sel = select_subset_details(hists, k=20, seed=3)
    # each chosen scene is the best of its cluster, one per cluster
    for name in first:
        c = sel.cluster[name]
        assert sel.score[name] == max(s for n, s in sel.score.items() if sel.cluster[n] == c)
    assert len({sel.cluster[n] for n in first}) == 20
    assert all(sel.nc[n] >= sel.median_nc and sel.hc[n] >= sel.median_hc for n in sel.kept)


def test_kmeans_is_a_fixed_point_and_seeded():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, size=(40, 3)) for c in (0.0, 3.0, 6.0, 9.0)])
    centres, assign = kmeans(x, 4, seed=5)
    assert sorted(np.bincount(assign).tolist()) == [40, 40, 40, 40]  # well separated blobs found
    # Lloyd fixed point: every point at its nearest centre, every centre the mean of its points
    dist = ((x[:, None] - centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, dist.argmin(1))
    for c in range(4):
        np.testing.assert_allclose(centres[c], x[assign == c].mean(0))
    c2, a2 = kmeans(x, 4, seed=5)
    np.testing.assert_array_equal(a2, assign)
    # duplicates and k = M: every cluster non-empty
    dup = np.array([[0.0, 0.0]] * 3 + [[1.0, 1.0]])
    _, a = kmeans(dup, 4, seed=0)
    assert sorted(a.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        kmeans(dup, 5)


def test_select_subset_cli_writes_the_scene_list(tmp_path, capsys):
    from geopurify.cli import main
    from geopurify.data.labels import get_label_set
    from geopurify.data.layout import read_scene_list
    from geopurify.data.readers import list_scenes
    from geopurify.data.writers import write_scene

    # NYU40 ids 1 wall, 2 floor, 3 cabinet, 4 bed, 5 chair, 6 sofa, 7 table, 33 toilet, 34 sink; 22 ceiling is ignored
    rng = np.random.default_rng(0)
    raw_counts = {
        "scene0001_00": {1: 300, 2: 200, 4: 80, 5: 60, 7: 40, 22: 100},
        "scene0002_00": {1: 300, 2: 200, 4: 30, 5: 60, 7: 40, 6: 50, 22: 100},
        "scene0003_00": {1: 200, 2: 100, 33: 40, 34: 30, 3: 20},
        "scene0004_00": {1: 150, 2: 100, 33: 50, 34: 40, 3: 40, 7: 10},
        "scene0005_00": {1: 500, 2: 20},
        "scene0006_00": {1: 100, 22: 400},
    }
    hists = {}
    label_set = get_label_set("scannet20")
    for name, counts in raw_counts.items():
        labels = np.concatenate([np.full(c, k, np.int32) for k, c in counts.items()])
        xyz = rng.uniform(0, 3, size=(labels.size, 3)).astype(np.float32)
        write_scene(tmp_path / "root" / name, xyz, np.zeros((labels.size, 3), np.uint8), labels=labels)
        hists[name] = label_histogram(label_set.map(labels), 20)
    out = tmp_path / "subset.txt"
    rc = main(
        [
            "select-subset",
            "--root",
            str(tmp_path / "root"),
            "--label-set",
            "scannet20",
            "--k",
            "2",
            "--gamma",
            "0.5",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    expect = select_subset(hists, k=2, gamma=0.5, seed=1)
    # kept: 0001, 0002 (bedrooms) and 0004 (bathroom); the best of each cluster, best score first
    assert expect == ["scene0004_00", "scene0002_00"]
    assert read_scene_list(out) == expect  # the format data.train_list reads
    assert [p.name for p in list_scenes(tmp_path / "root", out)] == expect
    # a scene without labels cannot be scored: one-line error naming it
    write_scene(tmp_path / "root" / "scene0007_00", np.zeros((5, 3), np.float32), np.zeros((5, 3), np.uint8))
    assert main(["select-subset", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "s2.txt")]) == 2
    assert "scene0007_00" in capsys.readouterr().err and not (tmp_path / "s2.txt").exists()

"""Benchmark: one distillation iteration (pair sampling, student forward, InfoNCE, backward, AdamW)
on a ~100k-point scene, and the pair sampling against the reference code's.

Ours is `geopurify.distill.step.train_step`, the code path training runs, on a scene prepared as
in every epoch after the first (features read from the cache, kept in RAM). The reference for the
sampling step re-implements GeoPurify's `sample_contrastive_pairs_hybrid` (METHOD.md section 3):
an exact kNN (K + 1, self dropped) for every point of the scene, then one dense (A, N) cosine
matrix, a clone for the positive, an (A, N) exclusion mask for the negatives, top-k over the full
matrix. Both sides draw the same anchors; the script checks they return the same pairs (the
reference also allows the positive as a micro-negative; we exclude it).

Peak memory: resource.getrusage max RSS on the CPU (tracemalloc does not see torch), read after
our iterations and again after the reference; torch.cuda.max_memory_allocated on a GPU, where
the paper preset (512 wide, 4 blocks) is timed as well.

Default scene: a procedural room (geopurify.standins.rooms; an OFFLINE STAND-IN for a ScanNet scan)
with the simulated VLM (stand-in) and the geometric teacher (stand-in for Sonata), generated
once under --work. `--scene DIR` benchmarks a scene on disk instead.

    python bench/train.py [--scene DIR] [--points 100000] [--iters 3] [--threads N] [--work DIR]

Ends with one JSON line {"s_per_it", "peak_mem_gb", "preset", ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geopurify.config import load_config  # noqa: E402
from geopurify.distill.sampling import n_anchors_for, sample_pairs  # noqa: E402
from geopurify.distill.scenes import SceneStore  # noqa: E402
from geopurify.distill.schedule import build_optimizer  # noqa: E402
from geopurify.distill.step import train_step  # noqa: E402
from geopurify.student.network import build_student  # noqa: E402
from geopurify.teacher import build_teacher  # noqa: E402

log = logging.getLogger("bench.train")


def maxrss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@torch.no_grad()
def reference_sample_pairs(
    teacher: torch.Tensor,
    xyz: np.ndarray,
    n_anchors: int,
    generator: torch.Generator,
    n_macro: int = 48,
    n_micro: int = 15,
    k: int = 96,
):
    """GeoPurify's hybrid sampling as its code does it: kNN of every point, dense (A, N) matrices."""
    n = teacher.shape[0]
    _, nbr = cKDTree(xyz).query(xyz, k=k + 1)  # the reference: faiss IndexFlatL2 over all points
    neighbor_indices = torch.from_numpy(nbr[:, 1:].astype(np.int64))
    anchor = torch.randperm(n, generator=generator)[:n_anchors]
    sim_global = teacher[anchor] @ teacher.T
    sim_pos = sim_global.clone()
    sim_pos.scatter_(1, anchor.unsqueeze(1), float("-inf"))
    positive = sim_pos.argmax(1)
    del sim_pos
    ar = torch.arange(n)
    exclude = (ar.unsqueeze(0) == anchor.unsqueeze(1)) | (ar.unsqueeze(0) == positive.unsqueeze(1))
    sim_neg = sim_global.clone()  # the reference masks in place; the clone keeps the local gather below exact
    sim_neg[exclude] = float("inf")
    macro = sim_neg.topk(n_macro, largest=False, dim=1).indices
    anchor_nbrs = neighbor_indices[anchor]
    local = sim_global.gather(1, anchor_nbrs)
    micro = anchor_nbrs.gather(1, local.topk(n_micro, largest=False, dim=1).indices)
    return anchor, positive, torch.cat([macro, micro], 1)


def make_scene(work: Path, points: int) -> Path:
    """A procedural room of `points` points with 10 views (generated once; a stand-in for a scan)."""
    from geopurify.standins.rooms import synthesize

    return synthesize(work / f"rooms_{points}", 1, 0, n_points=points, n_frames=10, progress=False)[0]


def time_preset(store: SceneStore, path: Path, cfg: dict, device: str, iters: int) -> dict:
    """Seconds per iteration (median of `iters` after one warm-up) and the step breakdown."""
    batch = store.get(path)
    torch.manual_seed(0)
    model = build_student(cfg["student"], int(batch.feats.shape[1])).to(device).train()
    opt, sched = build_optimizer(model, cfg, iters_per_epoch=iters + 1)
    runs = []
    for i in range(iters + 1):
        t = {}
        t0 = time.perf_counter()
        b = store.get(path)
        t["data_s"] = time.perf_counter() - t0
        loss, _ = train_step(model, opt, sched, b, cfg, torch.Generator().manual_seed(i), t)
        t["total_s"] = time.perf_counter() - t0
        t["loss"] = float(loss.detach())
        runs.append(t)
        log.info("iteration %d: %s", i, ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    steady = runs[1:]
    med = {k: float(np.median([r[k] for r in steady])) for k in steady[0]}
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "s_per_it": med["total_s"],
        "breakdown": {k: round(v, 4) for k, v in med.items() if k != "total_s"},
        "n_points": int(batch.xyz.shape[0]),
        "n_voxels": int(batch.coords.shape[0]),
        "n_anchors": n_anchors_for(
            int(batch.xyz.shape[0]), cfg["distill"]["max_anchors"], cfg["distill"]["anchor_div"]
        ),
        "in_channels": int(batch.feats.shape[1]),
        "teacher_dim": int(batch.teacher.shape[1]),
        "params_m": round(n_params / 1e6, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, default=None, help="scene directory (default: a procedural room)")
    ap.add_argument("--points", type=int, default=100_000, help="points of the procedural room")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--work", type=Path, default=REPO / "out" / "bench_train", help="rooms and feature cache")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.scene or make_scene(args.work, args.points)
    source = str(path) if args.scene else f"procedural room ({args.points} points; SYNTHETIC stand-in)"
    cfg = load_config(
        REPO / "config" / "geopurify_synthetic.yaml", {"data": {"frame_step": 1, "cache_dir": str(args.work / "cache")}}
    )
    from geopurify.vlm import build_vlm

    t0 = time.perf_counter()
    store = SceneStore(cfg, lambda: build_vlm(cfg), build_teacher(cfg), args.work / "cache", "cpu", 8.0)
    store.get(path)
    features_s = time.perf_counter() - t0
    rss0 = maxrss_gb()

    cpu = time_preset(store, path, cfg, "cpu", args.iters)
    cpu["peak_mem_gb"] = round(maxrss_gb(), 3)
    print(
        f"scene: {source}; {cpu['n_points']} points, {cpu['n_voxels']} voxels of {cfg['student']['voxel_size']} m, "
        f"{cpu['n_anchors']} anchors, teacher {cpu['teacher_dim']}-d, student input {cpu['in_channels']}-d; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"features (lift + teacher, first visit, cached afterwards): {features_s:.2f} s; RSS after: {rss0:.2f} GB")
    print(
        f"cpu preset ({cpu['params_m']} M parameters): {cpu['s_per_it']:.3f} s/iteration "
        f"(median of {args.iters}); {cpu['breakdown']}; peak RSS {cpu['peak_mem_gb']:.2f} GB"
    )

    result = {
        "s_per_it": round(cpu["s_per_it"], 4),
        "peak_mem_gb": cpu["peak_mem_gb"],
        "preset": "cpu",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "points": cpu["n_points"],
        "voxels": cpu["n_voxels"],
        "breakdown": cpu["breakdown"],
        "source": source,
    }

    if not args.skip_reference:
        b = store.get(path)
        d = cfg["distill"]
        n_anchors = cpu["n_anchors"]
        t0 = time.perf_counter()
        ours = sample_pairs(
            b.teacher,
            b.xyz,
            n_anchors,
            d["n_macro"],
            d["n_micro"],
            d["micro_k"],
            generator=torch.Generator().manual_seed(7),
        )
        ours_s = time.perf_counter() - t0
        rss_ours = maxrss_gb()
        t0 = time.perf_counter()
        ra, rp, rn = reference_sample_pairs(
            b.teacher, b.xyz, n_anchors, torch.Generator().manual_seed(7), d["n_macro"], d["n_micro"], d["micro_k"]
        )
        ref_s = time.perf_counter() - t0
        rss_ref = maxrss_gb()
        same = {
            "anchor": bool(torch.equal(ra, ours.anchor)),
            "positive": float((rp == ours.positive).float().mean()),
            "macro": float((rn[:, : d["n_macro"]] == ours.negatives[:, : d["n_macro"]]).all(1).float().mean()),
            "micro": float((rn[:, d["n_macro"] :] == ours.negatives[:, d["n_macro"] :]).all(1).float().mean()),
        }
        print(f"pair sampling, ours (chunked, kNN of anchors only): {ours_s:.3f} s, peak RSS {rss_ours:.2f} GB")
        print(f"pair sampling, reference (dense (A, N), kNN of all points): {ref_s:.3f} s, peak RSS {rss_ref:.2f} GB")
        print(
            f"same anchors: {same['anchor']}; identical rows: positive {100 * same['positive']:.2f}%, "
            f"macro {100 * same['macro']:.2f}%, micro {100 * same['micro']:.2f}%"
        )
        result["sampling"] = {
            "ours_s": round(ours_s, 4),
            "reference_s": round(ref_s, 4),
            "speedup": round(ref_s / ours_s, 2),
            "rss_after_ours_gb": round(rss_ours, 3),
            "rss_after_reference_gb": round(rss_ref, 3),
            "identical": same,
        }

    if torch.cuda.is_available():
        paper_cfg = load_config(
            REPO / "config" / "geopurify_synthetic.yaml",
            {"data": {"frame_step": 1, "cache_dir": str(args.work / "cache")}, "student": {"preset": "paper"}},
        )
        gstore = SceneStore(
            paper_cfg, lambda: build_vlm(paper_cfg), build_teacher(paper_cfg), args.work / "cache", "cuda", 8.0
        )
        torch.cuda.reset_peak_memory_stats()
        gpu = time_preset(gstore, path, paper_cfg, "cuda", args.iters)
        gpu["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        print(
            f"paper preset on {torch.cuda.get_device_name()} ({gpu['params_m']} M parameters): "
            f"{gpu['s_per_it']:.3f} s/iteration; {gpu['breakdown']}; peak GPU memory {gpu['peak_mem_gb']:.2f} GB"
        )
        result["gpu"] = {
            "s_per_it": round(gpu["s_per_it"], 4),
            "peak_mem_gb": gpu["peak_mem_gb"],
            "preset": "paper",
            "device": torch.cuda.get_device_name(),
            "breakdown": gpu["breakdown"],
        }
    else:
        print("no CUDA device: the paper preset (512 wide, 4 blocks) is not timed")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

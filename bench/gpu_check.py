"""GPU check: what geopurify does on CUDA, measured against its CPU / fp32 reference in one run.

Run once on a machine with a GPU (a few minutes; the numba kernels of the CPU graph compile on first
use):

    python bench/gpu_check.py [--scene DIR ...] [--ckpt geopurify.pth] [--channels 512] [--classes 20]
                              [--no-brute] [--device cuda|cpu] [--width 512 --blocks 4] [--max-points N]

For each scene (default: ScanNet scene0000_00 and scene0000_01 from ../shared/data), at 2 cm voxels
and K = 96:
1. kNN graph: the exact CPU graph (compiled cell lists, `knn_graph(method="grid")`) against the
   CUDA cell hash (`method="hash"`, what `auto` takes on CUDA) and the CUDA brute force (the CUDA
   method before): identical graphs (torch.equal) and the time of each.
2. The student + purification (purify_scene, T = 18, pooled scores) on CUDA at fp32 with TF32 off
   (the reference), then fp32 with TF32 on, bf16 autocast and fp16 autocast (TF32 off): the share of
   points whose label equals the reference's, the smallest cosine between the student embeddings
   and the reference's, and the time of each stage (voxelise, student, knn, weights, pool).
The student is the checkpoint given by --ckpt (a trained one: the agreement that matters); without
one it is a randomly initialised paper-size AffinityNet (512 wide, 4 residual blocks), a weaker
proxy, said so in the output. Lifted features are a STAND-IN (no VLM offline): the unit prompt
embedding of each point's ground-truth class (NYU40 id mod --classes) plus Gaussian noise.

Ends with one JSON line: {"device", "knn_identical", "knn_s": {grid_cpu, hash_cuda, brute_cuda},
"agreement": {tf32, bf16, fp16} (worst scene), "emb_cos_min", "stage_s": {config: {stage: s}}
(summed over the scenes), "bf16_keeps_labels" (agreement >= 99.9%), "tf32_keeps_labels", "student", ...}.
`--device cpu` runs the same steps on the CPU (a dry run of the script itself: CPU autocast, the hash
kNN on the CPU); its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geopurify.config import load_config  # noqa: E402
from geopurify.data.scene import Scene  # noqa: E402
from geopurify.device import set_tf32, synchronize  # noqa: E402
from geopurify.ops.knn import knn_graph  # noqa: E402
from geopurify.ops.voxel import voxelize  # noqa: E402
from geopurify.purify import infer  # noqa: E402
from geopurify.student.network import build_student  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scannet"
CONFIGS = {  # name: (tf32, student precision)
    "fp32": (False, "fp32"),
    "tf32": (True, "fp32"),
    "bf16": (False, "bf16"),
    "fp16": (False, "fp16"),
}


def timed(device, fn):
    """(result, seconds) of fn() with the device's queued work included."""
    synchronize(device)
    t = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t


def stand_in(scene_dir: Path, channels: int, classes: int, seed: int):
    """(Scene, lifted stand-in, unit prompt embeddings (classes, channels))."""
    p = np.load(scene_dir / "points_xyzrgb.npy")
    lab = np.load(scene_dir / "labels_nyu40.npy").astype(np.int64) % classes
    scene = Scene(scene_dir.name, np.ascontiguousarray(p[:, :3], dtype=np.float32), p[:, 3:6].astype(np.uint8))
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(classes, channels, generator=g), dim=1)
    feat = F.normalize(text[torch.from_numpy(lab)] + 0.05 * torch.randn(len(p), channels, generator=g), dim=1)
    return scene, SimpleNamespace(feat=feat, seen=torch.ones(len(p), dtype=torch.bool)), text


def check_knn(scene, device, k: int, brute: bool = True) -> dict:
    coords, _ = voxelize(torch.from_numpy(scene.xyz), 0.02)
    grid, t_grid = timed("cpu", lambda: knn_graph(coords, k, method="grid"))
    c_dev = coords.to(device)
    knn_graph(c_dev[:2000], 8, method="hash")  # warm-up (CUDA context, kernels)
    hashed, t_hash = timed(device, lambda: knn_graph(c_dev, k, method="hash"))
    auto, _ = timed(device, lambda: knn_graph(c_dev, k))
    out = {
        "voxels": int(coords.shape[0]),
        "auto_method": "hash" if device.type == "cuda" else "grid",
        "identical": bool(torch.equal(hashed.cpu(), grid) and torch.equal(auto.cpu(), grid)),
        "grid_cpu_s": round(t_grid, 3),
        "hash_s": round(t_hash, 3),
        "brute_s": None,
    }
    if brute:
        b, t_brute = timed(device, lambda: knn_graph(c_dev, k, method="brute"))
        out["identical"] = out["identical"] and bool(torch.equal(b.cpu(), grid))
        out["brute_s"] = round(t_brute, 3)
    return out


def check_student(scene, lifted, text, model, cfg, device) -> dict:
    out = {}
    ref = None
    for name, (tf32, precision) in CONFIGS.items():
        set_tf32({"gpu": {"tf32": tf32}}, device)
        infer._GRAPH_CACHE.clear()
        res, total = timed(
            device, lambda p=precision: infer.purify_scene(scene, lifted, model, text, cfg, device, precision=p)
        )
        stages = {k[:-2]: round(v, 4) for k, v in res.info.items() if k.endswith("_s")}
        row = {"total_s": round(total, 3), "stages_s": stages}
        if ref is None:
            ref = res
        else:
            row["agreement"] = float((res.labels == ref.labels).mean())
            row["emb_cos_min"] = float((res.emb.float() * ref.emb.float()).sum(1).min())
        out[name] = row
    set_tf32({"gpu": {"tf32": False}}, device)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", action="append", type=Path, help="ScanNet scene dir (repeatable)")
    ap.add_argument("--ckpt", type=Path, help="a trained student checkpoint (default: random paper-size student)")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--width", type=int, default=512, help="random student's width (paper: 512)")
    ap.add_argument("--blocks", type=int, default=4, help="random student's residual blocks (paper: 4)")
    ap.add_argument("--max-points", type=int, default=0, help="first N points of each scene (0: all)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-brute", action="store_true", help="skip the brute-force kNN (slow on the CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        raise SystemExit(2)
    scenes = args.scene or [DATA / "scene0000_00", DATA / "scene0000_01"]
    cfg = load_config(None)
    k = cfg["purify"]["k"]
    torch.manual_seed(args.seed)
    if args.ckpt:
        from geopurify.student.checkpoint import load_student

        model, meta = load_student(args.ckpt, device)
        channels = int(meta["in_channels"]) - 6
        student = f"trained checkpoint {args.ckpt}"
    else:
        channels = args.channels
        model = build_student(
            {"preset": "cpu", "width": args.width, "blocks": args.blocks, "out_dim": 128}, channels + 6
        )
        model = model.to(device).eval()
        student = f"RANDOM (untrained) AffinityNet width {args.width}, {args.blocks} blocks: a weak proxy"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"student: {student}; lifted features: STAND-IN (class prompt + noise, {channels}-d)")
    per_scene = {}
    for d in scenes:
        scene, lifted, text = stand_in(d, channels, args.classes, args.seed)
        if args.max_points:
            n = args.max_points
            scene = Scene(scene.name, scene.xyz[:n], scene.rgb[:n])
            lifted = SimpleNamespace(feat=lifted.feat[:n], seen=lifted.seen[:n])
        knn = check_knn(scene, device, k, brute=not args.no_brute)
        print(f"{scene.name}: {knn}")
        stud = check_student(scene, lifted, text, model, cfg, device)
        for name, row in stud.items():
            print(f"{scene.name} {name}: {row}")
        per_scene[scene.name] = {"knn": knn, "student": stud}
    agreement = {n: min(s["student"][n]["agreement"] for s in per_scene.values()) for n in CONFIGS if n != "fp32"}
    stage_s = {
        n: {
            st: round(sum(s["student"][n]["stages_s"].get(st, 0.0) for s in per_scene.values()), 3)
            for st in next(iter(per_scene.values()))["student"][n]["stages_s"]
        }
        for n in CONFIGS
    }
    result = {
        "bench": "gpu_check",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "student": student,
        "lifted": "stand-in",
        "scenes": list(per_scene),
        "knn_identical": all(s["knn"]["identical"] for s in per_scene.values()),
        "knn_s": {
            m: None if args.no_brute and m == "brute" else round(sum(s["knn"][f"{m}_s"] for s in per_scene.values()), 3)
            for m in ("grid_cpu", "hash", "brute")
        },
        "agreement": agreement,
        "emb_cos_min": {
            n: min(s["student"][n]["emb_cos_min"] for s in per_scene.values()) for n in CONFIGS if n != "fp32"
        },
        "stage_s": stage_s,
        "bf16_keeps_labels": agreement["bf16"] >= 0.999,
        "fp16_keeps_labels": agreement["fp16"] >= 0.999,
        "tf32_keeps_labels": agreement["tf32"] >= 0.999,
        "per_scene": per_scene,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

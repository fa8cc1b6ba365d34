"""Benchmark: latency of a new prompt after one load (what `geopurify view` and `geopurify query` do)
against the naive path that recomputes the purified features for every prompt.

Scene: the real points of ScanNet scene0000_00 and scene0000_01 side by side (bench/purify.py's
layout), ~160k points -> ~159k voxels at 2 cm. No real VLM features exist offline, so the lifted
features are SYNTHETIC (bench/purify.py's smooth random class field, 15% wrong classes, noise) built
from the MiniLM text embeddings of the ScanNet-20 prompts: they live in the simulated VLM's 384-d
text space, so the prompts are real free text encoded by the same MiniLM encoder the simulated VLM
uses. The student is a randomly initialised (untrained) AffinityNet, cpu preset: timing does not
depend on trained weights.

- load_s: geopurify.purify.query.build_session (voxelise, normals, one student forward, kNN graph,
  purified and kNN-mean pooling matrices, unseen fill, raw labels).
- prompt_s: median over new prompts of: encode the text, prompt_steps, the T = 18 column, per point
  (wall seconds; prompt_cpu_s: the process CPU seconds of the same, all threads summed, which the
  other jobs on a shared machine do not inflate).
- prompt_all_steps_s: the same prompts carried on to T = 36 (the whole slider range).
- reference_prompt_s: per prompt, purified_features (voxelise, student forward, kNN graph (cached
  across calls by the package), weights, all C channels pooled T = 18 steps, fill) then the dot
  product with the unit prompt; the values are compared with the fast path's (max_abs_diff).
- with --points N (default 300000; 0 skips): a child process runs the load and prompts on N points
  (scene0000_00 tiled) and reports its peak RSS.

    python bench/query.py [--prompts 7] [--reference-prompts 1] [--points 300000] [--seed 0]

The last line is one JSON object with prompt_s and load_s (and the reference's time).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "scannet"
PROMPTS = [
    "a place to sleep",
    "a soft place to sit",
    "somewhere to wash my hands",
    "where I keep my clothes",
    "a surface to write on",
    "light comes in here",
    "a place to store food",
    "something to sit on while eating",
    "the way out of the room",
]


def _bench_purify():
    spec = importlib.util.spec_from_file_location("bench_purify", ROOT / "bench" / "purify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_case(xyz: np.ndarray, rgb: np.ndarray, seed: int):
    """Scene, synthetic lifted features in the MiniLM text space, random student, encoder, config."""
    from geopurify.config import load_config
    from geopurify.data.labels import get_label_set
    from geopurify.data.scene import Scene
    from geopurify.student.network import build_student
    from geopurify.vlm.text import MiniLMTextEncoder, text_embeddings

    bp = _bench_purify()
    cfg = load_config(None)
    label_set = get_label_set("scannet20")
    encoder = MiniLMTextEncoder()
    vlm = SimpleNamespace(encode_text=encoder.encode)
    text = text_embeddings(vlm, label_set, cfg["lift"]["prompt_template"])
    gen = torch.Generator().manual_seed(seed)
    feat = bp.synthetic_lifted(torch.from_numpy(np.ascontiguousarray(xyz)), text, gen)
    lifted = SimpleNamespace(feat=feat, seen=torch.ones(len(xyz), dtype=torch.bool), info={})
    scene = Scene("bench", np.ascontiguousarray(xyz, np.float32), np.ascontiguousarray(rgb, np.uint8))
    torch.manual_seed(seed)
    model = build_student(cfg["student"], text.shape[1] + 6).eval()
    return scene, lifted, model, text, label_set, vlm, cfg


def time_prompts(session, vlm, prompts: list[str], steps: int) -> dict:
    """Per prompt: wall seconds to the T = `steps` map per point ("first"), process CPU seconds of
    the same ("cpu"), text encoding alone ("encode"), wall seconds on to all 36 steps ("full");
    and the maps."""
    from geopurify.purify.query import MAX_STEPS, encode_prompt, prompt_steps

    out: dict = {"first": [], "cpu": [], "encode": [], "full": [], "maps": {}}
    for p in prompts:
        t, c = time.perf_counter(), time.process_time()
        emb = encode_prompt(vlm, p)
        out["encode"].append(time.perf_counter() - t)
        stack = prompt_steps(session, emb)
        out["maps"][p] = session.to_points(stack[steps])
        out["first"].append(time.perf_counter() - t)
        out["cpu"].append(time.process_time() - c)
        stack[MAX_STEPS]
        out["full"].append(time.perf_counter() - t)
    return out


def big_child(n_points: int, n_prompts: int, seed: int) -> None:
    """Load and prompts on n_points (scene0000_00 tiled); one JSON line with the peak RSS."""
    from geopurify.purify.query import build_session

    rng = np.random.default_rng(seed)
    base = np.load(DATA / "scene0000_00" / "points_xyzrgb.npy")
    reps = -(-n_points // len(base))
    pts = np.concatenate([base + np.array([12.0 * i, 0, 0, 0, 0, 0], np.float32) for i in range(reps)])
    pts = pts[np.sort(rng.choice(len(pts), n_points, replace=False))]
    scene, lifted, model, text, label_set, vlm, cfg = make_case(pts[:, :3], pts[:, 3:6], seed)
    t = time.perf_counter()
    session = build_session(scene, lifted, model, text, label_set.names, cfg)
    load_s = time.perf_counter() - t
    tp = time_prompts(session, vlm, PROMPTS[:n_prompts], cfg["purify"]["steps"])
    t = time.perf_counter()
    session.labels("purified", cfg["purify"]["steps"])
    labels_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "n_points": n_points,
                "n_voxels": session.n_voxels,
                "load_s": round(load_s, 3),
                "prompt_s": round(statistics.median(tp["first"]), 3),
                "prompt_cpu_s": round(statistics.median(tp["cpu"]), 3),
                "prompt_all_steps_s": round(statistics.median(tp["full"]), 3),
                "purified_labels_s": round(labels_s, 3),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=7, help="new prompts timed (median reported)")
    ap.add_argument("--reference-prompts", type=int, default=1, help="prompts through the naive path (slow)")
    ap.add_argument("--points", type=int, default=300_000, help="points of the large-scene run (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be in 1..{len(PROMPTS)}")
    if args.big_child:
        big_child(args.big_child, args.prompts, args.seed)
        return 0

    from geopurify.purify.infer import purified_features
    from geopurify.purify.query import build_session, encode_prompt

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; machine shared with other jobs (timings "
        "taken under load)"
    )
    xyz, rgb = _bench_purify().load_points([DATA / "scene0000_00", DATA / "scene0000_01"], None, args.seed)
    scene, lifted, model, text, label_set, vlm, cfg = make_case(xyz, rgb, args.seed)
    steps = cfg["purify"]["steps"]
    vlm.encode_text(["warm-up"])  # the encoder's first call (model load) is not a prompt's cost

    t = time.perf_counter()
    session = build_session(scene, lifted, model, text, label_set.names, cfg)
    load_s = time.perf_counter() - t
    info = session.info
    print(
        f"scene0000_00 + scene0000_01 side by side: {scene.n_points} real points -> {session.n_voxels} voxels; "
        "lifted features SYNTHETIC in the MiniLM (simulated VLM) text space, C = "
        f"{lifted.feat.shape[1]}; student randomly initialised (cpu preset); K = {info['k']}, T = {steps}"
    )
    print(
        f"load: {load_s:.2f} s (voxelise+normals {info['voxelise_s']:.2f}, student {info['student_s']:.2f}, "
        f"knn {info['knn_s']:.2f}, weights {info['weights_s']:.2f})"
    )

    tp = time_prompts(session, vlm, PROMPTS[: args.prompts], steps)
    maps, first = tp["maps"], tp["first"]
    prompt_s, all_s = statistics.median(first), statistics.median(tp["full"])
    cpu_s, enc_s = statistics.median(tp["cpu"]), statistics.median(tp["encode"])
    print(
        f"new prompt (encode + pooled column, T = {steps}, per point): median {prompt_s:.3f} s wall over "
        f"{len(first)} prompts (min {min(first):.3f}, max {max(first):.3f}; text encoding {enc_s:.3f}), "
        f"{cpu_s:.3f} s process CPU ({torch.get_num_threads()} threads); on to T = 36: {all_s:.3f} s"
    )

    ref_times, ref_cpu, diffs = [], [], []
    for p in PROMPTS[: args.reference_prompts]:
        t, c = time.perf_counter(), time.process_time()
        feats = purified_features(scene, lifted, model, cfg)
        w = torch.nn.functional.normalize(torch.from_numpy(encode_prompt(vlm, p)), dim=0)
        rel = (feats @ w).numpy()
        ref_times.append(time.perf_counter() - t)
        ref_cpu.append(time.process_time() - c)
        diffs.append(float(np.abs(rel - maps[p]).max()))
    ref_s, ref_cpu_s = statistics.median(ref_times), statistics.median(ref_cpu)
    print(
        f"reference (purified_features per prompt: all {lifted.feat.shape[1]} channels pooled): {ref_s:.2f} s wall, "
        f"{ref_cpu_s:.2f} s CPU per prompt; speedup {ref_s / prompt_s:.0f}x wall, {ref_cpu_s / cpu_s:.0f}x CPU; "
        f"max |difference| of the relevance {max(diffs):.2e}"
    )
    out = {
        "prompt_s": round(prompt_s, 4),
        "load_s": round(load_s, 3),
        "reference_prompt_s": round(ref_s, 3),
        "speedup": round(ref_s / prompt_s, 1),
        "prompt_cpu_s": round(cpu_s, 4),
        "reference_prompt_cpu_s": round(ref_cpu_s, 3),
        "encode_s": round(enc_s, 4),
        "prompt_all_steps_s": round(all_s, 4),
        "max_abs_diff": max(diffs),
        "n_points": scene.n_points,
        "n_voxels": session.n_voxels,
        "channels": int(lifted.feat.shape[1]),
        "steps": steps,
        "features": "synthetic (MiniLM text space)",
        "student": "random init, cpu preset",
        "goal_prompt_s": 0.5,
    }

    if args.points:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--big-child",
            str(args.points),
            "--prompts",
            str(min(3, args.prompts)),
            "--seed",
            str(args.seed),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"large-scene run failed with code {proc.returncode}")
        big = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{big['n_points']} points (scene0000_00 tiled) -> {big['n_voxels']} voxels: load {big['load_s']:.2f} s, "
            f"prompt {big['prompt_s']:.3f} s (to T = 36: {big['prompt_all_steps_s']:.3f} s), purified labels "
            f"{big['purified_labels_s']:.2f} s, peak RSS {big['peak_rss_gb']:.2f} GB"
        )
        out.update(
            {f"{k}_big": big[k] for k in ("n_points", "n_voxels", "load_s", "prompt_s", "prompt_cpu_s", "peak_rss_gb")}
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

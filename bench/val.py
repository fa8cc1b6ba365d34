"""Benchmark: `geopurify val` split over 2 torchrun processes, with and without prefetching, against
one process, on ScanNet-format scenes.

The scenes are written by `geopurify synth --format scannet-raw` (SYNTHETIC STAND-IN scans in
ScanNet v2's release layout: .sens, meshes, aggregation) and prepared as the README says
(`geopurify prepare scannet --root raw/scans --out scannet --frame-step 20`); a student is trained
for `--epochs` on them with the stand-ins the README's rehearsal uses (simulated VLM, geometric
teacher; numbers mean nothing about real models), over config/geopurify_scannet.yaml. Then the
same `val` over every prepared scan runs, each with an empty lift cache (every run lifts every scene):

- `1`: one process, eval.workers 0 (scenes loaded in the loop), 1 torch thread (the reference);
- `1_threads`: the same with one torch thread per core (the fastest a single process is here);
- `2`: `torchrun --standalone --nproc_per_node 2`, eval.workers 0 (1 thread per rank);
- `2_prefetch`: the same with eval.workers 1 (a loader worker per rank).

Per run: wall time of the whole command (start-up, model and VLM loading included), scenes/min,
CPU time (user + sys of the process tree), the peak of the process tree's memory (the sum of each
process's PSS, resident memory with shared pages split among their sharers, sampled every 0.5 s:
reading PSS walks a process's page tables under its memory lock, and at 50 ms the sampling slowed
the runs it measured by up to 20%),
the lift cache it wrote (MB per scene), and whether metrics.json is byte-identical to run `1`'s.
The machine may be shared: the load average before and after is printed and in the JSON.

    python bench/val.py [--work DIR] [--scenes 8] [--points 60000] [--frames 200] [--epochs 1]
                        [--device cpu|cuda] [--preset cpu|paper]

`--points` / `--frames` are synth's (mesh vertices, raw .sens frames per scan; prepare keeps every
20th frame); `--work` keeps the scenes and the checkpoint between invocations (synth and prepare
skip finished scans, so a larger --scenes adds scans; only `val` is timed).
Ends with one JSON line {"scenes_per_min_1", "scenes_per_min_2", "speedup", "identical_metrics",
"peak_rss_gb", "cache_mb_per_scene", ...}:
- speedup = run `2` over run `1`: each rank and the reference have one torch thread (torchrun's
  default per rank; on GPUs, one device each), and their metrics.json must be byte-identical
  (`identical_metrics`); speedup_prefetch = run `2_prefetch` over run `1`;
- speedup_vs_threads = the faster 2-rank run over run `1_threads`. On a 2-core machine a single
  process already keeps both cores busy through torch's intra-op threads, so ranks can add little
  over it there: they pay off with one rank per GPU, per machine, or per group of cores.
Each extra process pays its own start-up (imports, checkpoint, VLM), and the ranks share the
memory bandwidth, so the gain grows with the number of scenes.
Measured on this 2-core machine, quiet (load average 1.5), `--scenes 8 --points 120000 --frames 300`:
10.26 scenes/min (1 process, 1 thread), 14.62 (1 process, 2 threads), 16.05 (2 ranks), 16.60 (2
ranks with prefetch): speedup 1.56 (1.62 with prefetch; 1.14 over the 2-thread process), metrics
identical in all four runs, peak memory 3.5 GB (2 ranks), lift cache 88 MB per scene.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
POLL_S = 0.5  # memory sampling period (see the module docstring)


def env(threads: int | None) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    e["HF_HUB_OFFLINE"] = "1"
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if threads is not None:
        e["OMP_NUM_THREADS"] = e["MKL_NUM_THREADS"] = str(threads)
    return e


def geopurify(*argv, threads: int | None = 1) -> None:
    subprocess.run([PY, "-m", "geopurify", "-q", *map(str, argv)], env=env(threads), cwd=REPO, check=True)


def pss(pid: int) -> int:
    """Proportional set size (bytes): resident memory with pages shared between processes (a
    DataLoader worker forked from its rank) split among them, so a sum over processes is honest."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> int:
    """Summed PSS (bytes) of process `root` and its descendants."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(p.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += pss(pid)
        todo += children.get(pid, [])
    return total


def timed(cmd: list[str], threads: int | None) -> dict:
    """Run `cmd`; wall seconds, CPU seconds of the process tree, peak of its summed PSS ("peak_rss_gb")."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(threads), cwd=REPO, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_memory(proc.pid))
        time.sleep(POLL_S)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench/val.py: {' '.join(cmd)} failed with exit code {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_gb": round(peak / 2**30, 3)}


def prepare(work: Path, a) -> tuple[Path, Path]:
    """Scenes as the README makes them, a bench config over config/geopurify_scannet.yaml and a
    trained checkpoint (reused from `work` when there)."""
    data, raw = work / "scannet", work / "raw"
    # both skip what an earlier invocation finished (a larger --scenes adds scans)
    geopurify("synth", "--format", "scannet-raw", "--out", raw, "--scenes", a.scenes, "--seed", a.seed,
              "--points", a.points, "--frames", a.frames)  # fmt: skip
    geopurify("prepare", "scannet", "--root", raw / "scans", "--out", data, "--frame-step", 20)
    names = sorted(p.parent.name for p in data.glob("*/points_xyzrgb.npy"))
    (work / "all_scans.txt").write_text("".join(f"{n}\n" for n in names))
    cfg = {
        "base": str(REPO / "config" / "geopurify_scannet.yaml"),
        "data": {
            "root": str(data),
            "train_list": str(data / "scannetv2_train.txt"),
            "val_list": str(work / "all_scans.txt"),  # every prepared scan (the stand-in's val split has one)
        },
        "lift": {"vlm": "simulated"},
        "teacher": {"name": "geometric", "cache_dtype": "float16"},
        "student": {"preset": a.preset},
        "distill": {"epochs": a.epochs, "warmup_epochs": 0},
    }
    cfg_path = work / f"bench_{a.preset}.yaml"
    cfg_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    exp = work / f"exp_{a.preset}_{a.epochs}"
    if not (exp / "model" / "geopurify.pth").exists():
        geopurify("train", "--exp_dir", exp, "--config", cfg_path, "--device", a.device, threads=None)
    return cfg_path, exp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="keep scenes / checkpoint here (default: a temp dir)")
    ap.add_argument(
        "--scenes", type=int, default=8, help="scans written by synth (all of them are evaluated; default 8)"
    )
    ap.add_argument("--points", type=int, default=60000, help="synth: mesh vertices per scan (ScanNet ~120k)")
    ap.add_argument("--frames", type=int, default=200, help="synth: raw .sens frames per scan (prepare keeps 1/20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the student (not timed)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (each rank then takes GPU LOCAL_RANK)")
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="student.preset")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_val_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, exp = prepare(work, a)
    n_scenes = len((work / "all_scans.txt").read_text().split())
    cores = os.cpu_count() or 1
    # untimed warm-up on one scene: the text-embedding cache (prompts encoded once per machine) and
    # the OS file cache are then as warm for the first timed run as for the later ones
    first = work / "first_scan.txt"
    first.write_text((work / "all_scans.txt").read_text().split()[0] + "\n")
    geopurify("val", "--exp_dir", exp, "--config", cfg_path, "--device", a.device, "--set", f"data.val_list={first}",
              "--set", f"data.cache_dir={work / 'cache_warmup'}")  # fmt: skip
    shutil.rmtree(work / "cache_warmup", ignore_errors=True)
    load_before = os.getloadavg()
    runs = {"1": (1, 0, 1), "1_threads": (1, 0, None), "2": (2, 0, None), "2_prefetch": (2, 1, None)}
    res: dict[str, dict] = {}
    metrics: dict[str, bytes] = {}
    for name, (nproc, workers, threads) in runs.items():
        cache = work / f"cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(exp / "result", ignore_errors=True)
        launch = [PY, "-m", "geopurify"]
        if nproc > 1:
            launch = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "geopurify"]
        cmd = launch + ["-q", "val", "--exp_dir", str(exp), "--config", str(cfg_path), "--device", a.device]
        cmd += ["--set", f"data.cache_dir={cache}", "--set", f"eval.workers={workers}"]
        r = timed(cmd, threads)
        out = exp / "result" / "geopurify" / "val"
        metrics[name] = (out / "metrics.json").read_bytes()
        cache_bytes = sum(p.stat().st_size for p in (cache / "lift").glob("*.lift.pt"))
        r.update(
            scenes_per_min=round(60 * n_scenes / r["wall_s"], 2),
            processes=nproc,
            loader_workers=workers,
            torch_threads_per_process=threads or max(1, cores // nproc),
            cache_mb_per_scene=round(cache_bytes / 2**20 / n_scenes, 2),
            metrics_identical_to_1=metrics[name] == metrics["1"],
        )
        res[name] = r
        print(f"{name:>11}: {r}", flush=True)
    load_after = os.getloadavg()
    m = json.loads(metrics["1"])
    spm = {name: r["scenes_per_min"] for name, r in res.items()}
    summary = {
        "scenes": n_scenes,
        "points": a.points,
        "frames_raw": a.frames,
        "views_per_scene": a.frames // 20,
        "preset": a.preset,
        "device": a.device,
        "cores": cores,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "purified_mIoU": m["metrics"]["purified"]["mIoU"],
        "runs": res,
        "scenes_per_min_1": spm["1"],
        "scenes_per_min_1_threads": spm["1_threads"],
        "scenes_per_min_2": spm["2"],
        "scenes_per_min_2_prefetch": spm["2_prefetch"],
        "speedup": round(spm["2"] / spm["1"], 2),
        "speedup_prefetch": round(spm["2_prefetch"] / spm["1"], 2),
        "speedup_vs_threads": round(max(spm["2"], spm["2_prefetch"]) / spm["1_threads"], 2),
        "identical_metrics": all(res[n]["metrics_identical_to_1"] for n in ("2", "2_prefetch")),
        "identical_metrics_threads": res["1_threads"]["metrics_identical_to_1"],
        "peak_rss_gb": max(r["peak_rss_gb"] for r in res.values()),
        "cache_mb_per_scene": res["1"]["cache_mb_per_scene"],
        "note": "SYNTHETIC STAND-IN scans, simulated VLM and geometric teacher; wall times include start-up",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""`geopurify demo`: the whole pipeline offline, on procedural rooms (what `make demo` runs).

synthesise rooms -> lift simulated-VLM features -> train the CPU student on the training rooms
(teacher only, no labels) -> purify and evaluate the held-out rooms -> table of raw fusion vs
kNN-mean smoothing vs purified, report.json, pictures and coloured PLYs. Every stand-in
(procedural rooms, simulated VLM, geometric teacher) is named as such in the output.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

from geopurify.cli.options import add_device, add_set, config_of, device_of

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on procedural rooms (stand-ins named in the report)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the embedded defaults)")
    p.add_argument("--seed", type=int, default=None, help="override synthetic.seed and distill.seed")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def _overrides(args) -> dict:
    out = args.out
    o: dict = {
        "data": {
            "dataset": "synthetic",
            "root": str(out / "data"),
            "cache_dir": str(out / "cache"),
            "train_list": None,
            "val_list": None,
        }
    }
    if args.seed is not None:
        o["synthetic"] = {"seed": args.seed}
        o["distill"] = {"seed": args.seed}
    return o


def write_pictures(out_dir: Path, scene, preds: dict, label_set) -> list[str]:
    """RGB | ground truth | raw | purified, side by side with a class legend; plus coloured PLYs."""
    import numpy as np

    from geopurify.data.ply import write_ply
    from geopurify.viz.render import class_colors, colorize_labels, render_points, side_by_side

    n = len(label_set.names)
    gt = label_set.map(scene.labels, scene.label_space)
    panels = {"RGB": scene.rgb, "ground truth": colorize_labels(gt, n)}
    for m in ("raw", "knn_mean", "purified"):
        if m in preds:
            panels[m] = colorize_labels(preds[m], n)
    images = [render_points(scene.xyz, c, None, view="auto", labels=gt, names=label_set.names) for c in panels.values()]
    present = sorted(set(np.unique(gt[gt >= 0]).tolist()) | set(np.unique(preds.get("purified", gt)).tolist()))
    legend = [(label_set.names[i], tuple(int(v) for v in class_colors(n)[i])) for i in present if i >= 0]
    png = out_dir / "pictures" / f"{scene.name}.png"
    side_by_side(images, list(panels), legend=legend, out_png=png)
    written = [str(png)]
    for m, colors in panels.items():
        if m == "RGB":
            continue
        ply = out_dir / "ply" / f"{scene.name}.{m.replace(' ', '_')}.ply"
        labels = gt if m == "ground truth" else preds[m]
        write_ply(ply, scene.xyz, colors, labels=labels)
        written.append(str(ply))
    return written


def run(args) -> int:
    import torch

    from geopurify.data.labels import get_label_set
    from geopurify.data.readers import load_scene
    from geopurify.data.splits import resolve_scenes
    from geopurify.distill.engine import train
    from geopurify.evaluate.split import evaluate_scenes, summary_table
    from geopurify.io import write_json
    from geopurify.student.checkpoint import load_student
    from geopurify.teacher import build_teacher
    from geopurify.vlm import build_vlm

    t_start = time.perf_counter()
    cfg = config_of(args, _overrides(args))
    device = device_of(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(
        "GeoPurify demo: OFFLINE STAND-INS in use: procedural rooms (not ScanNet), simulated VLM "
        "(not CLIP/X-Decoder), geometric teacher (not Sonata) unless configured otherwise."
    )
    timings: dict[str, float] = {}

    t = time.perf_counter()
    train_scenes = resolve_scenes(cfg, "train")
    val_scenes = resolve_scenes(cfg, "val")
    timings["synthesise_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ckpt = train(cfg, out, resume=True, device=device)
    timings["train_s"] = time.perf_counter() - t
    model, meta = load_student(Path(ckpt), device)

    t = time.perf_counter()
    vlm = build_vlm(cfg, device=str(device))
    report = evaluate_scenes(
        cfg, val_scenes, model, out / "eval", Path(cfg["data"]["cache_dir"]), device=device, vlm=vlm
    )
    timings["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    label_set = get_label_set(cfg["data"]["label_set"])
    import numpy as np

    pictures = []
    for path in val_scenes:
        scene = load_scene(path, frame_step=cfg["data"]["frame_step"])
        preds = {
            m: np.load(out / "eval" / "pred" / f"{scene.name}.{m}.npy").astype(np.int64)
            for m in ("raw", "knn_mean", "purified")
        }
        pictures += write_pictures(out, scene, preds, label_set)
    timings["pictures_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    teacher = build_teacher(cfg)
    pick = ("mIoU", "mAcc", "f_mIoU", "f_mAcc")
    result = {
        "metrics": {
            m: {k: None if report["metrics"][m][k] is None else round(float(report["metrics"][m][k]), 2) for k in pick}
            for m in report["metrics"]
        },
        "per_scene_mIoU": report["per_scene"],
        "produced_by": {
            "data": f"procedural rooms (synthetic stand-in for ScanNet): {len(train_scenes)} train, "
            f"{len(val_scenes)} held-out",
            "train_scenes": [p.name for p in train_scenes],
            "eval_scenes": [p.name for p in val_scenes],
            "vlm": vlm.describe(),
            "vlm_simulated": bool(vlm.simulated),
            "teacher": teacher.name,
            "teacher_stand_in": bool(teacher.stand_in),
            "student_preset": cfg["student"]["preset"],
            "student": {**model.architecture(), "voxel_size": cfg["student"]["voxel_size"]},  # as built
            "label_set": label_set.name,
            "seed": {"synthetic": cfg["synthetic"]["seed"], "distill": cfg["distill"]["seed"]},
            "purify": cfg["purify"],
            "checkpoint": str(ckpt),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "device": str(device),
        },
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "pictures": pictures,
    }
    write_json(out / "report.json", result)
    print(summary_table(report["metrics"]))
    print(f"(percent; {len(val_scenes)} held-out procedural rooms; VLM: {vlm.describe()}; teacher: {teacher.name})")
    print(
        f"wrote {out / 'report.json'}, pictures in {out / 'pictures'}, PLYs in {out / 'ply'}  "
        f"[{timings['total_s']:.0f} s]"
    )
    print(
        f"explore a held-out room in the browser (then open http://127.0.0.1:8080):\n  "
        f"{view_command(val_scenes[0], Path(ckpt))}"
    )
    return 0


def view_command(scene_dir: Path, ckpt: Path) -> str:
    """The `geopurify view` command line for a scene and checkpoint, with the executable this run used."""
    import shlex
    import sys

    prog = sys.argv[0] if Path(sys.argv[0]).name == "geopurify" else f"{sys.executable} -m geopurify"
    return " ".join([prog, "view", "--scene", shlex.quote(str(scene_dir)), "--ckpt", shlex.quote(str(ckpt))])

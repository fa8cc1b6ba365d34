"""Quality benchmark: does purification beat raw fusion and plain kNN smoothing?

Simulated VLM at its fixed defaults, CPU student trained on the train scenes (teacher only, no
labels), then raw / kNN-mean / purified metrics per scene and overall on the eval scenes.

    python bench/quality.py --train-scenes ../shared/data/scannet/scene0000_00 \
        --eval-scenes ../shared/data/scannet/scene0000_01 --out out/quality.json

The last printed line is one JSON object {"raw": mIoU, "knn_mean": mIoU, "purified": mIoU} (percent).
The numbers come from STAND-INS (simulated VLM, geometric teacher unless --config says otherwise):
they measure this pipeline, not the published method.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _link_split(dirs: list[Path], root: Path, list_name: str) -> Path:
    """Expose scene dirs from anywhere as <root>/<name> plus a list file (what resolve_scenes reads)."""
    names = []
    for d in dirs:
        d = d.resolve()
        link = root / d.name
        if not link.exists():
            link.symlink_to(d, target_is_directory=True)
        names.append(d.name)
    lst = root / list_name
    lst.write_text("\n".join(names) + "\n")
    return lst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-scenes", nargs="+", type=Path, required=True)
    ap.add_argument("--eval-scenes", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--config", type=Path, default=None, help="YAML config (default: embedded defaults, CPU preset)")
    ap.add_argument("--work", type=Path, default=None, help="work dir for checkpoints and caches (default: temp)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from geopurify.config import load_config
    from geopurify.distill.engine import train
    from geopurify.evaluate.split import evaluate_scenes, summary_table
    from geopurify.io import write_json
    from geopurify.student.checkpoint import load_student

    work = args.work or Path(tempfile.mkdtemp(prefix="geopurify-quality-"))
    root = work / "scenes"
    root.mkdir(parents=True, exist_ok=True)
    train_list = _link_split(args.train_scenes, root, "train.txt")
    eval_list = _link_split(args.eval_scenes, root, "eval.txt")
    overrides = {
        "data": {
            "dataset": "scannet",
            "root": str(root),
            "train_list": str(train_list),
            "val_list": str(eval_list),
            "cache_dir": str(work / "cache"),
        },
        "distill": {"seed": args.seed},
    }
    if args.epochs is not None:
        overrides["distill"]["epochs"] = args.epochs
    cfg = load_config(args.config, overrides)

    t0 = time.perf_counter()
    ckpt = train(cfg, work / "exp", resume=True)
    t_train = time.perf_counter() - t0
    model, meta = load_student(ckpt, "cpu")
    from geopurify.data.splits import resolve_scenes

    t0 = time.perf_counter()
    report = evaluate_scenes(cfg, resolve_scenes(cfg, "val"), model, work / "eval", work / "cache")
    t_eval = time.perf_counter() - t0

    result = {
        "overall": {
            m: {k: report["metrics"][m][k] for k in ("mIoU", "mAcc", "f_mIoU", "f_mAcc")} for m in report["metrics"]
        },
        "per_scene_mIoU": report["per_scene"],
        "train_scenes": [str(p) for p in args.train_scenes],
        "eval_scenes": [str(p) for p in args.eval_scenes],
        "vlm": report["vlm"],
        "teacher": meta.get("teacher"),
        "student": {k: cfg["student"][k] for k in ("preset", "width", "blocks", "voxel_size")},
        "epochs": cfg["distill"]["epochs"],
        "seed": args.seed,
        "timings_s": {"train": round(t_train, 1), "evaluate": round(t_eval, 1)},
    }
    write_json(args.out, result)
    print(summary_table(report["metrics"]))
    print(f"per scene mIoU: {report['per_scene']}")
    print(
        f"VLM: {report['vlm']}; teacher: {meta.get('teacher')}; train {t_train:.0f} s, eval {t_eval:.0f} s; "
        f"wrote {args.out}"
    )
    print(json.dumps({m: round(report["metrics"][m]["mIoU"], 2) for m in ("raw", "knn_mean", "purified")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

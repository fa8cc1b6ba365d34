"""`geopurify val`: evaluate a trained checkpoint on the validation split (the seed's run/val.sh).

Under `torchrun --nproc_per_node N -m geopurify val ...` (`sh run/val.sh --nproc=N ...`) the scenes
are split over the N processes (geopurify.evaluate.split.evaluate_scenes); rank 0 writes and
prints the report, identical to a single process's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.cli.options import add_device, add_set, config_of, device_of
from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("val", help="purify and evaluate the validation split with a trained student")
    p.add_argument("--exp_dir", "--exp-dir", required=True, type=Path, help="experiment directory (holds model/)")
    p.add_argument("--config", required=True, type=Path, help="YAML config (as used for training)")
    p.add_argument("--ckpt_name", "--ckpt-name", default="geopurify.pth", help="checkpoint file under <exp_dir>/model/")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--vlm", default=None, help="override lift.vlm")
    p.add_argument("--vlm-path", default=None, help="override lift.vlm_path")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from geopurify.data.splits import resolve_scenes
    from geopurify.evaluate.metrics import format_table
    from geopurify.evaluate.split import evaluate_scenes, metrics_report, summary_table
    from geopurify.ranks import SHARDED_TIMEOUT_S, finish_distributed, init_distributed, rank_device
    from geopurify.student.checkpoint import check_compatible, load_student

    cfg = config_of(args, {"lift": {"vlm": args.vlm, "vlm_path": args.vlm_path}})
    device = device_of(args)
    dist = init_distributed(str(device), SHARDED_TIMEOUT_S)
    device = rank_device(device, dist)
    ckpt = args.exp_dir / "model" / args.ckpt_name
    if not ckpt.exists():
        raise InputError(ckpt, "checkpoint not found (train first: sh run/train.sh --exp_dir=... --config=...)")
    model, meta = load_student(ckpt, device)
    from geopurify.vlm import build_vlm

    vlm = build_vlm(cfg, device=str(device))
    check_compatible(meta, vlm.dim, cfg, ckpt)
    scenes = resolve_scenes(cfg, args.split)
    out_dir = args.exp_dir / "result" / Path(args.ckpt_name).stem / args.split
    cache = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else args.exp_dir / "cache"
    log.info("evaluating %s on %d %s scenes -> %s", ckpt, len(scenes), args.split, out_dir)
    report = evaluate_scenes(cfg, scenes, model, out_dir, cache, device=device, vlm=vlm, dist=dist)
    finish_distributed(dist)
    if report is None:  # another rank than 0: its scenes are written, rank 0 reports
        return 0
    report["checkpoint"] = {
        "path": str(ckpt),
        **{k: meta.get(k) for k in ("teacher", "vlm", "student", "epoch") if k in meta},
    }
    from geopurify.io import write_json

    write_json(out_dir / "metrics.json", metrics_report(report))
    ranks = f" on {dist.world} processes" if dist.world > 1 else ""
    print(f"VLM: {report['vlm']}   scenes: {len(scenes)}{ranks}   device: {device}")
    print(f"student: {model.describe()} (epoch {meta.get('epoch')})")
    print(format_table(report["metrics"]["purified"], title=f"purified, class setting {report['class_setting']}"))
    print(summary_table(report["metrics"], title=f"class setting {report['class_setting']}"))
    for also in report["also"].values():
        print(summary_table(also["metrics"], title=f"also: class setting {also['class_setting']}"))
    n_skipped = sum(report.get("skipped_frames", {}).values())
    if n_skipped:
        print(f"note: {n_skipped} unusable frames were skipped (per scene in metrics.json: skipped_frames)")
    print(f"wrote {out_dir}/metrics.json, per_class.txt and pred/")
    return 0

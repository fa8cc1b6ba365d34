"""`geopurify train`: distil the student from the teacher on the config's training scenes.

Single process: `geopurify train --exp_dir out/x --config config/geopurify_synthetic.yaml`.
Several processes / GPUs: `torchrun --nproc_per_node=N -m geopurify train ...` (each process
trains on its own slice of every epoch's scenes; rank 0 writes <exp_dir>/model/*.pth).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geopurify.cli.options import add_device, add_set, config_of, device_of

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the student affinity network (no labels; teacher distillation)")
    p.add_argument(
        "--exp_dir",
        "--exp-dir",
        required=True,
        type=Path,
        help="experiment directory: model/ (checkpoints), train_log.jsonl, cache/",
    )
    p.add_argument("--config", required=True, type=Path, help="YAML config (see config/geopurify_*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from <exp_dir>/model/last.pth if present")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from geopurify.distill.engine import train

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("geopurify").setLevel(logging.WARNING)  # one log, from rank 0
    cfg = config_of(args)
    final = train(cfg, args.exp_dir, resume=args.resume, device=device_of(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {final}")
    return 0

"""`geopurify synth`: write procedural rooms, the offline SYNTHETIC STAND-IN for ScanNet scans.

    geopurify synth --out DIR --scenes N --seed S [--points P] [--frames F] [--height H --width W]

Writes DIR/synth_0000 ... in the scene layout of docs/architecture.md (points, NYU40 labels,
instances, posed RGB-D frames, label images, meta.json {"source": "synthetic (procedural room)"}).
Scenes already complete in DIR are skipped; scene i depends only on (S, i).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write procedural rooms (a synthetic stand-in for ScanNet scans)")
    p.add_argument("--out", required=True, type=Path, help="output directory (one synth_XXXX/ per room)")
    p.add_argument("--scenes", required=True, type=int, help="number of rooms")
    p.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    p.add_argument("--points", type=int, default=100_000, help="points per room (default 100000)")
    p.add_argument("--frames", type=int, default=50, help="rendered RGB-D frames per room (default 50)")
    p.add_argument("--height", type=int, default=480, help="image height (default 480, ScanNet depth)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640, ScanNet depth)")
    p.set_defaults(func=run)


def run(args) -> int:
    from geopurify.data.synth import SOURCE, synthesize

    checks = [(args.scenes >= 1, f"--scenes must be >= 1, got {args.scenes}"),
              (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
              (args.points >= 1, f"--points must be >= 1, got {args.points}"),
              (args.frames >= 0, f"--frames must be >= 0, got {args.frames}"),
              (args.height >= 8 and args.width >= 8, f"image size must be at least 8x8, got {args.height}x{args.width}")]
    for ok, problem in checks:
        if not ok:
            raise InputError(None, problem)
    print(f"geopurify synth: {args.scenes} procedural rooms -- SYNTHETIC STAND-IN data ({SOURCE}), not ScanNet")
    t = time.perf_counter()
    paths = synthesize(args.out, args.scenes, args.seed, n_points=args.points, n_frames=args.frames,
                       image_hw=(args.height, args.width))
    dt = time.perf_counter() - t
    for p in paths:
        print(Path(p))
    print(f"{len(paths)} synthetic rooms under {args.out} ({dt:.1f}s)")
    return 0

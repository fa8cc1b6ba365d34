"""`geopurify synth`: write procedural rooms, the offline SYNTHETIC STAND-IN for ScanNet scans.

    geopurify synth --out DIR --scenes N --seed S [--points P] [--frames F] [--height H --width W]
    geopurify synth --format scannet-raw --out DIR --scenes N --seed S [--points V] [--frames F]
    geopurify synth --format matterport-raw --out DIR --scenes N --seed S [--rooms R] [--panoramas P] [--points V]
        [--height H --width W]

`--format scenes` (default) writes DIR/synth_0000 ... in the scene layout of docs/architecture.md
(points, NYU40 labels, instances, posed RGB-D frames, label images, meta.json {"source":
"synthetic (procedural room)"}); scenes already complete in DIR are skipped; scene i depends only
on (S, i). `--format scannet-raw` / `matterport-raw` write the same kind of rooms in ScanNet v2's /
Matterport3D's release layout (geopurify.standins.rooms.scannet_raw / matterport_raw), for
`geopurify prepare`. The writers are reached through the registry `WRITERS`, as the pipeline reaches
every stand-in.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from geopurify.errors import InputError
from geopurify.registry import Registry, resolve

log = logging.getLogger(__name__)

# --format -> the stand-in writer (geopurify.standins.rooms), imported when asked for
WRITERS = Registry(
    "--format",
    "format",
    {
        "scenes": "geopurify.standins.rooms.export:synthesize",
        "scannet-raw": "geopurify.standins.rooms.scannet_raw:synthesize_scannet_raw",
        "matterport-raw": "geopurify.standins.rooms.matterport_raw:synthesize_matterport_raw",
    },
)
FORMATS = WRITERS.names


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write procedural rooms (a synthetic stand-in for ScanNet scans)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="scenes",
        help="scenes: this project's scene layout, one synth_XXXX/ per room (default); scannet-raw: "
        "ScanNet v2's release layout (DIR/scans/scene9XXX_00/ with .sens, meshes, annotations); "
        "matterport-raw: Matterport3D's (DIR/v1/scans/<house>/)",
    )
    p.add_argument("--scenes", required=True, type=int, help="number of rooms (matterport-raw: houses)")
    p.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    p.add_argument(
        "--points",
        type=int,
        default=None,
        help="scenes: points per room (default 100000); raw formats: mesh vertex budget per room (default 120000)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="scenes: rendered RGB-D frames per room (default 50); scannet-raw: raw .sens frames per "
        "scan (default 300)",
    )
    p.add_argument("--rooms", type=int, default=None, help="matterport-raw: rooms (regions) per house (default 3)")
    p.add_argument(
        "--panoramas",
        type=int,
        default=None,
        help="matterport-raw: panoramas of 18 images per room (default: about one per 8 m^2, 1..4)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        help="scenes: image height (default 480, ScanNet depth); matterport-raw: (default 1024, Matterport3D's)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="scenes: image width (default 640, ScanNet depth); matterport-raw: (default 1280, Matterport3D's)",
    )
    p.set_defaults(func=run)


def _check(args) -> None:
    """One InputError for the first bad or misplaced option."""
    fmt = args.format
    misplaced = [
        flag
        for flag, val, ok in (
            ("--frames", args.frames, fmt != "matterport-raw"),
            ("--rooms", args.rooms, fmt == "matterport-raw"),
            ("--panoramas", args.panoramas, fmt == "matterport-raw"),
            ("--height", args.height, fmt != "scannet-raw"),
            ("--width", args.width, fmt != "scannet-raw"),
        )
        if val is not None and not ok
    ]
    if misplaced:
        raise InputError(None, f"{misplaced[0]} does not apply to --format {fmt}")
    checks = [
        (args.scenes >= 1, f"--scenes must be >= 1, got {args.scenes}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.points is None or args.points >= 1, f"--points must be >= 1, got {args.points}"),
        (
            args.frames is None or args.frames >= (0 if fmt == "scenes" else 1),
            f"--frames must be >= {0 if fmt == 'scenes' else 1}, got {args.frames}",
        ),
        (args.rooms is None or args.rooms >= 1, f"--rooms must be >= 1, got {args.rooms}"),
        (args.panoramas is None or args.panoramas >= 1, f"--panoramas must be >= 1, got {args.panoramas}"),
        (
            min(_image_hw(args)) >= 8,
            "image size must be at least 8x8, got {}x{}".format(*_image_hw(args)),
        ),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(None, problem)


def _image_hw(args) -> tuple[int, int]:
    """(height, width): the given ones, else the format's default (480 x 640; matterport-raw 1024 x 1280)."""
    default = (1024, 1280) if args.format == "matterport-raw" else (480, 640)
    return (args.height or default[0], args.width or default[1])


def _given(**options) -> dict:
    """The options given on the command line; the writer's defaults stand for the others."""
    return {k: v for k, v in options.items() if v is not None}


def run(args) -> int:
    _check(args)
    t = time.perf_counter()
    write = WRITERS.get(args.format)
    if args.format == "scenes":
        source = resolve("geopurify.standins.rooms.primitives:SOURCE")
        print(f"geopurify synth: {args.scenes} procedural rooms -- SYNTHETIC STAND-IN data ({source}), not ScanNet")
        paths = write(
            args.out,
            args.scenes,
            args.seed,
            n_points=args.points or 100_000,
            n_frames=50 if args.frames is None else args.frames,
            image_hw=_image_hw(args),
        )
        what = "synthetic rooms"
    elif args.format == "scannet-raw":
        print(
            f"geopurify synth: {args.scenes} procedural rooms in ScanNet v2's release layout -- SYNTHETIC "
            "STAND-IN data, not ScanNet scans"
        )
        paths = write(args.out, args.scenes, args.seed, **_given(n_vertices=args.points, n_frames=args.frames))
        what = f"synthetic ScanNet-format scans (prepare with: geopurify prepare scannet --root {args.out / 'scans'})"
    else:
        print(
            f"geopurify synth: {args.scenes} procedural houses in Matterport3D's release layout -- SYNTHETIC "
            "STAND-IN data, not Matterport3D"
        )
        paths = write(
            args.out,
            args.scenes,
            args.seed,
            panoramas=args.panoramas,
            image_hw=_image_hw(args),
            **_given(n_rooms=args.rooms, n_vertices=args.points),
        )
        what = (
            f"synthetic Matterport3D-format houses (prepare with: geopurify prepare matterport --root "
            f"{args.out / 'v1' / 'scans'})"
        )
    dt = time.perf_counter() - t
    for p in paths:
        print(Path(p))
    print(f"{len(paths)} {what} under {args.out} ({dt:.1f}s)")
    return 0

"""Benchmark: one procedural room written as a ScanNet v2 scan (`geopurify synth --format scannet-raw`)
against the same room written in this project's scene layout (`--format scenes`), the reference.

Both render the same number of frames by one ray cast each at 640x480 (`Room.render`); the raw
writer adds the triangle mesh and its annotations, the 1296x968 colour resampling, JPEG and zlib
into one .sens; the reference samples points and writes JPEG / PNG files per frame. Both are
SYNTHETIC STAND-IN data (procedural rooms), timed in the same run, wall and CPU (process) seconds.

    python bench/synth_raw.py [--points 120000] [--frames 300] [--seed 0]

Ends with one JSON line {"raw_wall_s", "raw_cpu_s", "reference_wall_s", "reference_cpu_s",
"raw_cpu_per_frame_s", "reference_cpu_per_frame_s", "n_vertices", "n_frames", "sens_bytes", ...}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from geopurify.standins.rooms import make_room, scene_seed, write_room
from geopurify.standins.rooms.scannet_raw import DEFAULT_FRAMES, DEFAULT_VERTICES, write_scannet_scan


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=DEFAULT_VERTICES, help="mesh vertex budget / reference points")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    seed = scene_seed(args.seed, 0)
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "scene9000_00"
        info, raw_wall, raw_cpu = timed(lambda: write_scannet_scan(scan, seed, args.points, args.frames))
        sens_bytes = (scan / "scene9000_00.sens").stat().st_size
        _, ref_wall, ref_cpu = timed(
            lambda: write_room(make_room(seed, n_points=args.points, n_frames=args.frames), Path(tmp) / "synth_0000")
        )
    print(
        f"scannet-raw ({info['room_type']}, {info['n_vertices']} vertices, {args.frames} frames): "
        f"{raw_wall:.1f} s wall, {raw_cpu:.1f} s CPU; reference (scenes layout): {ref_wall:.1f} s wall, "
        f"{ref_cpu:.1f} s CPU"
    )
    print(
        json.dumps(
            {
                "raw_wall_s": round(raw_wall, 2),
                "raw_cpu_s": round(raw_cpu, 2),
                "reference_wall_s": round(ref_wall, 2),
                "reference_cpu_s": round(ref_cpu, 2),
                "raw_cpu_per_frame_s": round(raw_cpu / args.frames, 4),
                "reference_cpu_per_frame_s": round(ref_cpu / args.frames, 4),
                "n_vertices": info["n_vertices"],
                "n_faces": info["n_faces"],
                "n_frames": args.frames,
                "lost_tracking": len(info["lost_tracking"]),
                "sens_bytes": sens_bytes,
                "room_type": info["room_type"],
                "synthetic_stand_in": True,
            }
        )
    )


if __name__ == "__main__":
    main()

"""`geopurify prepare`: raw dataset downloads -> scene directories (docs/real_data.md).

    geopurify prepare scannet --root scans/ --out data/scannet [--frame-step 20] [--scenes val|LIST]
    geopurify prepare matterport --root v1/scans/ --out data/matterport [--houses test|LIST] [--views visible|bbox]

One output directory per scan / region, built in <out>/.geopurify-partial/ and renamed when
complete: re-running the same command skips finished scenes and resumes after a kill. Each run then
writes <out>/scannetv2_<split>.txt (matterport_<split>.txt): the prepared scenes of each split.
Under `torchrun --nproc_per_node N -m geopurify prepare ...` the scans (houses) are split over the
N processes (geopurify.ranks.shard); rank 0 writes the split lists when all are done.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="convert raw ScanNet / Matterport3D downloads into scene directories")
    kinds = p.add_subparsers(dest="dataset", required=True)

    s = kinds.add_parser("scannet", help="ScanNet scans (.sens, vh_clean_2 meshes, axis alignment)")
    s.add_argument(
        "--root", required=True, type=Path, help="raw scans directory holding sceneXXXX_XX/ (or one scan directory)"
    )
    s.add_argument("--out", required=True, type=Path, help="output directory (one sub-directory per scene)")
    s.add_argument("--frame-step", type=int, default=20, help="export every k-th .sens frame (default 20)")
    s.add_argument(
        "--scenes",
        default=None,
        help="train | val | test (the download's scannetv2_<split>.txt beside "
        "--root if it has them, else the official ScanNet v2 lists) or a "
        "file with one scene name per line (default: every scan)",
    )
    s.add_argument("--overwrite", action="store_true", help="redo scenes that are already prepared")
    s.set_defaults(func=run_scannet)

    m = kinds.add_parser("matterport", help="Matterport3D houses (one scene per region)")
    m.add_argument("--root", required=True, type=Path, help="one house directory, or a directory of houses")
    m.add_argument("--out", required=True, type=Path, help="output directory (one sub-directory per region)")
    m.add_argument(
        "--houses",
        default=None,
        help="train | val | test (the download's matterport_<split>.txt above "
        "--root if it has them, else the official Matterport3D house lists) "
        "or a file with one house name per line (default: every house)",
    )
    m.add_argument(
        "--views",
        choices=["visible", "bbox"],
        default="visible",
        help="frames of a region: those whose depth sees it (default) or, as OpenScene, those whose "
        "camera lies inside its bounding box",
    )
    m.add_argument(
        "--min-fraction",
        type=float,
        default=0.01,
        help="visible: fraction of the region's sampled points a frame must see (default 0.01)",
    )
    m.add_argument("--seed", type=int, default=0, help="seed of the point sample used by --views visible")
    m.add_argument("--overwrite", action="store_true", help="redo regions that are already prepared")
    m.set_defaults(func=run_matterport)


def _count(done: list, dist) -> int | None:
    """The scenes all ranks prepared (on rank 0; None on the others, which print nothing)."""
    from geopurify.ranks import finish_distributed, gather_objects

    counts = gather_objects(len(done), dist)
    finish_distributed(dist)
    return sum(counts) if dist.main else None


def run_scannet(args) -> int:
    from geopurify.data.prepare import prepare_scannet
    from geopurify.ranks import SHARDED_TIMEOUT_S, init_distributed

    if args.frame_step < 1:
        raise InputError("--frame-step", f"must be a positive integer, got {args.frame_step}")
    dist = init_distributed("cpu", SHARDED_TIMEOUT_S)
    done = prepare_scannet(
        args.root, args.out, frame_step=args.frame_step, scenes=args.scenes, overwrite=args.overwrite, dist=dist
    )
    n = _count(done, dist)
    if n is not None:
        print(f"{n} ScanNet scenes ready in {args.out}")
    return 0


def run_matterport(args) -> int:
    from geopurify.data.matterport import prepare_matterport

    if not 0 <= args.min_fraction <= 1:
        raise InputError("--min-fraction", f"must be in [0, 1], got {args.min_fraction}")
    from geopurify.ranks import SHARDED_TIMEOUT_S, init_distributed

    dist = init_distributed("cpu", SHARDED_TIMEOUT_S)
    done = prepare_matterport(
        args.root,
        args.out,
        houses=args.houses,
        views=args.views,
        overwrite=args.overwrite,
        seed=args.seed,
        min_fraction=args.min_fraction,
        dist=dist,
    )
    n = _count(done, dist)
    if n is not None:
        print(f"{n} Matterport3D region scenes ready in {args.out}")
    return 0

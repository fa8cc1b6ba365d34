"""`geopurify select-subset`: pick the ~1.5% training scenes from label histograms (METHOD.md section 4).

    geopurify select-subset --root DIR [--list FILE] --label-set scannet20 --k 20 --gamma 1.0 --seed 0 \
        --out subset.txt

Writes one scene name per line (the format of the config's data.train_list). Labels are read only
to choose scenes (geopurify.distill.subset); training never uses them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("select-subset", help="choose K diverse, class-rich training scenes (scene list file)")
    p.add_argument("--root", required=True, type=Path, help="directory holding one sub-directory per scene")
    p.add_argument("--list", type=Path, default=None, help="candidate scene names, one per line (default: all)")
    p.add_argument("--label-set", default="scannet20", help="classes counted in the histograms")
    p.add_argument("--k", type=int, default=20, help="number of k-means clusters = scenes chosen")
    p.add_argument(
        "--gamma",
        type=float,
        default=1.0,
        help="weight of the class count in the score (1.0 reference code, 0.5 paper)",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--out", required=True, type=Path, help="scene list file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from geopurify.data.labels import get_label_set
    from geopurify.data.readers import list_scenes, load_scene_for
    from geopurify.distill.subset import label_histogram, select_subset_details
    from geopurify.evaluate.split import scene_ground_truth
    from geopurify.io import write_text

    if args.k < 1:
        raise InputError("--k", f"must be a positive integer, got {args.k}")
    if args.gamma < 0:
        raise InputError("--gamma", f"must be non-negative, got {args.gamma}")
    label_set = get_label_set(args.label_set)
    paths = list_scenes(args.root, args.list)
    hists = {}
    for path in tqdm(paths, desc="label histograms", unit="scene"):
        # points and labels only; the frames are not needed, so only the first pose is read
        scene = load_scene_for(path, label_set, frame_step=10**9)
        hists[path.name] = label_histogram(scene_ground_truth(scene, label_set), len(label_set.names))
    sel = select_subset_details(hists, k=args.k, gamma=args.gamma, seed=args.seed)
    log.info(
        "%d scenes; median Nc %.1f, median Hc %.3f bits; %d pass both filters; K = %d",
        len(hists),
        sel.median_nc,
        sel.median_hc,
        len(sel.kept),
        sel.k,
    )
    if not sel.selected:
        raise InputError(
            args.root,
            f"no scene has both Nc >= median ({sel.median_nc:g}) and Hc >= median "
            f"({sel.median_hc:.3f}); nothing to select",
        )
    lines = [
        f"# geopurify select-subset: label set {label_set.name}, k={args.k} (used {sel.k}), "
        f"gamma={args.gamma:g}, seed={args.seed}; {len(sel.selected)} of {len(hists)} scenes"
    ]
    for name in sel.selected:
        log.info(
            "  %-20s cluster %2d  Nc %3d  Hc %.3f  score %.3f",
            name,
            sel.cluster[name],
            sel.nc[name],
            sel.hc[name],
            sel.score[name],
        )
    write_text(args.out, "\n".join(lines + sel.selected) + "\n")
    print(f"selected {len(sel.selected)} of {len(hists)} scenes -> {args.out}")
    return 0

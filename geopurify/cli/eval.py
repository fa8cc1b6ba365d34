"""`geopurify eval`: score per-point predictions, or raw lifted features, against scene labels.

    geopurify eval --scene DIR [--scene DIR ...] (--pred DIR | --features DIR) --label-set scannet20 \
        [--config YAML] [--vlm simulated --vlm-path P] --out metrics.json

--pred DIR holds `<scene>.pred.npy` (int (N,) class indices of the label set; -1 = no prediction,
counted as an error of the point's true class);
--features DIR holds `<scene>.lift.pt` (geopurify.lift.result.save_lifted): each point is classified by
the highest cosine with the text embeddings of the label set's prompts, from the VLM named by the
config (or --vlm). Confusion counts are summed over all scenes (geopurify.evaluate.metrics).

Class settings: `--label-set X` scores X alone. Without it the config's `data.label_set` is scored
and, with --features, each of `eval.also_label_sets` beside it (its own prompts); metrics.json and
every printed table name the setting (e.g. scannet19, the setting of the paper's 55.1, with
scannet20 under "also"). Predictions (--pred) are indices of one set, so only that one is scored.

Under `torchrun --nproc_per_node N -m geopurify eval ...` the scenes are split over the N processes
(rank r: scenes r, r + N, ...); rank 0 sums their counts in scene order and writes --out, the same
file a single process writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from geopurify.cli.options import add_device, add_set, config_of, device_of
from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="mIoU / mAcc / f-mIoU / f-mAcc of predictions or lifted features")
    p.add_argument(
        "--scene",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="scene directory with labels (repeat for several scenes)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", type=Path, metavar="DIR", help="directory of <scene><suffix> predictions")
    src.add_argument("--features", type=Path, metavar="DIR", help="directory of <scene>.lift.pt lifted features")
    p.add_argument(
        "--pred-suffix",
        default=".pred.npy",
        help="prediction file suffix (default .pred.npy; `geopurify val` writes .purified.npy, .raw.npy)",
    )
    p.add_argument(
        "--label-set",
        default=None,
        help="benchmark classes, scored alone (default: the config's "
        "data.label_set, and with --features its eval.also_label_sets beside it)",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the embedded defaults)")
    p.add_argument("--vlm", default=None, help="text encoder for --features (overrides lift.vlm)")
    p.add_argument("--vlm-path", default=None, help="checkpoint for --vlm (overrides lift.vlm_path)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def load_predictions(path: Path, n_points: int, n_classes: int) -> np.ndarray:
    """(N,) int64 class indices from a `.npy` file; InputError for a missing, malformed or out-of-range file."""
    if not path.is_file():
        raise InputError(path, "prediction file not found")
    try:
        pred = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"not a readable .npy file ({type(e).__name__})") from None
    if pred.ndim != 1 or pred.shape[0] != n_points:
        raise InputError(path, f"predictions must be ({n_points},) for the scene's points, got {pred.shape}")
    if pred.dtype.kind not in "iu":
        raise InputError(path, f"predictions must be integer class indices, got {pred.dtype}")
    pred = pred.astype(np.int64)
    bad = (pred < -1) | (pred >= n_classes)
    if bad.any():
        raise InputError(
            path,
            f"{int(bad.sum())} predictions lie outside 0..{n_classes - 1} (and are not -1), e.g. {int(pred[bad][0])}",
        )
    return pred


def predict_from_features(path: Path, n_points: int, text_embs: dict) -> tuple[dict[str, np.ndarray], dict]:
    """({setting: labels (N,) int64}, provenance) from a `.lift.pt` file: per class setting, the argmax
    cosine with that setting's text embeddings (`text_embs`: setting name -> (P, C)), computed on the
    device the text embeddings are on (the features are moved there)."""
    from geopurify.lift.result import load_lifted
    from geopurify.ops.scores import classify_by_text

    lifted = load_lifted(path, n_points=n_points)
    dim = next(iter(text_embs.values())).shape[1]
    if lifted.feat.shape[1] != dim:
        raise InputError(
            path,
            f"features are {lifted.feat.shape[1]}-d but the text embeddings are "
            f"{dim}-d: evaluate with the VLM that produced them (--vlm)",
        )
    return (
        {name: classify_by_text(lifted.feat.to(t.device), t).cpu().numpy() for name, t in text_embs.items()},
        dict(lifted.info),
    )


def _score_scene(args, scene_dir: Path, cfg: dict, sets, text_embs, vlm, exclude) -> dict:
    """One scene scored: {"name", "dir", "confusion": {setting: (C, C + 1)}, "per_scene": {setting:
    its entry in the report}, "info": the lifted file's provenance (None for --pred)}."""
    from geopurify.data.readers import load_scene_for
    from geopurify.evaluate.metrics import confusion, metrics
    from geopurify.evaluate.split import scene_ground_truth

    label_set = sets[0]
    scene = load_scene_for(scene_dir, label_set, frame_step=cfg["data"]["frame_step"])
    gts = {s.name: scene_ground_truth(scene, s) for s in sets}
    skipped = int(scene.meta.get("skipped_frames", 0))  # frames the reader left out
    info = None
    if args.pred is not None:
        preds = {
            label_set.name: load_predictions(
                args.pred / f"{scene.name}{args.pred_suffix}", scene.n_points, label_set.n_classes
            )
        }
    else:
        preds, info = predict_from_features(args.features / f"{scene.name}.lift.pt", scene.n_points, text_embs)
        skipped = int(info.get("skipped_frames", 0))  # those the lifting left out (reader's included)
        if info.get("vlm") != vlm.name:
            log.warning("%s: features come from %r but the text side is %r", scene.name, info.get("vlm"), vlm.name)
    out = {"name": scene.name, "dir": scene_dir, "confusion": {}, "per_scene": {}, "info": info}
    for s in sets:
        conf = confusion(preds[s.name], gts[s.name], s.n_classes)
        out["confusion"][s.name] = conf
        m = metrics(conf, s.names, exclude=exclude)
        out["per_scene"][s.name] = {
            "name": scene.name,
            "path": str(scene_dir),
            "n_points": scene.n_points,
            "labelled_points": int((gts[s.name] >= 0).sum()),
            "skipped_frames": skipped,
            "mIoU": m["mIoU"],
            "mAcc": m["mAcc"],
        }
    m = out["per_scene"][label_set.name]
    log.info("%s: mIoU %s", scene.name, "-" if m["mIoU"] is None else f"{m['mIoU']:.1f}")
    return out


def run(args) -> int:
    from tqdm import tqdm

    from geopurify.data.labels import describe_setting, get_label_set
    from geopurify.evaluate.metrics import format_table, metrics
    from geopurify.evaluate.split import class_settings
    from geopurify.io import write_json
    from geopurify.ranks import (
        SHARDED_TIMEOUT_S,
        finish_distributed,
        gather_objects,
        init_distributed,
        rank_device,
        shard,
    )

    cfg = config_of(args, {"lift": {"vlm": args.vlm, "vlm_path": args.vlm_path}, "data": {"label_set": args.label_set}})
    device = device_of(args)
    dist = init_distributed(str(device), SHARDED_TIMEOUT_S)
    device = rank_device(device, dist)
    # class settings: --label-set alone, else the config's primary one and eval.also_label_sets beside it
    # (--label-set is data.label_set, so a --set of that key wins over it)
    sets = [get_label_set(cfg["data"]["label_set"])] if args.label_set else class_settings(cfg)  # unknown: InputError
    label_set = sets[0]
    if args.pred is not None and len(sets) > 1:
        print(
            f"note: predictions are class indices of {label_set.name}; the other class settings of the config "
            f"({', '.join(s.name for s in sets[1:])}) need features to be scored (--features)"
        )
        sets = sets[:1]
    src_dir = args.pred if args.pred is not None else args.features
    if not src_dir.is_dir():
        raise InputError(src_dir, "directory not found")
    exclude = tuple(cfg["eval"]["exclude_from_f"])

    vlm = text_embs = None
    if args.features is not None:
        from geopurify.vlm import build_vlm, text_embeddings

        vlm = build_vlm(cfg, device=str(device), label_set=label_set)
        text_embs = {s.name: text_embeddings(vlm, s, cfg["lift"]["prompt_template"]).to(device) for s in sets}
        log.info(
            "classifying lifted features with the prompts of %s embedded by %s",
            ", ".join(s.name for s in sets),
            vlm.describe(),
        )

    mine = shard(list(enumerate(args.scene)), dist)
    desc = "eval" if dist.world == 1 else f"eval (rank {dist.rank}/{dist.world})"
    done = [
        (i, _score_scene(args, d, cfg, sets, text_embs, vlm, exclude)) for i, d in tqdm(mine, desc=desc, unit="scene")
    ]
    scored = [r for _, r in sorted(sum(gather_objects(done, dist), []), key=lambda x: x[0])]  # every rank's, in order
    finish_distributed(dist)
    seen_names: dict[str, Path] = {}
    for r in scored:
        if r["name"] in seen_names:
            raise InputError(r["dir"], f"scene name {r['name']} given twice (also {seen_names[r['name']]})")
        seen_names[r["name"]] = r["dir"]
    if not dist.main:  # another rank than 0: its scenes are scored, rank 0 reports
        return 0
    total = {
        s.name: sum((r["confusion"][s.name] for r in scored), np.zeros((s.n_classes, s.n_classes + 1), np.int64))
        for s in sets
    }  # last: no prediction
    per_scene = {s.name: [r["per_scene"][s.name] for r in scored] for s in sets}
    producers = {r["name"]: r["info"] for r in scored if r["info"] is not None}

    result = {s.name: metrics(total[s.name], s.names, exclude=exclude) for s in sets}
    if args.pred is not None:
        source = {
            "kind": "predictions",
            "dir": str(args.pred),
            "suffix": args.pred_suffix,
            "vlm": None,
            "simulated": None,
            "note": "predictions scored as given; .npy files do not record which VLM produced them",
        }
    else:
        sims = {bool(i.get("simulated")) for i in producers.values()}
        simulated = bool(vlm.simulated) or any(sims)
        source = {
            "kind": "lifted features (argmax cosine with prompt embeddings)",
            "dir": str(args.features),
            "vlm": sorted({str(i.get("vlm")) for i in producers.values()}),
            "fusion": sorted({str(i.get("fusion")) for i in producers.values()}),
            "text_encoder": vlm.describe(),
            "prompt_template": cfg["lift"]["prompt_template"],
            "simulated": simulated,
        }
        if simulated:
            source["note"] = (
                "SIMULATED VLM: these features come from an offline stand-in, not a real "
                "vision-language model; the scores say nothing about a real VLM"
            )
    primary = per_scene[label_set.name]
    n_skipped = sum(s["skipped_frames"] for s in primary)
    report = {
        "label_set": label_set.name,
        "class_setting": describe_setting(label_set.name),
        "classes": list(label_set.names),
        "scenes": primary,
        "source": source,
        "skipped_frames": n_skipped,
        "device": str(device),
        "metrics": result[label_set.name],
        "confusion": total[label_set.name].tolist(),
        "also": {
            s.name: {
                "class_setting": describe_setting(s.name),
                "classes": list(s.names),
                "metrics": result[s.name],
                "confusion": total[s.name].tolist(),
                "scenes": per_scene[s.name],
            }
            for s in sets[1:]
        },
    }
    write_json(args.out, report)
    for i, s in enumerate(sets):
        title = (
            f"{'' if i == 0 else 'also: '}class setting {describe_setting(s.name)}\n"
            f"{len(primary)} scene(s), {source['kind']}"
        )
        if source.get("simulated"):
            title += "  [SIMULATED VLM]"
        print(format_table(result[s.name], title=title))
    if n_skipped:
        print(f"note: {n_skipped} unusable frames were skipped (per scene in {args.out}: scenes[].skipped_frames)")
    print(f"wrote {args.out}")
    return 0

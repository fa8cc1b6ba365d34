"""`geopurify eval`: score per-point predictions, or raw lifted features, against scene labels.

    geopurify eval --scene DIR [--scene DIR ...] (--pred DIR | --features DIR) --label-set scannet20 \
        [--config YAML] [--vlm simulated --vlm-path P] --out metrics.json

--pred DIR holds `<scene>.pred.npy` (int (N,) class indices of the label set; -1 = no prediction,
counted as an error of the point's true class);
--features DIR holds `<scene>.lift.pt` (geopurify.lift.lift.save_lifted): each point is classified by
the highest cosine with the text embeddings of the label set's prompts, from the VLM named by the
config (or --vlm). Confusion counts are summed over all scenes (geopurify.evaluate.metrics).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="mIoU / mAcc / f-mIoU / f-mAcc of predictions or lifted features")
    p.add_argument("--scene", action="append", required=True, type=Path, metavar="DIR",
                   help="scene directory with labels (repeat for several scenes)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", type=Path, metavar="DIR", help="directory of <scene><suffix> predictions")
    src.add_argument("--features", type=Path, metavar="DIR", help="directory of <scene>.lift.pt lifted features")
    p.add_argument("--pred-suffix", default=".pred.npy",
                   help="prediction file suffix (default .pred.npy; `geopurify val` writes .purified.npy, .raw.npy)")
    p.add_argument("--label-set", default=None, help="benchmark classes (default: the config's data.label_set)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the embedded defaults)")
    p.add_argument("--vlm", default=None, help="text encoder for --features (overrides lift.vlm)")
    p.add_argument("--vlm-path", default=None, help="checkpoint for --vlm (overrides lift.vlm_path)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    p.set_defaults(func=run)


def scene_ground_truth(scene, label_set) -> np.ndarray:
    """(N,) int64 class indices of the scene's labels in the label set (IGNORE elsewhere)."""
    where = scene.path or scene.name
    if scene.labels is None:
        raise InputError(where, "scene has no labels to evaluate against")
    if scene.label_space not in label_set.spaces:
        raise InputError(where, f"labels are {scene.label_space} ids but label set {label_set.name} is defined on "
                                f"{', '.join(label_set.spaces)}")
    return label_set.map(scene.labels, space=scene.label_space)


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
        raise InputError(path, f"{int(bad.sum())} predictions lie outside 0..{n_classes - 1} (and are not -1), "
                               f"e.g. {int(pred[bad][0])}")
    return pred


def predict_from_features(path: Path, n_points: int, text_emb) -> tuple[np.ndarray, dict]:
    """(labels (N,) int64, provenance) from a `.lift.pt` file: argmax cosine with the text embeddings."""
    from geopurify.evaluate.metrics import classify_by_text
    from geopurify.lift.lift import load_lifted

    lifted = load_lifted(path, n_points=n_points)
    if lifted.feat.shape[1] != text_emb.shape[1]:
        raise InputError(path, f"features are {lifted.feat.shape[1]}-d but the text embeddings are "
                               f"{text_emb.shape[1]}-d: evaluate with the VLM that produced them (--vlm)")
    return classify_by_text(lifted.feat, text_emb).numpy(), dict(lifted.info)


def run(args) -> int:
    from tqdm import tqdm

    from geopurify.config import load_config
    from geopurify.data.labels import get_label_set
    from geopurify.data.readers import load_scene_for
    from geopurify.evaluate.metrics import confusion, format_table, metrics
    from geopurify.io import write_json

    overrides: dict = {}
    if args.vlm or args.vlm_path:
        overrides["lift"] = {k: v for k, v in (("vlm", args.vlm), ("vlm_path", args.vlm_path)) if v}
    cfg = load_config(args.config, overrides or None)
    set_name = args.label_set or cfg["data"]["label_set"]
    label_set = get_label_set(set_name)  # InputError for an unknown name
    names = list(label_set.names)
    n = len(names)
    src_dir = args.pred if args.pred is not None else args.features
    if not src_dir.is_dir():
        raise InputError(src_dir, "directory not found")
    seen_names: dict[str, Path] = {}

    vlm = text_emb = None
    if args.features is not None:
        from geopurify.vlm import build_vlm, text_embeddings

        vlm = build_vlm(cfg, label_set=label_set)
        text_emb = text_embeddings(vlm, label_set, cfg["lift"]["prompt_template"])
        log.info("classifying lifted features with %d prompts of %s embedded by %s", n, label_set.name,
                 vlm.describe())

    total = np.zeros((n, n + 1), dtype=np.int64)  # last column: no prediction
    per_scene, producers = [], {}
    for scene_dir in tqdm(args.scene, desc="eval", unit="scene"):
        scene = load_scene_for(scene_dir, label_set, frame_step=cfg["data"]["frame_step"])
        if scene.name in seen_names:
            raise InputError(scene_dir, f"scene name {scene.name} given twice (also {seen_names[scene.name]})")
        seen_names[scene.name] = scene_dir
        gt = scene_ground_truth(scene, label_set)
        skipped = int(scene.meta.get("skipped_frames", 0))  # frames the reader left out
        if args.pred is not None:
            pred = load_predictions(args.pred / f"{scene.name}{args.pred_suffix}", scene.n_points, n)
        else:
            pred, info = predict_from_features(args.features / f"{scene.name}.lift.pt", scene.n_points, text_emb)
            producers[scene.name] = info
            skipped = int(info.get("skipped_frames", 0))  # those the lifting left out (reader's included)
            if info.get("vlm") != vlm.name:
                log.warning("%s: features come from %r but the text side is %r", scene.name, info.get("vlm"), vlm.name)
        conf = confusion(pred, gt, n)
        total += conf
        m = metrics(conf, names, exclude=tuple(cfg["eval"]["exclude_from_f"]))
        per_scene.append({"name": scene.name, "path": str(scene_dir), "n_points": scene.n_points,
                          "labelled_points": int((gt >= 0).sum()), "skipped_frames": skipped,
                          "mIoU": m["mIoU"], "mAcc": m["mAcc"]})
        log.info("%s: mIoU %s", scene.name, "-" if m["mIoU"] is None else f"{m['mIoU']:.1f}")

    result = metrics(total, names, exclude=tuple(cfg["eval"]["exclude_from_f"]))
    if args.pred is not None:
        source = {"kind": "predictions", "dir": str(args.pred), "suffix": args.pred_suffix,
                  "vlm": None, "simulated": None,
                  "note": "predictions scored as given; .npy files do not record which VLM produced them"}
    else:
        sims = {bool(i.get("simulated")) for i in producers.values()}
        simulated = bool(vlm.simulated) or any(sims)
        source = {"kind": "lifted features (argmax cosine with prompt embeddings)", "dir": str(args.features),
                  "vlm": sorted({str(i.get("vlm")) for i in producers.values()}),
                  "fusion": sorted({str(i.get("fusion")) for i in producers.values()}),
                  "text_encoder": vlm.describe(), "prompt_template": cfg["lift"]["prompt_template"],
                  "simulated": simulated}
        if simulated:
            source["note"] = ("SIMULATED VLM: these features come from an offline stand-in, not a real "
                              "vision-language model; the scores say nothing about a real VLM")
    n_skipped = sum(s["skipped_frames"] for s in per_scene)
    report = {"label_set": label_set.name, "classes": names, "scenes": per_scene, "source": source,
              "skipped_frames": n_skipped, "metrics": result, "confusion": total.tolist()}
    write_json(args.out, report)
    title = f"{label_set.name}, {len(per_scene)} scene(s), {source['kind']}"
    if source.get("simulated"):
        title += "  [SIMULATED VLM]"
    print(format_table(result, title=title))
    if n_skipped:
        print(f"note: {n_skipped} unusable frames were skipped (per scene in {args.out}: scenes[].skipped_frames)")
    print(f"wrote {args.out}")
    return 0

"""`geopurify query`: per-point relevance of any free text, from the purified features.

Relevance = cosine(purified feature, text embedding). The purified features are the lifted
features pooled over the student's affinities (the reference path: all channels), so any
prompt can be asked after the fact.
"""
from __future__ import annotations

import logging
from pathlib import Path

from geopurify.cli.options import add_device, add_set, device_of, drop_none
from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("query", help="heat map of a free-text prompt over a scene (PLY + PNG)")
    p.add_argument("--scene", required=True, type=Path, help="scene directory")
    p.add_argument("--ckpt", required=True, type=Path, help="student checkpoint (geopurify.pth)")
    p.add_argument("--text", required=True, help='free text, e.g. "a soft place to sit"')
    p.add_argument("--out", required=True, type=Path, help="output prefix: writes OUT.ply and OUT.png")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--vlm", default=None)
    p.add_argument("--vlm-path", default=None)
    p.add_argument("--cache-dir", type=Path, default=None, help="lifted-feature cache (default: next to OUT)")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def relevance(purified_feat, text_emb) -> "np.ndarray":
    """(N,) cosine of each point's purified feature with one prompt embedding."""
    import torch

    f = torch.nn.functional.normalize(purified_feat.float(), dim=1)
    w = torch.nn.functional.normalize(text_emb.float().reshape(1, -1), dim=1)
    return (f @ w.T).squeeze(1).cpu().numpy()


def run(args) -> int:
    import numpy as np

    from geopurify.cache import cached_lift
    from geopurify.config import apply_sets, load_config, merge
    from geopurify.data.ply import write_ply
    from geopurify.data.readers import load_scene
    from geopurify.distill.checkpoint import check_compatible, load_student
    from geopurify.purify.infer import purified_features
    from geopurify.viz.render import heat_colors, render_points
    from geopurify.vlm import build_vlm

    if not args.text.strip():
        raise InputError(None, "--text is empty")
    device = device_of(args)
    model, meta = load_student(args.ckpt, device)
    if args.config is not None:
        cfg = load_config(args.config)
    else:
        cfg = load_config(None)
        if isinstance(meta.get("config"), dict):
            cfg = merge(cfg, meta["config"], args.ckpt)
    cfg = merge(cfg, drop_none({"lift": {"vlm": args.vlm, "vlm_path": args.vlm_path}}), "overrides")
    cfg = apply_sets(cfg, args.set)  # order: config (or the checkpoint's) < --vlm / --vlm-path < --set
    scene = load_scene(args.scene, frame_step=cfg["data"]["frame_step"])
    vlm = build_vlm(cfg, device=str(device))
    check_compatible(meta, vlm.dim, cfg, args.ckpt)
    log.info("query %r on %s with %s", args.text, scene.name, vlm.describe())
    cache = args.cache_dir or args.out.parent / "cache"
    lifted = cached_lift(scene, cfg, vlm, cache, device=device)
    feat = purified_features(scene, lifted, model, cfg, device=device)
    text = vlm.encode_text([args.text])[0]
    rel = relevance(feat, text)
    lo, hi = np.percentile(rel, 1), np.percentile(rel, 99)
    heat = np.clip((rel - lo) / max(hi - lo, 1e-6), 0, 1)
    colors = heat_colors(heat)
    out_ply = args.out.with_suffix(".ply")
    out_png = args.out.with_suffix(".png")
    write_ply(out_ply, scene.xyz, colors, scalars={"relevance": rel.astype(np.float32)})
    render_points(scene.xyz, colors, out_png, view="auto")
    top = np.argsort(-rel)[: max(1, len(rel) // 100)]
    print(f"{args.text!r}: relevance (cosine) min {rel.min():.3f} max {rel.max():.3f}; "
          f"top-1% points centred at {np.round(scene.xyz[top].mean(0), 2).tolist()} (computed on {device})")
    if vlm.simulated:
        print("note: features come from the SIMULATED VLM stand-in; free-text relevance reflects its text space only")
    print(f"wrote {out_ply} and {out_png}")
    return 0

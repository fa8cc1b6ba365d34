"""`geopurify query`: per-point relevance of any free text, from the purified features.

Relevance = purified feature . unit prompt embedding (= |F(T)| x cosine; geopurify.purify.query
explains why), computed by pooling the prompt's score column over the student's affinities: the
same function `geopurify view` calls for every prompt. Writes OUT.ply (heat colours and a
`relevance` scalar per point) and OUT.png (the heat map under the prompt, with a colour bar).
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.cli.options import add_device, add_set, device_of
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


def run(args) -> int:
    import numpy as np

    from geopurify.data.ply import write_ply
    from geopurify.purify.query import encode_prompt, load_session, prompt_relevance
    from geopurify.viz.render import heat_colors, heat_panel, render_points

    if not args.text.strip():
        raise InputError(None, "--text is empty")
    device = device_of(args)
    session, loaded = load_session(
        args.scene,
        ckpt=args.ckpt,
        config=args.config,
        vlm=args.vlm,
        vlm_path=args.vlm_path,
        sets=args.set,
        cache_dir=args.cache_dir or args.out.parent / "cache",
        device=device,
    )
    scene = loaded.scene
    log.info("query %r on %s with %s", args.text, scene.name, loaded.vlm.describe())
    rel = prompt_relevance(session, encode_prompt(loaded.vlm, args.text))
    lo, hi = (float(v) for v in np.percentile(rel, [1, 99]))
    colors = heat_colors(rel, lo, hi)
    out_ply = args.out.with_suffix(".ply")
    out_png = args.out.with_suffix(".png")
    write_ply(out_ply, scene.xyz, colors, scalars={"relevance": rel.astype(np.float32)})
    image = render_points(scene.xyz, colors, None, view="auto")
    heat_panel(image, f'"{args.text}"', lo, hi, f"purified relevance, T = {session.steps}", out_png=out_png)
    top = np.argsort(-rel)[: max(1, len(rel) // 100)]
    print(
        f"{args.text!r}: relevance (purified feature . unit prompt, T = {session.steps}) min {rel.min():.3f} "
        f"max {rel.max():.3f}; top-1% points centred at {np.round(scene.xyz[top].mean(0), 2).tolist()} "
        f"(computed on {device})"
    )
    for line in loaded.stand_ins:
        print(f"note: {line}")
    print(f"wrote {out_ply} and {out_png}")
    return 0

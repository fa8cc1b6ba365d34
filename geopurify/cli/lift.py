"""`geopurify lift`: project VLM feature maps onto scene points and fuse them over views.

One --scene writes --out as a file; several write --out/<scene>.lift.pt each, skipping scenes
whose output already exists (so an interrupted batch resumes). Under `torchrun --nproc_per_node N
-m geopurify lift ...` the scenes are split over the N processes (rank r: scenes r, r + N, ...);
each writes its own scenes' files. Scenes are read and their frames decoded ahead by `eval.workers`
DataLoader workers (geopurify.data.prefetch).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from geopurify.cli.options import add_device, add_set, config_of, device_of
from geopurify.errors import InputError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("lift", help="lift 2D VLM features onto scene points (multi-view fusion)")
    p.add_argument(
        "--scene", required=True, type=Path, action="append", help="scene directory (repeat for several scenes)"
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output .lift.pt file (one scene) or directory (several scenes)"
    )
    p.add_argument(
        "--vlm", default=None, help="VLM backend: simulated | clip | openscene | external (overrides lift.vlm)"
    )
    p.add_argument(
        "--text-path", default=None, help="openscene / external: prompt-embedding file or CLIP dir (lift.text_path)"
    )
    p.add_argument("--vlm-path", default=None, help="VLM checkpoint / feature directory (overrides lift.vlm_path)")
    p.add_argument("--config", type=Path, default=None, help="YAML config over geopurify/defaults.yaml")
    p.add_argument("--fusion", choices=["mean", "consensus"], default=None, help="overrides lift.fusion")
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def outputs_for(scenes: list[Path], out: Path) -> list[Path]:
    """The output path of each scene: `out` itself for one scene, out/<scene>.lift.pt for several."""
    if len(scenes) == 1:
        if out.is_dir():
            raise InputError(out, "is a directory; with one --scene, --out names the output file")
        return [out]
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory; with several --scene, --out names a directory")
    names = [s.resolve().name for s in scenes]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(None, f"several --scene directories share the name {sorted(dup)[0]!r}; outputs would collide")
    return [out / f"{n}.lift.pt" for n in names]


def run(args) -> int:
    from geopurify.data.prefetch import prefetched
    from geopurify.lift.multiview import lift_scene
    from geopurify.lift.result import save_lifted, views_summary
    from geopurify.ranks import SHARDED_TIMEOUT_S, finish_distributed, init_distributed, rank_device, shard
    from geopurify.schema import check
    from geopurify.vlm import build_vlm

    cfg = config_of(
        args, {"lift": {"vlm": args.vlm, "vlm_path": args.vlm_path, "text_path": args.text_path, "fusion": args.fusion}}
    )
    device = device_of(args)
    outs = outputs_for(args.scene, args.out)
    dist = init_distributed(str(device), SHARDED_TIMEOUT_S)
    device = rank_device(device, dist)
    mine = shard(list(zip(args.scene, outs)), dist)
    todo = [(s, o) for s, o in mine if not (len(outs) > 1 and o.exists())]
    for s, o in mine:
        if (s, o) not in todo:
            log.info("skip %s: %s exists", s, o)
    if not todo:
        where = f" (rank {dist.rank}/{dist.world}: {len(mine)} of them)" if dist.world > 1 else ""
        print(f"nothing to do: all {len(outs)} outputs exist in {args.out}{where}")
        finish_distributed(dist)
        return 0
    vlm = build_vlm(cfg, device=str(device))
    if vlm.simulated:
        log.warning(
            "lifting with a SIMULATED VLM (%s): features derived from labels, an offline stand-in for "
            "a real vision-language model; the output files record simulated=True",
            vlm.describe(),
        )
    text_emb = None
    if cfg["lift"]["fusion"] == "consensus":
        from geopurify.data.labels import get_label_set
        from geopurify.vlm import text_embeddings

        text_emb = text_embeddings(vlm, get_label_set(cfg["data"]["label_set"]), cfg["lift"]["prompt_template"])
    check(cfg, "eval.workers", "eval.prefetch_mb")
    read = partial(_read_scene, int(cfg["data"]["frame_step"]), cfg["lift"]["vlm"], cfg["eval"]["prefetch_mb"])
    desc = "lift" if dist.world == 1 else f"lift (rank {dist.rank}/{dist.world})"
    scenes = prefetched([s for s, _ in todo], read, cfg["eval"]["workers"], desc=desc)
    for scene, (_, out) in zip(scenes, todo):
        result = lift_scene(scene, vlm, cfg, text_emb=text_emb, device=device)
        save_lifted(out, result)
        tag = " (SIMULATED VLM)" if vlm.simulated else ""
        info = result.info
        skipped = f", {info['skipped_frames']} frames skipped" if info.get("skipped_frames") else ""
        print(
            f"{scene.name}: {scene.n_points} points, {views_summary(info)}"
            f"{' (virtual cameras)' if info.get('virtual_frames') else ''}{skipped}, "
            f"{100 * float(result.seen.float().mean()):.1f}% seen, {info.get('fusion', '?')} fusion{tag}, "
            f"on {device} -> {out}"
        )
    finish_distributed(dist)
    return 0


def _read_scene(frame_step: int, vlm_name: str, prefetch_mb: float, path: Path):
    """A scene read, and the frame images its lifting reads decoded ahead (in a loader worker)."""
    from geopurify.data.prefetch import preload_frames
    from geopurify.data.readers import load_scene

    scene = load_scene(path, frame_step=frame_step)
    preload_frames(scene, vlm_name, prefetch_mb)
    return scene

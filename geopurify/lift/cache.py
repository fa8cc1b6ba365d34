"""On-disk cache of per-scene lifted features (`cached_lift`).

Lifted features are a deterministic function of the scene and a few settings, and cost far more
than reading a file, so training (many epochs over few scenes) and evaluation compute them once.
The key hashes the scene's content (`geopurify.data.fingerprint`) with every setting that changes
the result (`lift_settings`, read from the config alone, so a hit loads no VLM) and a cheap content
fingerprint (`geopurify.io.file_fingerprint`: size, mtime, hash of the first 64 KiB) of every input
file: the scene's point / label files and frame images, the VLM's checkpoint files or this scene's
OpenScene / external feature files, the prompt-embedding file. So a regenerated scene, a changed
knob or a file re-exported under the same path never reads a stale file. Files are written
atomically in float16; what `cached_lift` returns is always the value as read back from disk, so a
first (computing) call and a later (reading) call give bit-identical tensors (training resumed from
a checkpoint depends on that). A cache file that cannot be read or has the wrong shape is our own
broken file: a warning, and it is recomputed.

Size: `lift.cache_max_gb` caps the directory; a read marks a file as used and each write evicts the
least recently used files until the directory fits (`geopurify.diskcache`; a file another process
evicted meanwhile is recomputed). Each write logs the scene's bytes and the cache's size.

Layout: <cache_dir>/lift/<scene>.<key>.lift.pt.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geopurify.data.fingerprint import cache_key, scene_files, scene_fingerprint
from geopurify.diskcache import after_write, cap_bytes, read_cached
from geopurify.errors import InputError
from geopurify.io import file_fingerprint
from geopurify.lift.multiview import lift_scene
from geopurify.lift.result import load_lifted, save_lifted

log = logging.getLogger(__name__)


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _text_files(path: str | Path) -> list[Path]:
    """A prompt-embedding file (with its .txt prompt list) or a CLIP checkpoint directory."""
    path = Path(path)
    return _dir_files(path) if path.is_dir() else [path, path.with_suffix(".txt")]


def vlm_files(scene, cfg: dict) -> list[Path]:
    """The files the lifted features of `scene` are computed from, on the VLM side, read from the
    config alone (no VLM loaded): the CLIP checkpoint directory; OpenScene's per-point files of this
    scene; the external per-view feature files of this scene's frames; the prompt-embedding file.
    The simulated VLM reads no file (its label images are scene files)."""
    lift = cfg["lift"]
    name, root, text = lift["vlm"], lift.get("vlm_path"), lift.get("text_path")
    files: list[Path] = []
    if name == "clip" and root:
        files += _dir_files(Path(root))
    if name == "openscene" and root:
        from geopurify.lift.openscene import openscene_files

        try:
            files += openscene_files(root, scene.name)
        except InputError:
            pass  # lifting reports the missing files
    if name == "external":
        from geopurify.vlm.external import external_feature_path

        try:
            files += [external_feature_path(scene, i, root or None) for i in range(len(scene.frames))]
        except InputError:
            pass  # no scene directory: lifting reports it
    if name in ("openscene", "external"):
        if text:
            files += _text_files(text)
        elif root:
            from geopurify.vlm.prompts import find_text_file

            try:
                files += _text_files(find_text_file(root))
            except InputError:
                pass  # building the VLM reports it
    return files


def lift_files_fingerprint(scene, cfg: dict) -> str:
    """`file_fingerprint` of every file the lifted features of `scene` depend on."""
    return file_fingerprint(scene_files(scene) + vlm_files(scene, cfg))


# lift keys that change memory / disk use, not results
MEMORY_ONLY = ("chunk_points", "group_mb", "reuse_mb", "cache_max_gb")
SUFFIX = ".lift.pt"


def lift_settings(cfg: dict) -> dict:
    """Every setting the lifted features depend on, read from the config alone (so a cache hit
    needs no VLM loaded): all `lift` keys (backend, checkpoint path, fusion, image size, ...) but
    the memory-only ones, the frame step, and for the simulated VLM its `vlm_sim` knobs and
    label set (it derives its features from the label set's prompts), as for consensus fusion and
    for masks scored with a background prompt (both score the label set's prompts)."""
    lift = {k: v for k, v in cfg["lift"].items() if k not in MEMORY_ONLY}
    simulated = lift["vlm"] == "simulated"
    s = {"lift": lift, "frame_step": cfg["data"]["frame_step"]}
    if lift["fusion"] == "consensus" or simulated or lift.get("background_prompt") is not None:
        s["label_set"] = cfg["data"]["label_set"]
    if simulated:
        s["vlm_sim"] = dict(cfg["vlm_sim"])
    return s


def lift_cache_path(scene, cfg: dict, cache_dir: str | Path) -> Path:
    key = cache_key(
        {"scene": scene_fingerprint(scene), "settings": lift_settings(cfg), "files": lift_files_fingerprint(scene, cfg)}
    )
    return Path(cache_dir) / "lift" / f"{scene.name}.{key}{SUFFIX}"


def cached_lift(scene, cfg: dict, vlm, cache_dir: str | Path, device: str = "cpu"):
    """LiftResult of `scene` (geopurify.lift.multiview.lift_scene), read from the cache or computed and cached.

    `vlm` must be the backend `build_vlm(cfg)` gives (the cache key is read from `cfg`); it may
    also be a zero-argument callable returning it, called only on a cache miss, so that runs
    whose features are all cached never load the VLM. Features come back float32, as stored
    (float16-rounded) even on the computing call.
    """
    max_bytes = cap_bytes("lift.cache_max_gb", cfg["lift"].get("cache_max_gb"))
    path = lift_cache_path(scene, cfg, cache_dir)
    cached = read_cached(path, lambda: load_lifted(path, n_points=scene.n_points), "lift cache")
    if cached is not None:
        return cached
    if callable(vlm) and not hasattr(vlm, "frame_features"):
        vlm = vlm()
    text_emb = None
    if cfg["lift"]["fusion"] == "consensus":
        from geopurify.data.labels import get_label_set
        from geopurify.vlm.text import text_embeddings

        text_emb = text_embeddings(vlm, get_label_set(cfg["data"]["label_set"]), cfg["lift"]["prompt_template"])
    log.info("lifting %s with %s (%s fusion) -> %s", scene.name, vlm.describe(), cfg["lift"]["fusion"], path)
    result = lift_scene(scene, vlm, cfg, text_emb=text_emb, device=device)
    save_lifted(
        path,
        result,
        {"vlm": vlm.name, "simulated": bool(vlm.simulated), "fusion": cfg["lift"]["fusion"], "scene": scene.name},
    )
    result = load_lifted(path, n_points=scene.n_points, dim=vlm.dim)  # float16-rounded, as a later call reads it
    after_write(path, SUFFIX, max_bytes, "lift", scene.name)  # after the read-back: never evicts what we return
    return result

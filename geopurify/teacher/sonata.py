"""The Sonata teacher: the official `facebook/sonata` encoder, frozen, on CPU or GPU without flash-attn.

Sonata (Wu et al., CVPR 2025) is a self-supervised Point Transformer V3. GeoPurify distils from
its per-point features (METHOD.md sections 0 and 3). Model hubs are unreachable here, so the user
downloads the checkpoint once and gives its path (`teacher.ckpt`):

    sonata.pth                       torch.save({"config": {...}, "state_dict": {...}}), as
                                     `sonata.load()` reads it (keys may carry a "module." prefix)
    model.safetensors + config.json  the same weights in the hub-mixin layout

Pipeline of `sonata_features`, following the official demo / GeoPurify's `get_sonata_features`:
1. input transform, Sonata's `transform.default()` (CenterShift(apply_z), GridSample(0.02, mode
   "train", inverse), NormalizeColor, Collect(feat_keys=(coord, color, normal))): centre x/y on the
   bounding-box middle and put the lowest point at z = 0; 2 cm grid sampling keeping one point
   per occupied cell, drawn uniformly among the cell's points (seeded; upstream uses numpy's
   global generator); per-voxel features (coord, colour / 255, normal) = 9 channels. A scene
   without colours or normals gets zeros in their place, as Sonata's releases document for that
   case. `color_scale="reference"` divides the colours by 255 once more, as GeoPurify's code
   does (its loader already scales them to [0, 1]).
2. the encoder (`geopurify.teacher.ptv3`), serialization orders shuffled by a seeded generator.
3. up-casting: from the deepest stage, `up_cast_level` (2) times
   parent.feat = cat(parent.feat, child.feat[inverse]): 192 + 384 + 512 = 1088 channels for the
   official config (Sonata's own head_in_channels); finer stages and the points copy their cell's.
4. L2 normalisation; float32 (N, 1088), row i for scene.xyz[i].

Cost (official config, one CPU thread, float32, no grad): see docs/sonata.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.io import load_torch_file
from geopurify.schema import check_value
from geopurify.teacher.base import Teacher, finish_embedding
from geopurify.teacher.ptv3 import PTv3Encoder, n_parameters, upcast

logger = logging.getLogger(__name__)

GRID_SIZE = 0.02
UP_CAST_LEVEL = 2
IN_CHANNELS = 9  # coord (3) + colour (3) + normal (3)
COLOR_SCALES = ("sonata", "reference")  # colour channels in [0, 1] (Sonata's intent) | [0, 1/255] (GeoPurify's code)
MISSING_NORMALS = ("zero", "pca")  # scenes without mesh normals: zeros (Sonata's documented input) | PCA normals

# The configuration stored in the official sonata.pth (Pointcept configs/sonata/
# pretrain-sonata-v1m1-0-base.py, backbone "PT-v3m2"); used by tests and as documentation.
SONATA_CONFIG = dict(
    in_channels=9,
    order=("z", "z-trans", "hilbert", "hilbert-trans"),
    stride=(2, 2, 2, 2),
    enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(48, 96, 192, 384, 512),
    enc_num_head=(3, 6, 12, 24, 32),
    enc_patch_size=(1024, 1024, 1024, 1024, 1024),
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    drop_path=0.3,
    shuffle_orders=True,
    pre_norm=True,
    enable_rpe=False,
    enable_flash=True,
    upcast_attention=False,
    upcast_softmax=False,
    traceable=True,
    enc_mode=True,
    mask_token=True,
)


# ----------------------------------------------------------------------------- input transform


def centre_shift(xyz: np.ndarray) -> np.ndarray:
    """float32 (N, 3): x, y centred on the bounding-box middle, z shifted so that min z = 0."""
    xyz = np.asarray(xyz, dtype=np.float32)
    lo, hi = xyz.min(0), xyz.max(0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=np.float32)
    return xyz - shift


def grid_sample(coord: np.ndarray, grid_size: float = GRID_SIZE, seed: int = 0):
    """One point per occupied grid cell, as Sonata's GridSample in the mode its inference transform uses.

    Returns (grid int64 (V, 3) >= 0, rep int64 (V,) index of each cell's point, inverse int64
    (N,) cell of each point). A point's cell is floor(coord / grid_size) minus the minimum cell,
    computed in float32 as the official transform does on its float32 coordinates under the numpy
    (1.26) that Sonata and GeoPurify pin. Each cell keeps one of its points, drawn uniformly by a
    generator seeded with `seed`; the draw runs over cells and their points sorted by position,
    so it does not depend on the input order. Cells are numbered in lexicographic (x, y, z) order
    (upstream: hash order; the encoder's output does not depend on it)."""
    c = np.asarray(coord, dtype=np.float32)
    grid = np.floor(c / np.float32(grid_size)).astype(np.int64)
    grid -= grid.min(0)
    dims = grid.max(0) + 1
    key = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0], key))  # by cell, then position (stable for duplicates)
    ks = key[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(ks)))
    rep = order[starts + np.random.default_rng(int(seed)).integers(0, counts)]
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return grid[rep], rep, inverse


def sonata_colors(rgb: np.ndarray, color_scale: str = "sonata") -> np.ndarray:
    """float32 (N, 3) colour channels from 0..255 colours: NormalizeColor's rgb / 255 ("sonata");
    "reference" divides by 255 once more, as GeoPurify's code feeds Sonata [0, 1] colours."""
    if color_scale not in COLOR_SCALES:
        raise ValueError(f"color_scale must be one of {COLOR_SCALES}, got {color_scale!r}")
    color = np.asarray(rgb, dtype=np.float32) / np.float32(255)
    return color / np.float32(255) if color_scale == "reference" else color


def sonata_input(
    xyz: np.ndarray,
    rgb: np.ndarray | None,
    normals: np.ndarray | None,
    grid_size: float = GRID_SIZE,
    color_scale: str = "sonata",
    seed: int = 0,
):
    """Sonata's default transform (module docstring, step 1): (feat float32 (V, 9) = coord,
    colour, normal of each cell's point; grid int64 (V, 3); inverse int64 (N,) voxel of each
    point), as torch tensors. `rgb` / `normals` None (the scene has none): zeros."""
    coord = centre_shift(xyz)
    n = len(coord)
    color = np.zeros((n, 3), np.float32) if rgb is None else sonata_colors(rgb, color_scale)
    normal = np.zeros((n, 3), np.float32) if normals is None else np.asarray(normals, np.float32)
    if color.shape != (n, 3) or normal.shape != (n, 3):
        raise ValueError(f"rgb {color.shape} and normals {normal.shape} must both be ({n}, 3)")
    grid, rep, inverse = grid_sample(coord, grid_size, seed)
    feat = np.concatenate([coord[rep], color[rep], normal[rep]], 1).astype(np.float32)
    return torch.from_numpy(feat), torch.from_numpy(grid), torch.from_numpy(inverse)


def sonata_features(
    model: PTv3Encoder,
    xyz: np.ndarray,
    rgb: np.ndarray | None,
    normals: np.ndarray | None,
    up_cast_level: int = UP_CAST_LEVEL,
    grid_size: float = GRID_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    color_scale: str = "sonata",
) -> torch.Tensor:
    """(N, D) float32 unit per-point features (module docstring, steps 1-4), on `device`.
    `seed` draws the grid sample and shuffles the serialization orders."""
    feat, grid, inverse = sonata_input(xyz, rgb, normals, grid_size, color_scale, seed)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        levels = model(feat.to(device), grid.to(device), generator=gen, progress=progress)
        top, index = upcast(levels, up_cast_level)
        top = F.normalize(top, dim=1)  # every point of a stage-L cell shares the vector
        return top[index[inverse.to(device)]]


# ----------------------------------------------------------------------------- checkpoints


def _fingerprint(path: Path) -> str:
    """Cheap content identity of a large file: size + sha256 of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()[:16]


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(config, state_dict) of an official Sonata checkpoint; "module." prefixes are removed.

    Raises InputError(path, problem) for a missing, unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path,
            "Sonata checkpoint not found (download sonata.pth from "
            "huggingface.co/facebook/sonata and set teacher.ckpt to its path)",
        )
    if path.suffix == ".safetensors":
        cfg_path = path.with_name("config.json")
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
            raise InputError(path, f"not a readable safetensors file ({type(e).__name__}: {_first_line(e)})") from None
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(cfg_path, f"config.json for {path.name} missing or invalid ({_first_line(e)})") from None
        ckpt = {"config": config, "state_dict": state}
    else:
        ckpt = load_torch_file(path, "PyTorch checkpoint")
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("config"), dict)
        or not isinstance(ckpt.get("state_dict"), dict)
    ):
        got = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(path, f"expected a dict with 'config' and 'state_dict' (the sonata.pth format), got {got}")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in ckpt["state_dict"].items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "state_dict holds non-tensor values")
    return dict(ckpt["config"]), state


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def build_encoder(config: dict, path: str | Path | None = None) -> PTv3Encoder:
    """The encoder for an official config dict; InputError (naming `path`) for unsupported ones."""
    try:
        model = PTv3Encoder(config)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(path, f"unsupported Sonata config: {_first_line(e)}") from None
    if model.config["in_channels"] != IN_CHANNELS:
        raise InputError(
            path,
            f"config in_channels={model.config['in_channels']}; the Sonata input "
            f"transform gives {IN_CHANNELS} (coord, colour, normal)",
        )
    return model


def load_sonata(path: str | Path, device: str | torch.device = "cpu") -> PTv3Encoder:
    """The frozen encoder (eval mode, no gradients) from a checkpoint, loaded strictly."""
    config, state = read_checkpoint(path)
    model = build_encoder(config, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise InputError(path, "state_dict does not match its config: " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise InputError(path, f"{len(bad)} parameters have the wrong shape (e.g. {bad[0]})")
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


class SonataTeacher(Teacher):
    """Frozen official Sonata encoder; embed(scene) -> (N, 1088) float32 unit up-cast features."""

    stand_in = False

    def __init__(
        self,
        ckpt: str | Path | None,
        device: str = "cpu",
        up_cast_level: int = UP_CAST_LEVEL,
        grid_size: float = GRID_SIZE,
        seed: int = 0,
        progress: bool = True,
        color_scale: str = "sonata",
        missing_normals: str = "zero",
    ):
        check_value("teacher.color_scale", color_scale)
        check_value("teacher.missing_normals", missing_normals)
        if ckpt is None or str(ckpt) == "":
            raise InputError(
                None,
                "teacher.name is 'sonata' but teacher.ckpt is not set: give the path of the "
                "official facebook/sonata checkpoint (sonata.pth)",
            )
        path = Path(ckpt).expanduser()
        self._model = load_sonata(path, device)
        self._device, self._progress = device, progress
        self.ckpt = str(path)
        self.ckpt_fingerprint = _fingerprint(path)
        self.up_cast_level, self.grid_size, self.seed = int(up_cast_level), float(grid_size), int(seed)
        self.color_scale, self.missing_normals = color_scale, missing_normals
        try:
            self.dim = self._model.upcast_dim(self.up_cast_level)
        except ValueError as e:
            raise InputError(path, str(e)) from None
        self.name = "sonata"
        cfg = self._model.config
        logger.info(
            "sonata: %s, stages %s x %s channels, %.1fM parameters, up-cast %d -> %d-d features, colours %s",
            path,
            cfg["enc_depths"],
            cfg["enc_channels"],
            n_parameters(self._model) / 1e6,
            self.up_cast_level,
            self.dim,
            "in [0, 1/255] (GeoPurify's code)" if color_scale == "reference" else "in [0, 1] (Sonata's)",
        )

    @property
    def model(self) -> PTv3Encoder:
        return self._model

    def input_normals(self, scene: Scene) -> np.ndarray | None:
        """The normals Sonata sees: the scene's own (mesh, ...); for a bare point cloud (PCA
        normals) None, i.e. zeros, unless `missing_normals` is "pca"."""
        if scene.normals_source == "pca" and self.missing_normals == "zero":
            logger.info(
                "sonata: %s has no mesh normals: normal channels are zero (Sonata's documented input "
                "without normals; teacher.missing_normals: pca feeds PCA normals instead)",
                scene.name,
            )
            return None
        return scene.normals

    def embed(self, scene: Scene) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            feat = sonata_features(
                self._model,
                scene.xyz,
                scene.rgb,
                self.input_normals(scene),
                self.up_cast_level,
                self.grid_size,
                self.seed,
                self._device,
                self._progress,
                self.color_scale,
            )
        except ValueError as e:  # e.g. a scene wider than 2**16 grid cells (1.3 km at 2 cm)
            raise InputError(scene.path if scene.path is not None else scene.name, f"sonata: {e}") from None
        out = finish_embedding(feat)
        logger.info(
            "sonata: %s: %d points, %d-d features in %.1f s",
            scene.name,
            scene.n_points,
            self.dim,
            time.perf_counter() - t0,
        )
        return out

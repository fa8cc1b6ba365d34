"""What `geopurify view` shows, without the web page: colourings, prompt heat maps, the T slider,
point picking, per-point top scores and exports (geopurify.viz.viewer wires this to viser).

Every prompt goes through geopurify.purify.query.prompt_steps (one text encoding, one score column
pooled over the kept graph; never a re-lift nor a student forward); its pooled steps are kept, so
moving T re-colours without recomputing. Colourings: RGB, ground truth (when the scene has labels
in the label set's space), raw (argmax cosine of the lifted features), kNN-mean and purified labels
after T steps, and the heat map of the current prompt (values between their 1st and 99th
percentiles mapped onto the heat ramp).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geopurify.purify.query import MAX_STEPS, encode_prompt, prompt_steps, top_scores

log = logging.getLogger(__name__)

RGB, GT, RAW, KNN, PURIFIED, HEAT = "RGB", "ground truth", "raw", "kNN-mean", "purified", "prompt heat map"
_METHOD = {KNN: "knn_mean", PURIFIED: "purified"}
MAX_PROMPTS = 16  # prompts whose pooled steps stay in memory (37 x V floats each); older ones are recomputed


@dataclass
class Colouring:
    """One colouring of the points: colours (N, 3) uint8, what they show, and what explains them:
    `labels` (N,) for class colourings, `values` (N,) with `vmin` / `vmax` for a heat map."""

    mode: str
    title: str
    colors: np.ndarray
    labels: np.ndarray | None = None
    values: np.ndarray | None = None
    vmin: float = 0.0
    vmax: float = 1.0


def slug(text: str, n: int = 40) -> str:
    """A file-name-safe form of a colouring or prompt: 'a place to sleep' -> 'a_place_to_sleep'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:n] or "prompt"


class ViewState:
    """The viewer's state over one QuerySession (`loaded`: geopurify.purify.query.Loaded).
    Thread-safe: web callbacks may arrive on several threads."""

    def __init__(self, session, loaded):
        from geopurify.viz.render import class_colors

        self.session = session
        self.loaded = loaded
        self.scene = loaded.scene
        self.names = list(session.class_names)
        self.palette = class_colors(len(self.names))
        self.steps = session.steps
        self.mode = RGB
        self.prompt: str | None = None
        self.prompts: dict[str, dict] = {}  # text -> {"emb": (C,), "stack": StepStack}
        self.computed: list[dict] = []  # one record per heat map computed (prompt, steps, seconds)
        self.lock = threading.RLock()
        self.gt = None
        scene = self.scene
        if scene.labels is not None and scene.label_space in loaded.label_set.spaces:
            self.gt = loaded.label_set.map(scene.labels, scene.label_space)

    # ------------------------------------------------------------------------------------------
    # colourings

    def modes(self) -> list[str]:
        """The colourings this scene has: GT only with labels, purified only with a student, the
        heat map once a prompt was asked."""
        out = [RGB] + ([GT] if self.gt is not None else []) + [RAW, KNN]
        if self.session.pool.get("purified") is not None:
            out.append(PURIFIED)
        if self.prompt is not None:
            out.append(HEAT)
        return out

    def _labels(self, mode: str) -> np.ndarray:
        if mode == GT:
            return self.gt
        if mode == RAW:
            return self.session.raw_labels
        return self.session.labels(_METHOD[mode], self.steps)

    def colouring(self, mode: str | None = None) -> Colouring:
        """The colours of `mode` (default the current one) at the current T."""
        from geopurify.viz.render import colorize_labels, heat_colors

        mode = mode or self.mode
        with self.lock:
            if mode not in self.modes():
                raise ValueError(f"colouring {mode!r} is not available here (have: {', '.join(self.modes())})")
            if mode == RGB:
                return Colouring(mode, "RGB", np.asarray(self.scene.rgb, np.uint8))
            if mode == HEAT:
                values = self.relevance()
                lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
                title = f'"{self.prompt}": {self._pool_name()} relevance, T = {self.steps}'
                return Colouring(mode, title, heat_colors(values, lo, hi), values=values, vmin=lo, vmax=hi)
            labels = self._labels(mode)
            title = mode if mode in (GT, RAW) else f"{mode} labels, T = {self.steps}"
            return Colouring(mode, title, colorize_labels(labels, len(self.names)), labels=labels)

    def _pool_name(self) -> str:
        return "purified" if self.session.relevance_pool == "purified" else "kNN-mean (no student)"

    def legend(self, colouring: Colouring, max_items: int = 24) -> list[tuple[str, tuple, float]]:
        """(class name, colour, fraction of points) of the classes in a label colouring, most
        frequent first; ignored points (no class) as 'ignored'."""
        if colouring.labels is None:
            return []
        lab = colouring.labels
        ids, counts = np.unique(lab, return_counts=True)
        order = np.argsort(-counts)[:max_items]
        out = []
        for i in order:
            cid = int(ids[i])
            name = self.names[cid] if cid >= 0 else "ignored"
            col = tuple(int(c) for c in self.palette[cid]) if cid >= 0 else (128, 128, 128)
            out.append((name, col, float(counts[i]) / lab.size))
        return out

    # ------------------------------------------------------------------------------------------
    # prompts and T

    def ask(self, text: str) -> Colouring:
        """Heat map of a free-text prompt at the current T; becomes the current colouring."""
        text = text.strip()
        if not text:
            raise ValueError("the prompt is empty")
        with self.lock:
            t0 = time.perf_counter()
            if text not in self.prompts:
                emb = encode_prompt(self.loaded.vlm, text)
                self.prompts[text] = {"emb": emb, "stack": prompt_steps(self.session, emb)}
                kept = [p for p, e in self.prompts.items() if e["stack"] is not None]
                for p in kept[: max(0, len(kept) - MAX_PROMPTS)]:  # forget the oldest pooled steps, keep embeddings
                    self.prompts[p]["stack"] = None
            self.prompt, self.mode = text, HEAT
            col = self.colouring(HEAT)  # recomputes the pooled steps of a forgotten prompt
            dt = time.perf_counter() - t0
            self.computed.append({"prompt": text, "steps": self.steps, "seconds": dt})
            log.info(
                "heat map computed for prompt %r at T = %d: relevance %.3f .. %.3f (1st..99th percentile) in %.2fs",
                text,
                self.steps,
                col.vmin,
                col.vmax,
                dt,
            )
            return col

    def relevance(self) -> np.ndarray:
        """(N,) relevance of the current prompt at the current T."""
        with self.lock:
            if self.prompt is None:
                raise ValueError("no prompt asked yet")
            entry = self.prompts[self.prompt]
            if entry["stack"] is None:
                entry["stack"] = prompt_steps(self.session, entry["emb"])
            return self.session.to_points(entry["stack"][self.steps])

    def set_steps(self, t: int) -> None:
        if not 0 <= int(t) <= MAX_STEPS:
            raise ValueError(f"T must be in 0..{MAX_STEPS}, got {t}")
        with self.lock:
            self.steps = int(t)

    def set_mode(self, mode: str) -> None:
        with self.lock:
            if mode not in self.modes():
                raise ValueError(f"colouring {mode!r} is not available here")
            self.mode = mode

    # ------------------------------------------------------------------------------------------
    # picking

    def pick(
        self, origin, direction, candidates: np.ndarray | None = None, radius: float = 0.02, cone: float = 0.01
    ) -> int | None:
        """The point a click ray hits: among `candidates` (point indices; default all) within
        max(`radius`, `cone` x depth) of the ray, in front of the camera, the nearest one along the
        ray; None when none is that close."""
        o = np.asarray(origin, np.float64)
        d = np.asarray(direction, np.float64)
        d = d / max(np.linalg.norm(d), 1e-12)
        idx = np.arange(self.scene.n_points) if candidates is None else np.asarray(candidates)
        v = self.scene.xyz[idx].astype(np.float64) - o
        t = v @ d
        perp = np.linalg.norm(v - t[:, None] * d, axis=1)
        ok = (t > 0) & (perp <= np.maximum(radius, cone * t))
        if not ok.any():
            return None
        j = np.flatnonzero(ok)
        return int(idx[j[np.argmin(t[j])]])

    def point_report(self, point: int, n: int = 5) -> dict:
        """What a click on a point shows: its position, ground truth, raw label and the top-n
        classes and asked prompts at the current T (pooled feature . unit embedding)."""
        with self.lock:
            prompts = {p: e["emb"] for p, e in self.prompts.items()}
            top = top_scores(self.session, point, self.steps, prompts, n=n)
            gt = None
            if self.gt is not None:
                g = int(self.gt[point])
                gt = self.names[g] if g >= 0 else "ignored"
            return {
                "point": int(point),
                "xyz": [round(float(c), 3) for c in self.scene.xyz[point]],
                "ground_truth": gt,
                "raw": self.names[int(self.session.raw_labels[point])],
                "steps": self.steps,
                "pooling": self._pool_name(),
                **top,
            }

    # ------------------------------------------------------------------------------------------
    # exports

    def export_name(self, colouring: Colouring) -> str:
        parts = [self.scene.name, slug(colouring.mode)]
        if colouring.mode == HEAT:
            parts.append(slug(self.prompt))
        if colouring.mode in (KNN, PURIFIED, HEAT):
            parts.append(f"T{self.steps}")
        return ".".join(parts)

    def export_ply(self, out_dir: str | Path) -> Path:
        """The current colouring as a PLY (colours, plus class labels or a `relevance` scalar)."""
        from geopurify.data.ply import write_ply

        col = self.colouring()
        path = Path(out_dir) / f"{self.export_name(col)}.ply"
        scalars = None if col.values is None else {"relevance": col.values.astype(np.float32)}
        write_ply(path, self.scene.xyz, col.colors, labels=col.labels, scalars=scalars)
        log.info("exported %s", path)
        return path

    def export_png(
        self,
        out_dir: str | Path,
        view: dict | str = "auto",
        size: tuple[int, int] = (960, 720),
        notes: list[str] | None = None,
        hide: np.ndarray | None = None,
    ) -> Path:
        """The current colouring as a PNG from `view` (a camera dict, e.g. the browser's, or "auto"):
        titled, with a class legend or the heat map's colour bar, and the stand-in notes under it.
        `hide`: (N,) bool of points left out (default: the ceiling with the "auto" view, none else)."""
        from geopurify.viz.render import heat_panel, render_points, save_png, side_by_side

        col = self.colouring()
        image = render_points(
            self.scene.xyz, col.colors, None, view=view, size=size, labels=self.gt, names=self.names, hide=hide
        )
        if col.values is not None:
            image = heat_panel(image, col.title, col.vmin, col.vmax, "relevance (1st..99th percentile)")
        else:
            legend = [(name, c) for name, c, _ in self.legend(col)]
            image = side_by_side([image], [col.title], legend=legend)
        if notes:
            image = _with_notes(image, notes)
        path = Path(out_dir) / f"{self.export_name(col)}.png"
        save_png(path, image)
        log.info("exported %s", path)
        return path


def _with_notes(image: np.ndarray, notes: list[str], pad: int = 8) -> np.ndarray:
    """The picture with one line of red text per note below it (stand-ins named on every output)."""
    from PIL import Image, ImageDraw

    from geopurify.viz.render import _font

    font = _font(12)
    line_h = 16
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + pad + line_h * len(notes)), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(image, np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, note in enumerate(notes):
        draw.text((pad, image.shape[0] + pad // 2 + i * line_h), note, fill=(180, 0, 0), font=font)
    return np.asarray(canvas, np.uint8).copy()

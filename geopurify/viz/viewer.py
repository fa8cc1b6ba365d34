"""`geopurify view`'s web page: a viser server (the maintained web 3D viewer nerfstudio uses; it
streams point clouds and GUI controls to any browser over a websocket, no GPU on the server).

The page shows the scene's point cloud and a panel with: the offline stand-ins in use (red banner),
a colouring menu (RGB, ground truth, raw, kNN-mean, purified, prompt heat map), a prompt box whose
text becomes a heat map with a colour bar, a slider for the pooling steps T (0..36, live), the class
legend, what a clicked point scores (top-5 classes and prompts), and PLY / PNG export of the current
colouring. All state and computation lives in geopurify.viz.view_state.ViewState; this module only
wires it to the page. Scenes larger than `max_display` points are subsampled for display only
(said on the page); everything is computed on all points.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import math
from pathlib import Path

import numpy as np

from geopurify.purify.query import MAX_STEPS
from geopurify.viz.view_state import HEAT, ViewState

log = logging.getLogger(__name__)

PROMPT_LABEL = "Prompt"  # the browser test finds the text box by this label
ASK_LABEL = "Show heat map"


def point_spacing(xyz: np.ndarray, n: int = 5000, seed: int = 0) -> float:
    """Median distance from a random sample of points to their nearest other point (metres)."""
    from geopurify.ops.knn import PointTree

    rng = np.random.default_rng(seed)
    sample = xyz[rng.choice(len(xyz), min(n, len(xyz)), replace=False)]
    d, _ = PointTree(xyz).query(sample, k=2)
    return float(np.median(d[:, 1])) if len(xyz) > 1 else 0.02


def _swatch(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    return (
        f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b});'
        'border:1px solid #444;margin-right:0.35em;vertical-align:middle"></span>'
    )


def legend_html(state: ViewState, colouring) -> str:
    """The legend under the menu: class swatches with point shares, or the heat map's colour bar."""
    from geopurify.viz.render import heat_colors

    title = f"<b>{html.escape(colouring.title)}</b>"
    if colouring.values is not None:
        stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in heat_colors(np.linspace(0, 1, 11)))
        lo, hi = colouring.vmin, colouring.vmax
        return (
            f'<div style="font-size:0.8em">{title}'
            f'<div style="height:0.9em;margin-top:0.3em;border:1px solid #444;'
            f'background:linear-gradient(to right, {stops})"></div>'
            '<div style="display:flex;justify-content:space-between">'
            f"<span>{lo:.3g}</span><span>{(lo + hi) / 2:.3g}</span><span>{hi:.3g}</span></div>"
            '<div style="color:#666">purified feature &middot; unit prompt embedding '
            "(1st..99th percentile)</div></div>"
        )
    rows = "".join(
        f'<div>{_swatch(c)}{html.escape(name)} <span style="color:#666">{100 * f:.1f}%</span></div>'
        for name, c, f in state.legend(colouring)
    )
    return f'<div style="font-size:0.8em">{title}{rows}</div>'


def report_markdown(rep: dict) -> str:
    """A clicked point's scores as markdown."""
    head = f"**point {rep['point']}** at {rep['xyz']}"
    if rep["ground_truth"] is not None:
        head += f"  \nground truth **{rep['ground_truth']}**, raw {rep['raw']}"
    else:
        head += f"  \nraw {rep['raw']}"
    parts = [
        head,
        f"top classes ({rep['pooling']}, T = {rep['steps']}):",
        "\n".join(f"- {name}: {s:.3f}" for name, s in rep["classes"]),
    ]
    if rep["prompts"]:
        parts += ["top prompts:", "\n".join(f'- "{p}": {s:.3f}' for p, s in rep["prompts"])]
    return "\n\n".join(parts)


class Viewer:
    """The running web app over one ViewState; `stop()` ends it."""

    def __init__(
        self,
        state: ViewState,
        host: str = "127.0.0.1",
        port: int = 8080,
        out_dir: str | Path = "out/view",
        max_display: int = 1_000_000,
        seed: int = 0,
    ):
        import viser

        from geopurify.viz.render import auto_view, ceiling_mask

        self.state = state
        self.out_dir = Path(out_dir)
        scene = state.scene
        n = scene.n_points
        if n > max_display:
            self.sample = np.sort(np.random.default_rng(seed).choice(n, max_display, replace=False))
        else:
            self.sample = np.arange(n)
        self.ceiling = ceiling_mask(scene.xyz, state.gt, state.names)
        self.display = self.sample[~self.ceiling[self.sample]]
        self.point_size = float(np.clip(point_spacing(scene.xyz), 0.005, 0.05))
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own banner; the CLI prints the URL
            self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.gui.configure_theme(show_share_button=False, control_width="large")  # local only: no tunnel
        self.server.scene.set_up_direction("+z")
        view = auto_view(scene.xyz[~self.ceiling], fov=50.0)
        cam = self.server.initial_camera
        cam.position, cam.look_at, cam.fov = view["eye"], view["target"], math.radians(50.0)
        self.cloud = None
        self._build_gui()
        self.server.scene.on_click()(self._on_click)
        self.refresh()
        log.info(
            "viewer for %s on http://%s:%d (%d points%s)",
            scene.name,
            host,
            self.port,
            n,
            f", {len(self.sample)} shown" if len(self.sample) < n else "",
        )

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    # ------------------------------------------------------------------------------------------

    def _notes(self) -> list[str]:
        s = self.state
        notes = list(s.loaded.stand_ins)
        if s.session.pool.get("purified") is None:
            notes.append("no student checkpoint (--ckpt): purified labels are off; prompts pool over kNN-mean weights")
        if len(self.sample) < s.scene.n_points:
            notes.append(
                f"display shows {len(self.sample):,} of {s.scene.n_points:,} points (random subsample); "
                "all points are computed and exported"
            )
        return notes

    def _build_gui(self) -> None:
        gui, s = self.server.gui, self.state
        head = (
            f'<div style="font-size:0.85em"><b>GeoPurify</b> &middot; {html.escape(s.scene.name)} &middot; '
            f"{s.scene.n_points:,} points, {s.session.n_voxels:,} voxels &middot; "
            f"{html.escape(s.loaded.label_set.name)} &middot; VLM {html.escape(s.loaded.vlm.describe())}</div>"
        )
        gui.add_html(head)
        notes = self._notes()
        if notes:
            gui.add_html(
                '<div style="font-size:0.8em;color:#b00000"><b>Stand-ins and limits:</b><ul style='
                '"margin:0.2em 0 0 1em;padding:0">'
                + "".join(f"<li>{html.escape(x)}</li>" for x in notes)
                + "</ul></div>"
            )
        self.mode_menu = gui.add_dropdown("Colouring", s.modes(), initial_value=s.mode)
        self.prompt_box = gui.add_text(PROMPT_LABEL, "", hint="any free text, e.g. a place to sleep")
        self.ask_button = gui.add_button(ASK_LABEL)
        self.steps_slider = gui.add_slider("Pooling steps T", min=0, max=MAX_STEPS, step=1, initial_value=s.steps)
        self.legend = gui.add_html("")
        self.status = gui.add_markdown("")
        self.point_info = gui.add_markdown("*Click a point to see its top-5 classes and prompts.*")
        self.export_ply_button = gui.add_button("Export PLY")
        self.export_png_button = gui.add_button("Export PNG")
        self.size_slider = gui.add_slider(
            "Point size (cm)", min=0.5, max=5.0, step=0.25, initial_value=round(100 * self.point_size * 4) / 4
        )
        self.ceiling_box = gui.add_checkbox(
            "Hide ceiling", True, hint="hide the top 15% of heights (or the ceiling class) to see into the room"
        )

        self.mode_menu.on_update(lambda _: self._guard(self._set_mode))
        self.ask_button.on_click(lambda _: self._guard(self._ask))
        self.steps_slider.on_update(lambda _: self._guard(self._set_steps))
        self.export_ply_button.on_click(lambda ev: self._guard(self._export, "ply", ev.client))
        self.export_png_button.on_click(lambda ev: self._guard(self._export, "png", ev.client))
        self.size_slider.on_update(lambda _: setattr(self.cloud, "point_size", self.size_slider.value / 100))
        self.ceiling_box.on_update(lambda _: self._guard(self._set_ceiling))

    def _guard(self, fn, *args) -> None:
        """Run a GUI action; a problem becomes a line on the page and in the log, not a dead server."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - shown to the user, the server keeps running
            log.exception("viewer action failed")
            self.status.content = f"**error:** {html.escape(str(e))}"

    def refresh(self) -> None:
        """Re-colour the cloud and the legend from the state (the cloud is re-sent when the
        displayed points changed)."""
        col = self.state.colouring()
        colors = np.ascontiguousarray(col.colors[self.display])
        if self.cloud is None or len(self.cloud.points) != len(self.display):
            self.cloud = self.server.scene.add_point_cloud(
                "/scene",
                np.asarray(self.state.scene.xyz[self.display], np.float32),
                colors,
                point_size=self.size_slider.value / 100,
                point_shape="square",
                point_shading="flat",
                precision="float32",
            )
        else:
            self.cloud.colors = colors
        self.legend.content = legend_html(self.state, col)

    def _set_ceiling(self) -> None:
        hide = self.ceiling[self.sample] if self.ceiling_box.value else np.zeros(len(self.sample), bool)
        self.display = self.sample[~hide]
        self.cloud = None
        self.refresh()

    def _set_mode(self) -> None:
        if self.mode_menu.value != self.state.mode:
            self.state.set_mode(self.mode_menu.value)
            self.refresh()

    def _ask(self) -> None:
        text = self.prompt_box.value.strip()
        if not text:
            self.status.content = "type a prompt first"
            return
        self.status.content = f'computing "{html.escape(text)}" ...'
        self.state.ask(text)
        self.mode_menu.options = self.state.modes()
        self.mode_menu.value = HEAT
        self.refresh()
        self.status.content = f'heat map of "{html.escape(text)}" ({self.state.computed[-1]["seconds"]:.2f} s)'

    def _set_steps(self) -> None:
        self.state.set_steps(int(self.steps_slider.value))
        self.refresh()

    def _on_click(self, event) -> None:
        def pick():
            p = self.state.pick(event.ray_origin, event.ray_direction, self.display, radius=1.5 * self.cloud.point_size)
            if p is None:
                self.point_info.content = "*No point under the click.*"
                return
            self.server.scene.add_icosphere(
                "/picked",
                radius=max(0.05, 2 * self.cloud.point_size),
                color=(255, 0, 255),
                position=tuple(float(c) for c in self.state.scene.xyz[p]),
            )
            self.point_info.content = report_markdown(self.state.point_report(p))

        self._guard(pick)

    def _export(self, kind: str, client) -> None:
        if kind == "ply":
            path = self.state.export_ply(self.out_dir)
        else:
            view, size = "auto", (960, 720)
            if client is not None:
                c = client.camera
                view = {
                    "eye": list(c.position),
                    "target": list(c.look_at),
                    "up": list(c.up_direction),
                    "fov": math.degrees(c.fov),
                }
                size = (960, max(240, int(round(960 / max(c.aspect, 0.2)))))
            hide = self.ceiling if self.ceiling_box.value else np.zeros_like(self.ceiling)  # as on the page
            path = self.state.export_png(
                self.out_dir, view=view, size=size, notes=self.state.loaded.stand_ins, hide=hide
            )
        self.status.content = f"wrote `{path}`"
        if client is not None:
            client.send_file_download(path.name, path.read_bytes())

    def stop(self) -> None:
        self.server.stop()

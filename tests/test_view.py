"""`geopurify view`: the viewer's state on a procedural room with a random student (prompts reuse the
one load, colourings, T, picking, exports, features-only mode), its web page wired to that state,
and the page in a real browser (headless Debian chromium driven by Playwright): a typed prompt makes
the server compute that prompt's heat map and changes the canvas pixels."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geopurify.config import load_config
from geopurify.data.ply import read_ply
from geopurify.purify.query import load_session, prompt_relevance

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """A small procedural room (6 frames) and a checkpoint of a random tiny student whose stored
    config points the lift cache at this directory."""
    from geopurify.standins.rooms import make_room, write_room
    from geopurify.student.checkpoint import save_checkpoint
    from geopurify.student.network import build_student

    tmp = tmp_path_factory.mktemp("view")
    write_room(make_room(3, n_points=8000, n_frames=6, image_hw=(120, 160), name="room"), tmp / "room")
    cfg = load_config(
        None,
        {
            "lift": {"image_size": [160, 120]},
            "data": {"cache_dir": str(tmp / "cache"), "frame_step": 1},
            "student": {"width": 8, "blocks": 1, "out_dim": 16},
        },
    )
    C = 384  # the simulated VLM's text space (MiniLM)
    torch.manual_seed(0)
    model = build_student(cfg["student"], C + 6)
    meta = {
        "teacher": {"name": "geometric", "stand_in": True},
        "vlm": {"name": "simulated", "simulated": True, "dim": C},
        "student": {k: cfg["student"][k] for k in ("preset", "width", "blocks", "out_dim", "voxel_size")},
        "epoch": 0,
    }
    save_checkpoint(
        tmp / "student.pth",
        {"model": model.state_dict(), "epoch": 0, "step": 0, "config": cfg, "in_channels": C + 6, "meta": meta},
    )
    return tmp


@pytest.fixture(scope="module")
def state(room):
    from geopurify.viz.view_state import ViewState

    session, loaded = load_session(room / "room", ckpt=room / "student.pth")
    return ViewState(session, loaded)


def test_prompts_reuse_the_one_load(room, monkeypatch):
    """Asking prompts, moving T and clicking never re-lifts nor re-runs the student."""
    import geopurify.lift.cache as lift_mod  # the module whose lift_scene a load calls
    from geopurify.student.network import AffinityNet
    from geopurify.viz.view_state import ViewState

    calls = {"lift": 0, "student": 0}
    real_lift, real_forward = lift_mod.lift_scene, AffinityNet.forward

    def counting_lift(*a, **k):
        calls["lift"] += 1
        return real_lift(*a, **k)

    def counting_forward(self, *a, **k):
        calls["student"] += 1
        return real_forward(self, *a, **k)

    monkeypatch.setattr(lift_mod, "lift_scene", counting_lift)
    monkeypatch.setattr(AffinityNet, "forward", counting_forward)
    session, loaded = load_session(room / "room", ckpt=room / "student.pth", cache_dir=room / "fresh_cache")
    assert calls == {"lift": 1, "student": 1}
    st = ViewState(session, loaded)
    maps = [st.ask(p).values for p in ("a place to sleep", "a soft place to sit", "a place to sleep")]
    st.set_steps(0)
    st.colouring()
    st.set_steps(36)
    st.colouring("purified")
    st.point_report(17)
    assert calls == {"lift": 1, "student": 1}
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])  # asked again: the kept steps, not a new computation
    assert [c["prompt"] for c in st.computed] == ["a place to sleep", "a soft place to sit", "a place to sleep"]


def test_heat_map_is_the_shared_prompt_function(state):
    emb = state.loaded.vlm.encode_text(["a bed"])[0]
    state.set_steps(7)
    col = state.ask("a bed")
    np.testing.assert_array_equal(col.values, prompt_relevance(state.session, emb, 7))
    assert col.values.shape == (state.scene.n_points,) and col.colors.dtype == np.uint8
    assert col.vmin < col.vmax and "T = 7" in col.title
    state.set_steps(0)  # the slider: other values, same prompt
    assert not np.allclose(state.colouring().values, col.values)
    with pytest.raises(ValueError, match="0..36"):
        state.set_steps(37)


def test_old_prompts_forget_their_steps_but_come_back_equal(state, monkeypatch):
    import geopurify.viz.view_state as vs

    monkeypatch.setattr(vs, "MAX_PROMPTS", 2)
    state.set_steps(5)
    first = state.ask("a lamp").values
    state.ask("a door")
    state.ask("a rug")
    assert state.prompts["a lamp"]["stack"] is None and state.prompts["a rug"]["stack"] is not None
    np.testing.assert_array_equal(state.ask("a lamp").values, first)


def test_colourings_legend_and_stand_ins(state):
    assert state.modes()[:5] == ["RGB", "ground truth", "raw", "kNN-mean", "purified"]
    state.set_steps(18)
    for mode in ("ground truth", "raw", "kNN-mean", "purified"):
        col = state.colouring(mode)
        assert col.colors.shape == (state.scene.n_points, 3) and col.labels.shape == (state.scene.n_points,)
        legend = state.legend(col)  # every class shown (fewer than 24 here), most frequent first
        assert abs(sum(f for *_, f in legend) - 1) < 1e-6
        assert [f for *_, f in legend] == sorted((f for *_, f in legend), reverse=True)
        assert {name for name, *_ in legend} == {state.names[i] if i >= 0 else "ignored" for i in np.unique(col.labels)}
    pool = state.session.pool
    assert (pool["purified"].tocsr() != pool["knn_mean"].tocsr()).nnz > 0  # the student's weights, not uniform ones
    notes = " ".join(state.loaded.stand_ins)
    assert "SIMULATED VLM" in notes and "not Sonata" in notes and "procedural room" in notes


def test_pick_returns_the_nearest_point_on_the_ray(state):
    xyz = state.scene.xyz
    target = int(np.argmax(xyz[:, 2]))  # the highest point: a ray straight down hits it first
    origin = xyz[target] + np.array([0.0, 0.0, 5.0])
    assert state.pick(origin, (0, 0, -1), radius=0.01) == target
    assert state.pick(origin + np.array([50.0, 0, 0]), (0, 0, -1)) is None  # off the scene
    rep = state.point_report(target)
    assert len(rep["classes"]) == 5 and rep["prompts"] and rep["ground_truth"] is not None


def test_exports(state, tmp_path):
    state.ask("a place to sleep")
    ply = read_ply(state.export_ply(tmp_path))
    np.testing.assert_allclose(ply["relevance"], state.relevance(), rtol=1e-6)
    png = state.export_png(tmp_path, notes=state.loaded.stand_ins)
    assert png.name.startswith("room.prompt_heat_map.a_place_to_sleep.T") and png.stat().st_size > 10_000
    state.set_mode("purified")
    ply = read_ply(state.export_ply(tmp_path))
    np.testing.assert_array_equal(ply["labels"], state.colouring().labels)


def test_features_only_has_no_purified_colouring(room, state):
    from geopurify.lift.cache import lift_cache_path
    from geopurify.viz.view_state import ViewState

    lift_file = lift_cache_path(state.scene, state.loaded.cfg, room / "cache")
    assert lift_file.is_file()
    session, loaded = load_session(room / "room", features=lift_file, config=None, cache_dir=None)
    st = ViewState(session, loaded)
    assert "purified" not in st.modes() and "kNN-mean" in st.modes()
    assert st.ask("a place to sleep").title.startswith('"a place to sleep": kNN-mean (no student)')


def test_page_is_wired_to_the_state(state, tmp_path):
    """The viser page without a browser: its controls drive the state and re-colour the cloud."""
    from geopurify.viz.viewer import Viewer

    viewer = Viewer(state, port=free_port(), out_dir=tmp_path)
    try:
        viewer.prompt_box.value = "a window"
        viewer._ask()
        assert state.prompt == "a window" and viewer.mode_menu.value == "prompt heat map"
        np.testing.assert_array_equal(viewer.cloud.colors, state.colouring().colors[viewer.display])
        viewer.steps_slider.value = 3
        viewer._set_steps()
        np.testing.assert_array_equal(viewer.cloud.colors, state.colouring().colors[viewer.display])
        assert "T = 3" in viewer.legend.content
        png = tmp_path / "room.prompt_heat_map.a_window.T3.png"
        viewer._export("png", None)
        with_ceiling_hidden = png.read_bytes()
        viewer.ceiling_box.value = False
        viewer._set_ceiling()
        assert len(viewer.display) == state.scene.n_points
        viewer._export("png", None)
        assert png.read_bytes() != with_ceiling_hidden  # the picture shows what the page shows
        viewer._export("ply", None)
        assert list(tmp_path.glob("room.prompt_heat_map.a_window.T3.ply"))
    finally:
        viewer.stop()


def test_view_bad_input_is_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geopurify",
            "view",
            "--scene",
            str(tmp_path / "missing"),
            "--features",
            str(tmp_path / "x.lift.pt"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "missing" in r.stderr


# ----------------------------------------------------------------------------------------------
# in a real browser


def _launch_browser(p):
    """A headless chromium, or pytest.skip saying why none can start."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser: {CHROMIUM} not installed (Debian package 'chromium'; .ci/run installs it)")
    try:
        return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
    except Exception as e:  # noqa: BLE001 - any launch failure means no browser here
        pytest.skip(f"chromium cannot start here: {str(e).splitlines()[0]}")


def _wait_for(path: Path, pattern: str, proc, timeout: float) -> re.Match:
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"viewer exited with {proc.returncode}: {path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} within {timeout} s: {path.read_text()[-3000:]}")


def _canvas_pixels(page) -> np.ndarray:
    """The 3D canvas as (H, W, 3) uint8, left of the control panel (which changes on its own)."""
    import io

    from PIL import Image

    canvas = page.locator("canvas").first
    img = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))
    return img[:, : int(img.shape[1] * 0.6)]


@pytest.mark.slow
def test_view_in_a_real_browser(room, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    port = free_port()
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "geopurify",
        "view",
        "--scene",
        str(room / "room"),
        "--ckpt",
        str(room / "student.pth"),
        "--port",
        str(port),
        "--out",
        str(tmp_path / "out"),
    ]
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(cmd, env=ENV, stdout=fo, stderr=fe, cwd=REPO)
    try:
        _wait_for(log_out, rf"open http://127\.0\.0\.1:{port}", proc, 240)
        with sync_api.sync_playwright() as p:
            browser = _launch_browser(p)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("canvas", timeout=60_000)
            page.get_by_text("Stand-ins and limits").wait_for(timeout=60_000)
            time.sleep(3)  # first frames of the point cloud
            before = _canvas_pixels(page)
            box = page.locator(
                "xpath=//label[text()='Prompt']/ancestor::div[contains(@class,'mantine-Flex-root')][1]//input"
            )
            box.fill("a place to sleep")
            page.get_by_role("button", name="Show heat map").click()
            _wait_for(log_err, r"heat map computed for prompt 'a place to sleep' at T = 18", proc, 60)
            changed = 0.0
            for _ in range(40):  # the new colours reach the canvas a few frames later
                time.sleep(0.5)
                after = _canvas_pixels(page)
                changed = float((np.abs(after.astype(int) - before.astype(int)).max(-1) > 40).mean())
                if changed > 0.05:
                    break
            shot = tmp_path / "view_after_prompt.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            assert changed > 0.05, f"only {100 * changed:.1f}% of the canvas pixels changed after the prompt"
            # a click in the middle of the room (the initial view looks at its centre) lists top scores
            canvas = page.locator("canvas").first.bounding_box()
            page.mouse.click(canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
            page.get_by_text("top classes (purified, T = 18)").wait_for(timeout=60_000)
            assert page.get_by_text('"a place to sleep":').count() >= 1  # the prompt asked so far, with its score
            page.get_by_role("button", name="Export PNG").click()  # from the browser's camera
            png = tmp_path / "out" / "room.prompt_heat_map.a_place_to_sleep.T18.png"
            t0 = time.time()
            while not png.is_file() and time.time() - t0 < 60:
                time.sleep(0.5)
            assert png.is_file()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_prints_a_view_command_the_cli_accepts():
    import shlex

    from geopurify.cli import build_parser
    from geopurify.cli.demo import view_command

    cmd = shlex.split(view_command(Path("out/demo/data/synth 0004"), Path("out/demo/model/geopurify.pth")))
    args = build_parser().parse_args(cmd[cmd.index("view") :])
    assert args.command == "view" and args.scene == Path("out/demo/data/synth 0004")
    assert args.ckpt == Path("out/demo/model/geopurify.pth") and args.port == 8080

"""`geopurify view`: explore a scene in the browser and ask it anything.

    geopurify view --scene DIR [--ckpt FILE] [--features FILE.lift.pt] [--port 8080]

Loads the scene once (lifted features from --features or the lift cache, one student forward, kNN
graph, pooling weights), then serves a web page (geopurify.viz.viewer) until Ctrl-C. Each prompt
typed on the page costs one text encoding and one pooled score column (geopurify.purify.query).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from geopurify.cli.options import add_device, add_set, device_of

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("view", help="interactive browser viewer: colourings, free-text heat maps, clicks, export")
    p.add_argument("--scene", required=True, type=Path, help="scene directory")
    p.add_argument(
        "--ckpt", type=Path, default=None, help="student checkpoint (geopurify.pth); without it no purified labels"
    )
    p.add_argument(
        "--features",
        type=Path,
        default=None,
        help="lifted features (.lift.pt) to use instead of lifting through the cache",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--vlm", default=None, help="VLM backend (overrides lift.vlm)")
    p.add_argument("--vlm-path", default=None, help="checkpoint for --vlm (overrides lift.vlm_path)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="lifted-feature cache (default: the config's data.cache_dir, else OUT/cache)",
    )
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--out", type=Path, default=Path("out/view"), help="directory for exported PLY / PNG files")
    p.add_argument(
        "--max-display-points",
        type=int,
        default=1_000_000,
        help="show a random subsample above this many points (everything is still computed)",
    )
    add_device(p)
    add_set(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from geopurify.errors import InputError
    from geopurify.purify.query import load_session
    from geopurify.viz.view_state import ViewState
    from geopurify.viz.viewer import Viewer

    if not 0 < args.port < 65536:
        raise InputError(None, f"--port must be in 1..65535, got {args.port}")
    if args.max_display_points < 1:
        raise InputError(None, f"--max-display-points must be >= 1, got {args.max_display_points}")
    session, loaded = load_session(
        args.scene,
        ckpt=args.ckpt,
        features=args.features,
        config=args.config,
        vlm=args.vlm,
        vlm_path=args.vlm_path,
        sets=args.set,
        cache_dir=args.cache_dir,
        fallback_cache_dir=args.out / "cache",
        device=device_of(args),
    )
    try:
        viewer = Viewer(
            ViewState(session, loaded),
            host=args.host,
            port=args.port,
            out_dir=args.out,
            max_display=args.max_display_points,
        )
    except OSError as e:  # port taken, interface missing
        raise InputError(None, f"cannot serve on {args.host}:{args.port} ({e.strerror or e})") from None
    for line in loaded.stand_ins:
        print(f"note: {line}")
    print(
        f"GeoPurify viewer for {loaded.scene.name}: open http://{args.host}:{viewer.port} in a browser "
        "(Ctrl-C to stop)",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0

"""Fixtures of the procedural rooms (offline stand-in), built from primitives like the furniture
(geopurify.standins.rooms.furniture): kitchen run and refrigerator, bathroom pieces, the door,
windows with curtains, pictures; in the same local frame (back against a wall at y = 0, facing +y).
"""

from __future__ import annotations

import numpy as np

from geopurify.standins.rooms.primitives import (
    BATHTUB,
    CABINET,
    CERAMIC,
    COUNTER,
    CURTAIN,
    DOOR,
    FABRIC,
    METAL,
    MIRROR,
    PAINT,
    PICTURE,
    REFRIGERATOR,
    SHOWER_CURTAIN,
    SINK,
    TOILET,
    VIVID,
    WINDOW,
    WOOD,
    _box,
    _cyl,
    _jitter,
    _obj,
)


def _kitchen_group(rng, max_w: float) -> list[dict]:
    """Counter run: base cabinets under a counter top with a sink, optional wall cabinets above."""
    w = rng.uniform(1.6, max(1.7, min(3.2, max_w)))
    body = _jitter(rng, WOOD + PAINT)
    top = _jitter(rng, [(0.2, 0.2, 0.22), (0.85, 0.84, 0.8), (0.5, 0.45, 0.4), (0.35, 0.3, 0.28)])
    handle = _jitter(rng, METAL)
    n_doors = max(2, int(w / 0.5))
    base = [_box((-w / 2, 0, 0.1), (w / 2, 0.58, 0.86), body), _box((-w / 2, 0, 0), (w / 2, 0.52, 0.1), body)]
    xh = -w / 2 + (np.arange(n_doors) + 0.5) * w / n_doors
    base += [_box((x - 0.05, 0.58, 0.74), (x + 0.05, 0.6, 0.76), handle) for x in xh]
    objs = [
        _obj(CABINET, "kitchen cabinets", base),
        _obj(COUNTER, "kitchen counter", [_box((-w / 2, 0, 0.86), (w / 2, 0.62, 0.9), top)]),
    ]
    xs = rng.uniform(-w / 2 + 0.4, w / 2 - 0.4)
    steel = _jitter(rng, METAL)
    objs.append(
        _obj(
            SINK,
            "sink",
            [
                _box((xs - 0.3, 0.12, 0.9), (xs + 0.3, 0.52, 0.94), steel),
                _box((xs - 0.25, 0.16, 0.94), (xs + 0.25, 0.48, 0.945), _jitter(rng, METAL)),
                _cyl(xs, 0.07, 0.02, 0.9, 1.18, steel),
                _box((xs - 0.015, 0.07, 1.14), (xs + 0.015, 0.22, 1.17), steel),
            ],
        )
    )
    if rng.random() < 0.7:
        objs.append(
            _obj(CABINET, "kitchen cabinets", [_box((-w / 2, 0, 1.45), (w / 2, 0.35, 2.1), _jitter(rng, [body], 0.03))])
        )
    return objs


def _refrigerator(rng) -> dict:
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.65, 0.75), rng.uniform(1.6, 1.9)
    col = _jitter(rng, [(0.92, 0.92, 0.92), (0.75, 0.76, 0.78), (0.2, 0.2, 0.22)])
    hd = _jitter(rng, METAL)
    split = h * rng.uniform(0.3, 0.4)
    return _obj(
        REFRIGERATOR,
        "refrigerator",
        [
            _box((-w / 2, 0, 0), (w / 2, d, h), col),
            _box((w / 2 - 0.09, d, split - 0.35), (w / 2 - 0.06, d + 0.04, split - 0.08), hd),
            _box((w / 2 - 0.09, d, split + 0.08), (w / 2 - 0.06, d + 0.04, split + 0.5), hd),
        ],
    )


def _toilet(rng) -> dict:
    c = _jitter(rng, CERAMIC, 0.02)
    return _obj(
        TOILET,
        "toilet",
        [
            _box((-0.2, 0, 0.35), (0.2, 0.2, 0.78), c),
            _box((-0.21, 0, 0.78), (0.21, 0.21, 0.8), c),
            _cyl(0, 0.44, 0.12, 0.0, 0.25, c),
            _cyl(0, 0.44, 0.2, 0.25, 0.39, c),
            _cyl(0, 0.44, 0.21, 0.39, 0.42, _jitter(rng, CERAMIC + PAINT[:2], 0.02)),
        ],
    )


def _vanity_group(rng) -> list[dict]:
    c = _jitter(rng, CERAMIC, 0.02)
    steel = _jitter(rng, METAL)
    if rng.random() < 0.5:  # pedestal sink
        objs = [
            _obj(
                SINK,
                "sink",
                [
                    _cyl(0, 0.22, 0.09, 0, 0.72, c),
                    _box((-0.28, 0, 0.72), (0.28, 0.46, 0.86), c),
                    _cyl(0, 0.06, 0.015, 0.86, 1.0, steel),
                ],
            )
        ]
        top = 0.86
    else:  # sink on a vanity cabinet
        w = rng.uniform(0.6, 1.0)
        objs = [
            _obj(CABINET, "bathroom vanity", [_box((-w / 2, 0, 0), (w / 2, 0.5, 0.8), _jitter(rng, WOOD + PAINT))]),
            _obj(
                SINK, "sink", [_box((-0.25, 0.08, 0.8), (0.25, 0.45, 0.88), c), _cyl(0, 0.05, 0.015, 0.8, 0.98, steel)]
            ),
        ]
        top = 0.88
    if rng.random() < 0.8:
        objs.append(
            _obj(
                MIRROR,
                "mirror",
                [_box((-0.3, 0, top + 0.25), (0.3, 0.02, top + 0.95), _jitter(rng, [(0.7, 0.75, 0.78)], 0.03))],
            )
        )
    return objs


def _bathtub_group(rng, H: float) -> list[dict]:
    w, d, h = rng.uniform(1.5, 1.7), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    c = _jitter(rng, CERAMIC, 0.02)
    t = 0.08
    objs = [
        _obj(
            BATHTUB,
            "bathtub",
            [
                _box((-w / 2, 0, 0), (w / 2, d, 0.1), c),
                _box((-w / 2, 0, 0.1), (w / 2, t, h), c),
                _box((-w / 2, d - t, 0.1), (w / 2, d, h), c),
                _box((-w / 2, t, 0.1), (-w / 2 + t, d - t, h), c),
                _box((w / 2 - t, t, 0.1), (w / 2, d - t, h), c),
            ],
        )
    ]
    if rng.random() < 0.75:
        top = min(2.0, H - 0.15)
        span = w * rng.uniform(0.35, 1.0)
        col = _jitter(rng, PAINT[:3] + VIVID)
        objs.append(
            _obj(
                SHOWER_CURTAIN,
                "shower curtain",
                [
                    _box((-w / 2, d - 0.05, h + 0.03), (-w / 2 + span, d - 0.03, top - 0.03), col),
                    _box((-w / 2, d - 0.05, top - 0.03), (w / 2, d - 0.03, top), _jitter(rng, METAL)),
                ],
            )
        )
    return objs


def _door(rng) -> tuple[list[dict], tuple]:
    """Door panel, casing and knob; plus a keep-out box in front (its swing), local frame."""
    w, h = rng.uniform(0.8, 0.95), rng.uniform(2.0, 2.1)
    panel = _jitter(rng, WOOD + PAINT)
    casing = _jitter(rng, PAINT[:3] + WOOD)
    c = 0.07
    parts = [
        _box((-w / 2, 0, 0), (w / 2, 0.035, h), panel),
        _box((-w / 2 - c, 0, 0), (-w / 2, 0.02, h + c), casing),
        _box((w / 2, 0, 0), (w / 2 + c, 0.02, h + c), casing),
        _box((-w / 2, 0, h), (w / 2, 0.02, h + c), casing),
        _box((w / 2 - 0.11, 0.035, 0.95), (w / 2 - 0.07, 0.09, 0.99), _jitter(rng, METAL)),
    ]
    return [_obj(DOOR, "door", parts)], ((-w / 2 - 0.1, 0, 0), (w / 2 + 0.1, w + 0.1, h))


def _window_group(rng, H: float, curtains: bool) -> list[dict]:
    w, h = rng.uniform(0.7, 1.6), rng.uniform(0.9, 1.4)
    z0 = rng.uniform(0.75, 1.0)
    h = min(h, H - 0.3 - z0)
    f = 0.05
    frame = _jitter(rng, PAINT[:3] + WOOD)
    glass = _jitter(rng, [(0.72, 0.80, 0.88), (0.60, 0.70, 0.78)], 0.04)
    parts = [
        _box((-w / 2 + f, 0, z0 + f), (w / 2 - f, 0.01, z0 + h - f), glass),
        _box((-w / 2, 0, z0), (-w / 2 + f, 0.05, z0 + h), frame),
        _box((w / 2 - f, 0, z0), (w / 2, 0.05, z0 + h), frame),
        _box((-w / 2 + f, 0, z0 + h - f), (w / 2 - f, 0.05, z0 + h), frame),
        _box((-w / 2 - 0.03, 0, z0 - 0.03), (w / 2 + 0.03, 0.08, z0 + f), frame),
    ]
    if w > 1.1:
        parts.append(_box((-f / 2, 0, z0 + f), (f / 2, 0.05, z0 + h - f), frame))
    objs = [_obj(WINDOW, "window", parts)]
    if curtains:
        cw = rng.uniform(0.25, 0.45)
        zt = min(z0 + h + 0.15, H - 0.1)
        zb = 0.02 if rng.random() < 0.5 else z0 - 0.15
        ov = rng.uniform(0.0, 0.12)
        col = _jitter(rng, FABRIC + PAINT[:3])
        objs.append(
            _obj(
                CURTAIN,
                "curtain",
                [
                    _box((-w / 2 - cw + ov, 0.09, zb), (-w / 2 + ov, 0.13, zt - 0.03), col),
                    _box((w / 2 - ov, 0.09, zb), (w / 2 + cw - ov, 0.13, zt - 0.03), col),
                    _box(
                        (-w / 2 - cw + ov - 0.05, 0.1, zt - 0.03),
                        (w / 2 + cw - ov + 0.05, 0.12, zt),
                        _jitter(rng, METAL + WOOD),
                    ),
                ],
            )
        )
    return objs


def _picture(rng, H: float) -> dict:
    w, h = rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
    zc = min(rng.uniform(1.35, 1.7), H - 0.2 - h / 2)
    fr = _jitter(rng, WOOD + [(0.1, 0.1, 0.1), (0.75, 0.6, 0.3)])
    f = 0.04
    z0, z1 = zc - h / 2, zc + h / 2
    return _obj(
        PICTURE,
        "picture",
        [
            _box((-w / 2 + f, 0, z0 + f), (w / 2 - f, 0.015, z1 - f), _jitter(rng, VIVID, 0.15)),
            _box((-w / 2, 0, z0), (-w / 2 + f, 0.03, z1), fr),
            _box((w / 2 - f, 0, z0), (w / 2, 0.03, z1), fr),
            _box((-w / 2 + f, 0, z0), (w / 2 - f, 0.03, z0 + f), fr),
            _box((-w / 2 + f, 0, z1 - f), (w / 2 - f, 0.03, z1), fr),
        ],
    )

"""Furniture of the procedural rooms (offline stand-in), built from primitives in a local frame:
back against a wall at y = 0, facing +y, x centred, z up; the layout places and rotates them.
`FILLERS` lists, per room type, the pieces that fill the space left after the main groups.
"""

from __future__ import annotations

import numpy as np

from geopurify.standins.rooms.primitives import (
    BED,
    BOOKS,
    BOOKSHELF,
    CABINET,
    CHAIR,
    DESK,
    FABRIC,
    LAMP,
    METAL,
    NIGHT_STAND,
    OTHERFURNITURE,
    OTHERPROP,
    PAINT,
    PILLOW,
    SOFA,
    TABLE,
    TELEVISION,
    VIVID,
    WOOD,
    _box,
    _cyl,
    _jitter,
    _obj,
    _parts_aabb,
    _transform,
)

# --- furniture builders: local frame, back against a wall at y = 0, facing +y, x centred, z up


def _chair(rng) -> dict:
    w, d = rng.uniform(0.42, 0.52), rng.uniform(0.42, 0.50)
    sh, st, bh = rng.uniform(0.43, 0.48), 0.04, rng.uniform(0.35, 0.50)
    seat = _jitter(rng, FABRIC + WOOD)
    frame = _jitter(rng, WOOD + METAL)
    parts = [_box((-w / 2, 0, sh - st), (w / 2, d, sh), seat), _box((-w / 2, 0, sh), (w / 2, 0.04, sh + bh), seat)]
    if rng.random() < 0.35:  # office chair: pedestal and round base
        r = rng.uniform(0.26, 0.31)
        parts += [
            _cyl(0, d / 2, 0.03, 0.08, sh - st, frame),
            _cyl(0, d / 2, r, 0.03, 0.08, frame),
            _cyl(0, d / 2, 0.06, 0.0, 0.03, frame),
        ]
        return _obj(CHAIR, "office chair", parts)
    lw = 0.035
    for x0 in (-w / 2, w / 2 - lw):
        for y0 in (0.0, d - lw):
            parts.append(_box((x0, y0, 0), (x0 + lw, y0 + lw, sh - st), frame))
    return _obj(CHAIR, "chair", parts)


def _armchair(rng) -> dict:
    w, d, sh = rng.uniform(0.75, 0.9), rng.uniform(0.75, 0.85), rng.uniform(0.40, 0.45)
    col = _jitter(rng, FABRIC)
    a = 0.16
    return _obj(
        CHAIR,
        "armchair",
        [
            _box((-w / 2, 0, 0), (w / 2, d, sh - 0.1), col),
            _box((-w / 2 + a, 0.2, sh - 0.1), (w / 2 - a, d, sh), _jitter(rng, [col], 0.03)),
            _box((-w / 2, 0, sh - 0.1), (w / 2, 0.2, sh + rng.uniform(0.35, 0.5)), col),
            _box((-w / 2, 0.2, sh - 0.1), (-w / 2 + a, d, sh + 0.2), col),
            _box((w / 2 - a, 0.2, sh - 0.1), (w / 2, d, sh + 0.2), col),
        ],
    )


def _table(rng, w, d, h, name="table", centred=True) -> dict:
    """Top + 4 legs (or a round top on a pedestal); centred on the origin or with its back at y = 0."""
    top = _jitter(rng, WOOD + PAINT)
    legc = _jitter(rng, [top] + METAL, 0.03)
    y0 = -d / 2 if centred else 0.0
    if centred and rng.random() < 0.25 and name == "table":  # round table
        r = min(w, d) / 2
        return _obj(
            TABLE,
            "round table",
            [
                _cyl(0, 0, r, h - 0.04, h, top),
                _cyl(0, 0, 0.05, 0.03, h - 0.04, legc),
                _cyl(0, 0, 0.25, 0.0, 0.03, legc),
            ],
        )
    lw, inset = 0.05, 0.04
    parts = [_box((-w / 2, y0, h - 0.04), (w / 2, y0 + d, h), top)]
    for x in (-w / 2 + inset, w / 2 - inset - lw):
        for y in (y0 + inset, y0 + d - inset - lw):
            parts.append(_box((x, y, 0), (x + lw, y + lw, h - 0.04), legc))
    return _obj(TABLE, name, parts)


def _dining_group(rng) -> list[dict]:
    """A free-standing table (centred on the origin) with chairs around it, facing it."""
    w, d = rng.uniform(1.0, 1.8), rng.uniform(0.75, 1.0)
    objs = [_table(rng, w, d, rng.uniform(0.72, 0.77))]
    gap = rng.uniform(0.05, 0.2)
    n_side = 1 if w < 1.3 else 2
    for side in (+1, -1):
        if rng.random() > 0.85:
            continue
        for i in range(n_side):
            ch = _chair(rng)
            cd = _parts_aabb([ch])[1][1]
            x = ((i + 0.5) / n_side - 0.5) * w + rng.uniform(-0.04, 0.04)
            if side > 0:
                objs += _transform([ch], 2, (x, d / 2 + gap + cd))
            else:
                objs += _transform([ch], 0, (x, -d / 2 - gap - cd))
    if w >= 1.4 and rng.random() < 0.4:
        ch = _chair(rng)
        cd = _parts_aabb([ch])[1][1]
        objs += _transform([ch], 1, (w / 2 + gap + cd, 0.0))
    return objs


def _desk_group(rng) -> list[dict]:
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.75), rng.uniform(0.72, 0.76)
    top = _jitter(rng, WOOD + PAINT)
    parts = [_box((-w / 2, 0, h - 0.03), (w / 2, d, h), top)]
    if rng.random() < 0.5:  # panel sides
        parts += [
            _box((-w / 2, 0, 0), (-w / 2 + 0.03, d, h - 0.03), top),
            _box((w / 2 - 0.03, 0, 0), (w / 2, d, h - 0.03), top),
        ]
    else:
        parts += [
            _box((x, y, 0), (x + 0.045, y + 0.045, h - 0.03), _jitter(rng, METAL))
            for x in (-w / 2 + 0.02, w / 2 - 0.065)
            for y in (0.02, d - 0.065)
        ]
    if rng.random() < 0.5:  # drawer unit under one side
        x0 = w / 2 - 0.45 if rng.random() < 0.5 else -w / 2 + 0.07
        parts.append(_box((x0, 0.05, 0.05), (x0 + 0.38, d - 0.05, h - 0.03), _jitter(rng, [top], 0.04)))
    objs = [_obj(DESK, "desk", parts)]
    if rng.random() < 0.7:  # monitor (otherprop in ScanNet)
        mw = rng.uniform(0.45, 0.65)
        mx = rng.uniform(-w / 2 + mw / 2 + 0.05, w / 2 - mw / 2 - 0.05)
        dark = _jitter(rng, [(0.08, 0.08, 0.09)], 0.02)
        objs.append(
            _obj(
                OTHERPROP,
                "monitor",
                [
                    _box((mx - 0.1, 0.08, h), (mx + 0.1, 0.25, h + 0.02), dark),
                    _box((mx - 0.03, 0.12, h + 0.02), (mx + 0.03, 0.16, h + 0.12), dark),
                    _box((mx - mw / 2, 0.16, h + 0.12), (mx + mw / 2, 0.19, h + 0.12 + 0.6 * mw), dark),
                ],
            )
        )
    ch = _chair(rng)
    cd = _parts_aabb([ch])[1][1]
    objs += _transform([ch], 2, (rng.uniform(-0.2, 0.2) * w, d + rng.uniform(0.03, 0.2) + cd))
    return objs


def _cabinet(rng, tall: bool = False, name: str = "cabinet", label: int = CABINET) -> dict:
    if tall:
        w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.6), rng.uniform(1.8, 2.1)
    else:
        w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.6, 1.0)
    body = _jitter(rng, WOOD + PAINT)
    handle = _jitter(rng, METAL)
    parts = [
        _box((-w / 2, 0, 0.06), (w / 2, d, h), body),
        _box((-w / 2 + 0.03, 0, 0), (w / 2 - 0.03, d - 0.04, 0.06), body),
    ]
    n_doors = 1 if w < 0.7 else 2
    for i in range(n_doors):
        x = -w / 2 + (i + 0.5) * w / n_doors + (0.06 if i == 0 and n_doors == 2 else -0.06 if n_doors == 2 else 0.1)
        parts.append(_box((x - 0.012, d, h * 0.45), (x + 0.012, d + 0.025, h * 0.45 + min(0.3, h * 0.3)), handle))
    return _obj(label, name, parts)


def _bookshelf(rng) -> list[dict]:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.1, 2.0)
    col = _jitter(rng, WOOD + PAINT)
    t = 0.02
    parts = [
        _box((-w / 2, 0, 0), (-w / 2 + t, d, h), col),
        _box((w / 2 - t, 0, 0), (w / 2, d, h), col),
        _box((-w / 2 + t, 0, h - t), (w / 2 - t, d, h), col),
        _box((-w / 2 + t, 0, 0), (w / 2 - t, d, 0.07), col),
        _box((-w / 2 + t, 0, 0.07), (w / 2 - t, 0.012, h - t), col),
    ]
    n_shelf = max(2, int((h - 0.1) / 0.34))
    levels = 0.07 + (h - t - 0.07) * np.arange(1, n_shelf) / n_shelf
    parts += [_box((-w / 2 + t, 0.012, z - t), (w / 2 - t, d, z), col) for z in levels]
    objs = [_obj(BOOKSHELF, "bookshelf", parts)]
    bottoms = np.concatenate([[0.07], levels])
    tops = np.concatenate([levels - t, [h - t]])
    for zb, zt in zip(bottoms, tops):  # a few blocks of books per shelf (one "books" instance each)
        if rng.random() < 0.3:
            continue
        x = -w / 2 + t + rng.uniform(0.0, 0.1)
        books = []
        while True:
            bw = rng.uniform(0.08, 0.25)
            if x + bw > w / 2 - t - 0.01:
                break
            bh = min(zt - zb - 0.02, rng.uniform(0.15, 0.28))
            books.append(_box((x, 0.02, zb), (x + bw, d - rng.uniform(0.02, 0.06), zb + bh), _jitter(rng, VIVID, 0.1)))
            x += bw + rng.uniform(0.0, 0.12)
        if books:
            objs.append(_obj(BOOKS, "books", books))
    return objs


def _bed_group(rng) -> list[dict]:
    w, L, fh = (
        rng.choice([rng.uniform(0.95, 1.1), rng.uniform(1.4, 1.8)]),
        rng.uniform(1.95, 2.15),
        rng.uniform(0.25, 0.4),
    )
    frame = _jitter(rng, WOOD + FABRIC)
    sheet = _jitter(rng, PAINT[:3] + FABRIC)
    cover = _jitter(rng, FABRIC + VIVID)
    bed = [
        _box((-w / 2 - 0.03, 0, 0), (w / 2 + 0.03, 0.06, rng.uniform(0.85, 1.2)), frame),
        _box((-w / 2, 0.06, 0), (w / 2, 0.06 + L, fh), frame),
        _box((-w / 2 + 0.02, 0.08, fh), (w / 2 - 0.02, 0.04 + L, fh + 0.2), sheet),
        _box((-w / 2 + 0.01, 0.06 + 0.35 * L, fh + 0.2), (w / 2 - 0.01, 0.05 + L, fh + 0.23), cover),
    ]
    objs = [_obj(BED, "bed", bed)]
    n_pillow = 1 if w < 1.2 else 2
    pw = (w - 0.1) / n_pillow - 0.04
    for i in range(n_pillow):
        x0 = -w / 2 + 0.05 + i * (pw + 0.04) + 0.02
        objs.append(
            _obj(
                PILLOW,
                "pillow",
                [
                    _box(
                        (x0, 0.1, fh + 0.2),
                        (x0 + pw, 0.1 + rng.uniform(0.32, 0.4), fh + 0.32),
                        _jitter(rng, PAINT[:3] + FABRIC),
                    )
                ],
            )
        )
    for side in (-1, 1):  # night stands beside the head of the bed
        if rng.random() < 0.6:
            nw, nd, nh = rng.uniform(0.4, 0.5), rng.uniform(0.35, 0.45), rng.uniform(0.45, 0.6)
            xc = side * (w / 2 + 0.03 + rng.uniform(0.03, 0.1) + nw / 2)
            col = _jitter(rng, WOOD + PAINT)
            objs.append(_obj(NIGHT_STAND, "nightstand", [_box((xc - nw / 2, 0, 0), (xc + nw / 2, nd, nh), col)]))
            if rng.random() < 0.5:
                objs.append(
                    _obj(
                        LAMP,
                        "lamp",
                        [
                            _cyl(xc, nd / 2, 0.07, nh, nh + 0.03, _jitter(rng, METAL)),
                            _cyl(xc, nd / 2, 0.012, nh + 0.03, nh + 0.3, _jitter(rng, METAL)),
                            _cyl(xc, nd / 2, 0.13, nh + 0.3, nh + 0.5, _jitter(rng, PAINT[:3] + VIVID)),
                        ],
                    )
                )
    return objs


def _sofa_group(rng) -> list[dict]:
    w, d = rng.uniform(1.6, 2.4), rng.uniform(0.8, 0.95)
    col = _jitter(rng, FABRIC)
    cush = _jitter(rng, [col], 0.04)
    a, back_h = rng.uniform(0.15, 0.22), rng.uniform(0.78, 0.9)
    parts = [
        _box((x, y, 0), (x + 0.04, y + 0.04, 0.08), _jitter(rng, WOOD + METAL))
        for x in (-w / 2 + 0.04, w / 2 - 0.08)
        for y in (0.04, d - 0.08)
    ]
    parts += [
        _box((-w / 2, 0, 0.08), (w / 2, d, 0.32), col),
        _box((-w / 2, 0, 0.32), (w / 2, 0.22, back_h), col),
        _box((-w / 2, 0.22, 0.32), (-w / 2 + a, d, 0.6), col),
        _box((w / 2 - a, 0.22, 0.32), (w / 2, d, 0.6), col),
    ]
    n_c = 2 if w < 2.0 else 3
    cw = (w - 2 * a) / n_c
    parts += [
        _box((-w / 2 + a + i * cw + 0.005, 0.22, 0.32), (-w / 2 + a + (i + 1) * cw - 0.005, d - 0.02, 0.43), cush)
        for i in range(n_c)
    ]
    objs = [_obj(SOFA, "sofa", parts)]
    if rng.random() < 0.8:  # coffee table in front of the sofa
        tw, td = rng.uniform(0.8, 1.2), rng.uniform(0.45, 0.6)
        ct = _table(rng, tw, td, rng.uniform(0.4, 0.48), name="coffee table", centred=True)
        objs += _transform([ct], 0, (rng.uniform(-0.1, 0.1), d + rng.uniform(0.35, 0.5) + td / 2))
    return objs


def _tv_group(rng) -> list[dict]:
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.38, 0.48), rng.uniform(0.42, 0.6)
    objs = [_obj(OTHERFURNITURE, "tv stand", [_box((-w / 2, 0, 0), (w / 2, d, h), _jitter(rng, WOOD + PAINT))])]
    tw = min(w - 0.1, rng.uniform(0.9, 1.3))
    dark = _jitter(rng, [(0.07, 0.07, 0.08)], 0.02)
    objs.append(
        _obj(
            TELEVISION,
            "tv",
            [
                _box((-0.15, 0.1, h), (0.15, 0.3, h + 0.02), dark),
                _box((-0.03, 0.17, h + 0.02), (0.03, 0.21, h + 0.08), dark),
                _box((-tw / 2, 0.16, h + 0.08), (tw / 2, 0.22, h + 0.08 + 0.58 * tw), dark),
            ],
        )
    )
    return objs


def _otherfurniture(rng) -> dict:
    c = rng.random()
    if c < 0.4:
        r, h = rng.uniform(0.13, 0.2), rng.uniform(0.4, 0.7)
        return _obj(OTHERFURNITURE, "trash can", [_cyl(0, r, r, 0, h, _jitter(rng, METAL + VIVID))])
    if c < 0.7:
        w, d = rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.6)
        h = rng.uniform(0.38, 0.45)
        return _obj(OTHERFURNITURE, "ottoman", [_box((-w / 2, 0, 0), (w / 2, d, h), _jitter(rng, FABRIC))])
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.08, 0.12), rng.uniform(0.5, 0.7)
    return _obj(
        OTHERFURNITURE,
        "radiator",
        [
            _box((-w / 2, 0.03, 0.12), (w / 2, 0.03 + d, 0.12 + h), _jitter(rng, PAINT[:3])),
            _box((-w / 2 + 0.05, 0, 0.3), (-w / 2 + 0.08, 0.03, 0.35), _jitter(rng, METAL)),
        ],
    )


def _end_table(rng) -> dict:
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    return _table(rng, w, d, rng.uniform(0.5, 0.65), name="end table", centred=False)


# extra furniture against the walls, per room type (each a builder returning a list of objects)
FILLERS = {
    "bedroom": [
        lambda r: [_cabinet(r)],
        lambda r: [_chair(r)],
        lambda r: [_otherfurniture(r)],
        _bookshelf,
        lambda r: [_end_table(r)],
    ],
    "living room": [
        lambda r: [_armchair(r)],
        lambda r: [_cabinet(r)],
        _bookshelf,
        lambda r: [_end_table(r)],
        lambda r: [_otherfurniture(r)],
        lambda r: [_chair(r)],
    ],
    "office": [
        lambda r: [_chair(r)],
        lambda r: [_cabinet(r, tall=r.random() < 0.5)],
        _bookshelf,
        _desk_group,
        lambda r: [_otherfurniture(r)],
        lambda r: [_end_table(r)],
    ],
    "kitchen": [
        lambda r: [_cabinet(r)],
        lambda r: [_chair(r)],
        lambda r: [_otherfurniture(r)],
        lambda r: [_end_table(r)],
    ],
    "bathroom": [lambda r: [_cabinet(r)], lambda r: [_otherfurniture(r)]],
}

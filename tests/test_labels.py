"""geopurify.data.labels against the dataset tables in ../shared/data (independent parses with csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from geopurify.data.labels import IGNORE, SETS, get_label_set
from geopurify.errors import InputError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SCANNET_TSV = DATA / "scannet" / "scannetv2-labels.combined.tsv"
MP_TSV = DATA / "matterport" / "category_mapping.tsv"
needs_data = pytest.mark.skipif(not SCANNET_TSV.is_file(), reason="../shared/data not present")

SCANNET20_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]
# OpenScene dataset/label_constants.py MATTERPORT_LABELS_160 (its first 40 / 80 are the 40- / 80-class sets)
MP160 = (
    "wall",
    "door",
    "ceiling",
    "floor",
    "picture",
    "window",
    "chair",
    "pillow",
    "lamp",
    "cabinet",
    "curtain",
    "table",
    "plant",
    "mirror",
    "towel",
    "sink",
    "shelves",
    "sofa",
    "bed",
    "night stand",
    "toilet",
    "column",
    "banister",
    "stairs",
    "stool",
    "vase",
    "television",
    "pot",
    "desk",
    "box",
    "coffee table",
    "counter",
    "bench",
    "garbage bin",
    "fireplace",
    "clothes",
    "bathtub",
    "book",
    "air vent",
    "faucet",
    "photo",
    "toilet paper",
    "fan",
    "railing",
    "sculpture",
    "dresser",
    "rug",
    "ottoman",
    "bottle",
    "refridgerator",
    "bookshelf",
    "wardrobe",
    "pipe",
    "monitor",
    "stand",
    "drawer",
    "container",
    "light switch",
    "purse",
    "door way",
    "basket",
    "chandelier",
    "oven",
    "clock",
    "stove",
    "washing machine",
    "shower curtain",
    "fire alarm",
    "bin",
    "chest",
    "microwave",
    "blinds",
    "bowl",
    "tissue box",
    "plate",
    "tv stand",
    "shoe",
    "heater",
    "headboard",
    "bucket",
    "candle",
    "flower pot",
    "speaker",
    "furniture",
    "sign",
    "air conditioner",
    "fire extinguisher",
    "curtain rod",
    "floor mat",
    "printer",
    "telephone",
    "blanket",
    "handle",
    "shower head",
    "soap",
    "keyboard",
    "thermostat",
    "radiator",
    "kitchen island",
    "paper towel",
    "sheet",
    "glass",
    "dishwasher",
    "cup",
    "ladder",
    "garage door",
    "hat",
    "exit sign",
    "piano",
    "board",
    "rope",
    "ball",
    "excercise equipment",
    "hanger",
    "candlestick",
    "light",
    "scale",
    "bag",
    "laptop",
    "treadmill",
    "guitar",
    "display case",
    "toilet paper holder",
    "bar",
    "tray",
    "urn",
    "decorative plate",
    "pool table",
    "jacket",
    "bottle of soap",
    "water cooler",
    "utensil",
    "tea pot",
    "stuffed animal",
    "paper towel dispenser",
    "lamp shade",
    "car",
    "toilet brush",
    "doll",
    "drum",
    "whiteboard",
    "range hood",
    "candelabra",
    "toy",
    "foot rest",
    "soap dish",
    "placemat",
    "cleaner",
    "computer",
    "knob",
    "paper",
    "projector",
    "coat hanger",
    "case",
    "pan",
    "luggage",
    "trinket",
    "chimney",
    "person",
    "alarm",
)


def _tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@needs_data
def test_scannet20_and_19_against_the_scannet_table():
    s20, s19 = get_label_set("scannet20"), get_label_set("scannet19")
    assert s20.raw_space == "nyu40" and len(s20) == 20 and len(s19) == 19
    assert s19.names == s20.names[:19] and "otherfurniture" not in s19.names
    rows = _tsv(SCANNET_TSV)
    ids = np.array([int(r["nyu40id"]) for r in rows])
    got20, got19 = s20.map(ids), s19.map(ids)
    for r, g20, g19 in zip(rows, got20, got19):
        nyu = int(r["nyu40id"])
        want = SCANNET20_IDS.index(nyu) if nyu in SCANNET20_IDS else IGNORE
        assert g20 == want and g19 == (want if nyu != 39 else IGNORE)
        if want != IGNORE:  # the class name is the table's NYU40 class (the table spells 'refridgerator')
            assert s20.names[want] == r["nyu40class"].replace("refridgerator", "refrigerator")


@needs_data
def test_scannet200_against_the_scannet_table():
    s = get_label_set("scannet200")
    assert s.raw_space == "scannet200_raw" and len(s) == 200 and len(set(s.names)) == 200
    rows = _tsv(SCANNET_TSV)
    categories: dict[int, set] = {}
    for r in rows:
        categories.setdefault(int(r["id"]), set()).add(r["category"])
    raw = np.array(sorted(categories))
    mapped = s.map(raw)
    valid = raw[mapped != IGNORE]
    assert len(valid) == 200  # every benchmark class is a raw id of the table
    for rid, c in zip(raw, mapped):
        if c != IGNORE:
            assert s.names[c] in categories[rid], (rid, s.names[c], categories[rid])
    assert s.names[:5] == ["wall", "chair", "floor", "table", "door"] and s.names[-1] == "mattress"
    assert s.map([1, 3, 1191, 12, 0, 5000]).tolist() == [0, 2, 199, IGNORE, IGNORE, IGNORE]


@needs_data
def test_scannet20_on_real_scene_equals_dense_definition():
    lab = np.load(DATA / "scannet" / "scene0000_00" / "labels_nyu40.npy")
    got = get_label_set("scannet20").map(lab)
    want = np.array([SCANNET20_IDS.index(v) if v in SCANNET20_IDS else IGNORE for v in lab])
    assert np.array_equal(got, want) and got.dtype == np.int64
    assert 0 < (got == IGNORE).mean() < 0.5


@needs_data
def test_matterport21_against_category_mapping():
    s = get_label_set("matterport21")
    assert s.raw_space == "matterport_raw" and set(s.spaces) == {"matterport_raw", "nyu40"}
    assert s.names[-2:] == ["other", "ceiling"] and s.names[:19] == get_label_set("scannet20").names[:19]
    nyu21 = SCANNET20_IDS + [22]
    rows = _tsv(MP_TSV)
    index = np.array([int(r["index"]) for r in rows])
    got = s.map(index)
    for r, g in zip(rows, got):
        nyu = int(r["nyu40id"]) if r["nyu40id"] else 0
        assert g == (nyu21.index(nyu) if nyu in nyu21 else IGNORE), r
    assert np.array_equal(
        s.map(np.arange(41), space="nyu40"), [nyu21.index(v) if v in nyu21 else IGNORE for v in range(41)]
    )
    assert s.map([-1, 0]).tolist() == [IGNORE, IGNORE]  # unlabelled faces


@needs_data
@pytest.mark.parametrize("k", [40, 80, 160])
def test_matterport_k_against_openscene_lists_and_table(k):
    s = get_label_set(f"matterport{k}")
    assert s.names == list(MP160)[:k]
    rows = _tsv(MP_TSV)
    rng = np.random.default_rng(k)
    sample = [rows[i] for i in rng.choice(len(rows), 300, replace=False)]
    got = s.map([int(r["index"]) for r in sample])
    for r, g in zip(sample, got):
        name = r["nyuClass"]
        assert g == (s.names.index(name) if name in s.names else IGNORE), r


def test_map_and_prompts_contract():
    s = get_label_set("scannet20")
    ids = np.array([[1, 39], [40, -5]], dtype=np.int16)
    assert s.map(ids).tolist() == [[0, 19], [IGNORE, IGNORE]]
    with pytest.raises(TypeError):
        s.map(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        s.map([1], space="scannet200_raw")
    assert s.prompts()[:2] == ["a wall in a scene", "a floor in a scene"]
    assert s.prompts()[-1] == "a other in a scene"  # OpenScene's prompt for otherfurniture
    assert get_label_set("scannet200").prompts("{}")[1] == "chair"
    for name in SETS:
        ls = get_label_set(name)
        assert len(ls.prompts()) == len(ls) == ls.n_classes
    with pytest.raises(InputError, match="unknown label set"):
        get_label_set("scannet21")

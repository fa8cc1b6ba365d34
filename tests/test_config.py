"""Configs: every shipped YAML loads; unknown keys and wrong types are one-line InputErrors."""
from pathlib import Path

import pytest

from geopurify.config import defaults, load_config
from geopurify.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_load_and_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("distill:\n  lr: 2\n  lr_mult: {head: 0.5}\npurify:\n  steps: 9\n")
    cfg = load_config(p)
    assert cfg["distill"]["lr"] == 2.0 and isinstance(cfg["distill"]["lr"], float)
    assert cfg["distill"]["lr_mult"] == {"head": 0.5}
    assert cfg["purify"]["steps"] == 9
    assert cfg["purify"]["k"] == defaults()["purify"]["k"]  # untouched keys keep defaults


@pytest.mark.parametrize("text,needle", [
    ("purify:\n  stepz: 3\n", "unknown config key 'purify.stepz'"),
    ("bogus: 1\n", "unknown config key 'bogus'"),
    ("purify:\n  steps: many\n", "'purify.steps' must be int"),
    ("purify:\n  steps: 1.5\n", "'purify.steps' must be int"),
    ("lift:\n  image_size: 3\n", "'lift.image_size' must be list"),
    ("- a\n- b\n", "config must be a mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_bad_config_is_one_line_error(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    files = sorted((REPO / "config").glob("*.yaml"))
    for f in files:
        load_config(f)

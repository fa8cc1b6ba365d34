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


@pytest.mark.parametrize(
    "text,needle",
    [
        ("purify:\n  stepz: 3\n", "unknown config key 'purify.stepz'"),
        ("bogus: 1\n", "unknown config key 'bogus'"),
        ("purify:\n  steps: many\n", "'purify.steps' must be int"),
        ("purify:\n  steps: 1.5\n", "'purify.steps' must be int"),
        ("lift:\n  image_size: 3\n", "'lift.image_size' must be list"),
        ("- a\n- b\n", "config must be a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
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


def test_renamed_key_names_its_new_name(tmp_path):
    """purify.path (fast | reference) became purify.pooling (scores | features): an old config gets
    the new name and values in its error, not a bare 'unknown config key'."""
    p = tmp_path / "old.yaml"
    p.write_text("purify:\n  path: fast\n")
    with pytest.raises(
        InputError,
        match=r"config key 'purify\.path' is now purify\.pooling \(fast -> scores, "
        r"reference -> features\)",
    ) as e:
        load_config(p)
    assert str(p) in str(e.value)
    assert load_config(None, sets=["purify.pooling=features"])["purify"]["pooling"] == "features"


def test_every_range_is_a_default_key_and_in_range():
    """The schema's ranges name keys defaults.yaml has, and every default lies in its range (a typo in a
    range key would make a check silently test nothing)."""
    from geopurify.schema import JOINT, RANGES, check

    cfg = defaults()
    for key in RANGES:
        section, name = key.split(".", 1)
        assert name in cfg[section], key
    assert {k for a, b, *_ in JOINT for k in (a, b)} <= set(RANGES)
    check(cfg, *sorted({k.split(".")[0] for k in RANGES}))  # the defaults pass every check


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("lift.border", -1, "config key 'lift.border' must be an integer >= 0, got -1"),
        ("lift.occlusion_thr", 0.0, "config key 'lift.occlusion_thr' must be a number > 0, got 0.0"),
        ("vlm_sim.confusion_prob", 1.5, "config key 'vlm_sim.confusion_prob' must be a number in [0, 1], got 1.5"),
        ("purify.pooling", "fast", "config key 'purify.pooling' must be one of scores, features, got 'fast'"),
        ("purify.k", True, "config key 'purify.k' must be an integer >= 1, got True"),
        ("distill.tau", float("nan"), "config key 'distill.tau' must be a number > 0, got nan"),
        (
            "lift.image_size",
            [320, 0],
            "config key 'lift.image_size' must be [W, H], two positive integers, got [320, 0]",
        ),
    ],
)
def test_out_of_range_settings_are_one_line(key, value, text):
    from geopurify.schema import check

    cfg = defaults()
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(InputError) as e:
        check(cfg, section)
    assert str(e.value) == text


def test_joint_rules():
    from geopurify.schema import check

    cfg = defaults()
    cfg["distill"].update(n_macro=0, n_micro=0)
    with pytest.raises(InputError, match=r"'distill\.n_macro' and 'distill\.n_micro' must add up to >= 1"):
        check(cfg, "distill")
    check(cfg, "distill.n_macro")  # one key alone: the joint rule needs both

"""Every shipped config loads and validates (no model is loaded)."""

from pathlib import Path

import pytest

from iama.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.criteria and cfg.num_generations >= 2


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"length.yaml", "length-baseline.yaml", "length-tiny.yaml", "length-tiny-baseline.yaml"} <= names

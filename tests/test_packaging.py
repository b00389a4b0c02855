"""The package outside the checkout: a wheel built from the source holds the shipped configs and prompts, and from
another working directory `iama demo --help` runs and the config names the demo and the README use resolve to the
configs inside the installed package (no network: the wheel is built without build isolation)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json, sys
from pathlib import Path
import iama
from iama.cli import main
from iama.config import config_name, load_config, resolve_config
from iama.demo import CONFIGS
try:
    main(["demo", "--help"])
except SystemExit as e:
    assert e.code == 0, e.code
print(json.dumps({"iama": iama.__file__, "demo_configs": str(CONFIGS),
                  "resolved": {n: str(resolve_config(n)) for n in ["configs/length.yaml", "length", "sweep-grim.yaml",
                                                                       "configs/length-baseline.yaml"]},
                  "name": config_name(CONFIGS / "length.yaml"),
                  "criteria": load_config("configs/length.yaml", check_model=False).criteria_names}))
"""


@pytest.mark.slow
def test_a_wheel_ships_the_configs_and_the_demo_finds_them_outside_the_checkout(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here: no wheel can be built without the network")
    src = tmp_path / "src"  # a copy, so that the build writes nothing into the checkout
    shutil.copytree(ROOT / "iama", src / "iama", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("iama-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "iama" / "configs").rglob("*.yaml")}
    assert shipped and shipped <= names  # every shipped config, scale/ too
    assert {"iama/prompts/questions.jsonl", "iama/prompts/grim.jsonl"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--configs" in done.stdout  # the demo's help
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    installed = site.resolve() / "iama"
    assert Path(seen["iama"]).parent == installed  # the wheel's package, not the checkout's
    assert Path(seen["demo_configs"]) == installed / "configs"
    assert seen["resolved"] == {"configs/length.yaml": str(installed / "configs" / "length.yaml"),
                                "length": str(installed / "configs" / "length.yaml"),
                                "sweep-grim.yaml": str(installed / "configs" / "sweep-grim.yaml"),
                                "configs/length-baseline.yaml": str(installed / "configs" / "length-baseline.yaml")}
    assert seen["name"] == "configs/length.yaml" and seen["criteria"] == ["short", "long"]

"""Every shipped config loads and validates (no model is loaded)."""

import re
from pathlib import Path

import pytest
import yaml

from iama.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "iama" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.criteria and cfg.num_generations >= 2


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"length.yaml", "length-baseline.yaml", "length-tiny.yaml", "length-tiny-baseline.yaml"} <= names


def test_the_import_graph_has_no_circle():
    """Modules import one way (algorithms and objective at the bottom, config above them, ctrl and trainer above
    it): no module reaches itself."""
    import ast

    package = Path(__file__).resolve().parents[1] / "iama"
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]  # the package a relative import starts from
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                deps.add(".".join([*here[: len(here) - node.level + 1], node.module]))
        graph[module] = deps

    def reaches(start, goal):
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    assert "iama.config" in graph["iama.trainer"] and "iama.objective" in graph["iama.config"]  # edges are found
    circles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert circles == []


def test_the_confirmatory_grim_sweep_differs_from_the_first_in_its_on_topic_reward():
    """sweep-grim-kl.yaml is sweep-grim.yaml with the echo-proof on_topic reward, the KL held by the controller
    (the protocol's settings: target, its start and gain, the learning rate and steps it needs, bf16) and its own
    output folder."""
    from iama.config import to_dict

    first = to_dict(load_config(CONFIGS[0].parent / "sweep-grim.yaml"))
    confirm = to_dict(load_config(CONFIGS[0].parent / "sweep-grim-kl.yaml"))
    assert [c["reward"] for c in confirm["criteria"]] == ["on_topic", "sentiment"]
    assert first["criteria"][0]["reward"] == "relevance"
    first["criteria"][0]["reward"] = "on_topic"
    assert {k for k in first if first[k] != confirm[k]} == {"output_dir", "beta", "target_kl", "kl_gain",
                                                             "kl_gain_up", "max_steps", "trl"}
    assert {k for k in first["trl"] if first["trl"][k] != confirm["trl"].get(k)} | set(confirm["trl"]) - set(
        first["trl"]) == {"learning_rate", "bf16"}
    assert (confirm["target_kl"], confirm["beta"], confirm["trl"]["learning_rate"]) == (0.15, 1.0, 5e-5)


@pytest.mark.parametrize("raw, message", [
    ([], "criteria must be a list of at least one criterion"),
    ([{"reward": "length:8:32"}], "criterion 0 must be a mapping with at least a 'name'"),
    ([{"name": "a", "colour": "red"}], "criterion 'a': unknown field(s) colour; allowed: name, reward"),
    ([{"name": "a", "algorithm": "best:4"}], "criterion 'a': unknown algorithm 'best:4'"),
    ([{"name": "a", "weight": -1}], "criterion 'a': weight must be a finite number >= 0"),
    ([{"name": "a", "transform": "log"}], "criterion 'a': a transform applies to calibrated rewards"),
    ([{"name": "a", "calibrated": True, "transform": "cube"}], "criterion 'a': bad transform 'cube'"),
    ([{"name": "a"}, {"name": "a"}], "criterion names must be unique"),
])
def test_parse_criteria_says_what_is_wrong_in_one_line(raw, message):
    from iama import parse_criteria
    from iama.config import ConfigError

    with pytest.raises(ValueError) as e:
        parse_criteria(raw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(message)):  # the same line from a config
        load_config(None, criteria=raw)


def test_criteria_round_trip_through_a_config_and_its_yaml(tmp_path):
    from iama import Criterion, parse_criteria
    from iama.config import to_dict

    raw = [{"name": "short", "reward": "length:8:32", "algorithm": "BoN:4", "weight": 0.5},
           {"name": "calm", "reward": "length:24:32", "calibrated": True, "transform": "log"}]
    criteria = parse_criteria(raw)
    assert criteria[0] == Criterion("short", "bon:4", 0.5, "length:8:32") and criteria[1].algorithm.spec == "sampling"
    assert parse_criteria([c.to_dict() for c in criteria]) == criteria
    cfg = load_config(None, criteria=raw, calibration=str(tmp_path / "store.json"))
    saved = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    assert yaml.safe_load(saved)["criteria"][0] == {"name": "short", "reward": "length:8:32", "algorithm": "bon:4",
                                                    "weight": 0.5}  # plain mappings in the YAML
    (tmp_path / "config.yaml").write_text(saved)
    again = load_config(tmp_path / "config.yaml")
    assert again.criteria == criteria and to_dict(again) == to_dict(cfg)


def test_a_run_of_an_earlier_version_reads_as_what_it_means(tmp_path):
    """Earlier versions saved the criteria as written (no weight, non-canonical algorithms): a run directory
    still loads, and resuming it under the same settings finds nothing changed."""
    from iama.config import to_dict
    from iama.config import settings_differ

    cfg = load_config(None, criteria=[{"name": "len", "reward": "length:8:32", "algorithm": "bon:4"}],
                      output_dir=str(tmp_path / "run"))
    old = {**to_dict(cfg), "criteria": [{"name": "len", "reward": "length:8:32", "algorithm": "BoN:4"}]}
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "iama_config.yaml").write_text(yaml.safe_dump(old))
    run = load_config(tmp_path / "run", check_model=False)
    assert run.criteria == cfg.criteria and run.trl == cfg.trl
    assert settings_differ(old, cfg) == []
    assert settings_differ(old, load_config(None, criteria=[{"name": "len", "reward": "length:8:32"}])) == [
        "criteria"]


def test_a_config_resolves_from_the_working_directory_then_from_the_package(tmp_path, monkeypatch):
    """`configs/length.yaml`, `length.yaml` and `length` name the shipped config where the working directory holds
    no such file (as after pip install); a file there comes first; reports name a shipped config `configs/NAME`."""
    from iama.config import SHIPPED, ConfigError, config_name, resolve_config

    monkeypatch.chdir(tmp_path)
    for name in ["configs/length.yaml", "length.yaml", "length", "configs/length"]:
        assert resolve_config(name) == SHIPPED / "length.yaml"
    assert resolve_config("configs/scale/length-7b.yaml") == SHIPPED / "scale" / "length-7b.yaml"
    assert resolve_config("configs") == SHIPPED and config_name(SHIPPED) == "configs"
    assert config_name(SHIPPED / "length.yaml") == "configs/length.yaml"
    assert load_config("length").criteria == load_config(SHIPPED / "length.yaml").criteria
    with pytest.raises(ConfigError, match="config file 'nothing.yaml' not found"):
        load_config("nothing.yaml")
    assert resolve_config("../length.yaml") == Path("../length.yaml")  # never outside the package

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "length.yaml").write_text("criteria: [{name: mine, reward: 'length:4:8'}]\n")
    assert resolve_config("configs/length.yaml") == Path("configs/length.yaml")  # the working directory's first
    assert load_config("configs/length.yaml").criteria_names == ["mine"]
    assert resolve_config("length") == SHIPPED / "length.yaml"  # no length file here
    assert config_name(SHIPPED / "length.yaml") == str(SHIPPED / "length.yaml")  # `configs/length.yaml` is another


@pytest.mark.parametrize("override, message", [("kl_gain=0", "kl_gain must be > 0, got 0"),
                                               ("kl_gain_up=-1", "kl_gain_up must be > 0, got -1")])
def test_the_kl_controllers_gains_must_be_positive(override, message):
    from iama.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS[0].parent / "length-tiny.yaml", ["beta=0.1", "target_kl=0.1", override])

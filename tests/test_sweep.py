"""`iama sweep` on the tiny model: a sweep stopped by a failing run resumes (the finished point untouched, the
stopped one from its checkpoint), finishes with a report of all four points, and a rerun trains nothing; bad
input stops with one line before anything is trained or written."""

import json
import os
from pathlib import Path

import pytest
import yaml

from iama.cli import main
from iama.sweep import default_weights, parse_weights, point_label

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "iama" / "configs" / "length-tiny.yaml"
# the short criterion's reward through this module, so that a run can be made to fail (see short_or_fail)
FAST = ["max_prompts=16", "per_device_train_batch_size=16", "report_to=none",
        "criteria.0.reward=test_sweep:short_or_fail"]


def short_or_fail(prompts=None, completions=(), completion_ids=None, **kwargs):
    """length:8:32; while SWEEP_FAIL names a file, every call adds a byte to it and the 4th call raises: with one
    run at a time and one call per step, in the second step of the second run, after its checkpoint-1."""
    flag = os.environ.get("SWEEP_FAIL")
    if flag:
        with open(flag, "a") as f:
            f.write("x")
        if os.path.getsize(flag) == 4:
            raise RuntimeError("injected failure")
    return [-(((len(ids) - 8) / 32) ** 2) for ids in completion_ids]


def sweep(out, *extra):
    return ["sweep", str(TINY), *FAST, "--steps", "2", "--weights", "0.3,0.7", "--out", str(out),
            "--eval-prompts", "4", "-M", "4", "--bootstrap", "200", "--quiet", *extra]


def mtimes(run: Path) -> dict:
    return {f.name: f.stat().st_mtime_ns for f in (run / "final").iterdir()}


@pytest.fixture
def importable(monkeypatch):
    """This module importable here and in the training processes (for its reward)."""
    here = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(here)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


@pytest.mark.slow
def test_sweep_stops_resumes_and_reports_every_point(tmp_path, capsys, monkeypatch, importable):
    out, runs = tmp_path / "sweep", tmp_path / "sweep" / "runs"
    monkeypatch.setenv("SWEEP_FAIL", str(tmp_path / "calls"))
    assert main(sweep(out, "--jobs", "1")) == 2  # the queue: iama-w0.3, grpo-w0.3, iama-w0.7, grpo-w0.7
    err = capsys.readouterr().err
    assert "iama: error: training grpo-w0.3 stopped: reward 'short' raised RuntimeError: injected failure" in err
    assert (runs / "iama-w0.3" / "final").is_dir() and not (runs / "grpo-w0.3" / "final").exists()
    assert (runs / "grpo-w0.3" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (runs / "iama-w0.7").exists() and not (out / "report.md").exists()
    first = mtimes(runs / "iama-w0.3")

    monkeypatch.delenv("SWEEP_FAIL")
    assert main(sweep(out, "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert "4 points (iama, grpo at 2 weights), 1 finished, 3 to train" in printed
    assert "N = 4: hypervolume iama - grpo = " in printed
    assert f"resuming from {runs / 'grpo-w0.3' / 'checkpoint-1'}" in (runs / "grpo-w0.3.log").read_text()
    assert mtimes(runs / "iama-w0.3") == first
    report = json.loads((out / "report.json").read_text())
    labels = ["iama-w0.3", "grpo-w0.3", "iama-w0.7", "grpo-w0.7"]
    assert list(report["points"]) == labels and report["points"]["grpo-w0.7"]["weights"] == [0.7, 0.3]
    assert list(report["fronts"]) == ["1", "2", "4"]  # N <= M = 4
    for entry in report["fronts"].values():
        assert set(entry["points"]) == {"untrained", *labels}
        d = entry["difference"]
        assert d["ci_low"] <= d["mean"] <= d["ci_high"] and set(entry["methods"]) == {"iama", "grpo"}
        for method in ("iama", "grpo"):
            hv = entry["methods"][method]["hypervolume"]
            assert 0 <= hv["ci_low"] <= hv["ci_high"] and hv["mean"] >= 0
    assert report["reference_point"]["from"] == "the untrained model at N = 1"
    assert report["config"] == "configs/length-tiny.yaml"  # no path of the machine that ran it
    assert [e["weights"] for e in report["objective"]["per_weight"]] == [[0.3, 0.7], [0.7, 0.3]]
    assert all(e["difference"]["ci_low"] <= e["difference"]["mean"] <= e["difference"]["ci_high"]
               for e in report["objective"]["per_weight"])
    assert set(report["kl"]["models"]) == set(labels) and report["kl"]["reference"] == "untrained"
    assert report["correlation"][0]["criteria"] == ["short", "long"]
    markdown = (out / "report.md").read_text()
    assert all(f"| {k} |" in markdown for k in labels) and "![fronts](fronts.png)" in markdown
    assert (out / "fronts.png").is_file() and (out / "eval" / "report.md").is_file()

    before = {k: mtimes(runs / k) for k in labels}
    # all finished: nothing trained, the report made again (with a reference point of its own: not a setting of
    # the runs)
    assert main([*sweep(out), "sweep_reference=[-0.5,-0.5]"]) == 0
    assert "4 finished, 0 to train" in capsys.readouterr().out
    assert {k: mtimes(runs / k) for k in labels} == before
    report = json.loads((out / "report.json").read_text())
    assert report["reference_point"] == {"values": [-0.5, -0.5], "from": "sweep_reference in the config"}

    # another config in the same folder: one line naming what differs; nothing written
    saved = (out / "sweep.yaml").read_text()
    assert main([*sweep(out), "seed=1", "learning_rate=1e-3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"iama: error: {out} holds a sweep of another config (seed, trl.learning_rate differ); use another --out"]
    assert (out / "sweep.yaml").read_text() == saved and sorted(p.name for p in runs.iterdir() if p.is_dir()) == \
        sorted(labels)


def _config(tmp_path, criteria) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["criteria"] = criteria
    path = tmp_path / f"{len(criteria)}-criteria.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, message", [
    (["--weights", "1.2,0.3"], "--weights: '1.2' is outside [0, 1]"),
    (["--weights", ""], "--weights is empty"),
    (["--weights", "0.3,,0.5"], "--weights: '' is not a number"),
    (["--weights", "0.3,0.3"], "--weights: '0.3' is given twice"),
    (["--weights", "0.3:0.6"], "--weights: '0.3:0.6' sums to 0.9, not 1"),
    (["--methods", "iama,ppo"], "--methods: unknown method 'ppo'; choose from iama, grpo"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    ("three", "--weights: '0.2:0.3:0.4' sums to 0.9, not 1"),
    ("one", "a sweep needs a config with two or more criteria"),
])
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, capsys, change, message, importable):
    out = tmp_path / "out"
    args = sweep(out)
    if change == "three":
        crit = [{"name": n, "reward": f"length:{t}:32", "algorithm": "bon:4"}
                for n, t in [("a", 8), ("b", 16), ("c", 24)]]
        args = [*sweep(out, "--weights", "0.2:0.3:0.4")]
        args[1] = str(_config(tmp_path, crit))
        args.remove("criteria.0.reward=test_sweep:short_or_fail")
    elif change == "one":
        args[1] = str(_config(tmp_path, [{"name": "short", "reward": "length:8:32", "algorithm": "bon:4"}]))
    else:
        args = sweep(out, *change)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iama: error: {message}"), lines
    assert not out.exists()


def test_weights_labels_and_the_default_grid():
    assert parse_weights("0.1, 0.7", 2) == [(0.1, 0.9), (0.7, 0.3)]
    assert parse_weights("0.2:0.8", 2) == [(0.2, 0.8)]
    assert parse_weights("0.2:0.3:0.5,0:0:1", 3) == [(0.2, 0.3, 0.5), (0.0, 0.0, 1.0)]
    with pytest.raises(ValueError, match="has 1 weight"):
        parse_weights("0.5", 3)
    assert point_label("iama", (0.3, 0.7)) == "iama-w0.3"
    assert point_label("grpo", (0.2, 0.3, 0.5)) == "grpo-w0.2-0.3-0.5"
    assert default_weights(2)[0] == (0.1, 0.9) and len(default_weights(2)) == 5
    grid = default_weights(3)
    assert len(grid) == 6 and all(abs(sum(w) - 1) < 1e-9 and min(w) > 0 for w in grid)


def test_a_sweep_grows_by_weights_and_methods_but_not_by_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from iama.config import ConfigError, load_config, to_dict
    from iama.sweep import merge_with_saved

    base = load_config(TINY)
    path = tmp_path / "sweep.yaml"
    settings = {"eval_prompts": 4, "m": 4}
    path.write_text(yaml.safe_dump({**to_dict(base), "sweep": {"weights": [[0.7, 0.3]], "methods": ["grpo"],
                                                               **settings}}))
    assert merge_with_saved(path, base, settings, None, None) == ([(0.7, 0.3)], ["grpo"])
    assert merge_with_saved(path, base, settings, [(0.3, 0.7), (0.7, 0.3)], ["iama"]) == (
        [(0.3, 0.7), (0.7, 0.3)], ["iama", "grpo"])
    with pytest.raises(ValueError, match=r"another config \(m differ\)"):
        merge_with_saved(path, base, {**settings, "m": 8}, None, None)
    with pytest.raises(ValueError, match=r"another config \(trl.learning_rate differ\)"):
        merge_with_saved(path, load_config(TINY, ["learning_rate=1e-3"]), settings, None, None)
    assert merge_with_saved(path, load_config(TINY, ["sweep_reference=[-1, -1]"]), settings, None, None)
    with pytest.raises(ConfigError, match="sweep_reference must be a list of 2 numbers"):
        load_config(TINY, ["sweep_reference=[1]"])


def test_the_fronts_vote_on_the_pools_answers():
    """A maj:N criterion's value in the sweep's analysis is maj@N over every N-subset of each prompt's pool, read
    from the pool's answers (a sweep of a voting criterion against another)."""
    import itertools

    import numpy as np

    from iama.pools import Pool
    from iama.objective import Criterion
    from iama.sweep import _values_at
    from test_majority import vote

    answers = np.array([["a", "b", "b", None, "a", "c"], ["x", "x", "y", "y", "y", None]], dtype=object)
    correct = np.array([[1, 0, 0, 0, 1, 0], [0, 0, 1, 1, 1, 0]], dtype=float)
    other = np.random.default_rng(0).normal(size=correct.shape)
    pool = Pool("p", [0, 1], np.stack([other, correct], axis=2), None, ["style", "correct"],
                answers={"correct": answers})
    for n in (1, 2, 3, 5):
        brute = [np.mean([vote(answers[i, list(d)], correct[i, list(d)])
                          for d in itertools.combinations(range(6), n)]) for i in range(2)]
        np.testing.assert_allclose(_values_at(pool, Criterion("correct", f"maj:{n}"), n), brute)
    np.testing.assert_allclose(_values_at(pool, Criterion("style", "sampling"), 4), other.mean(1))


@pytest.mark.slow
def test_a_sweep_over_seeds_resumes_from_its_pools_alone(tmp_path, capsys, importable):
    """With --seeds every point is trained once per seed and the report reads seeds and prompts; once a point's
    pool and KL are on file its weights are not needed: with runs/ gone (a sweep continued elsewhere from its
    committed evaluation) nothing is trained or sampled again and the report is the same."""
    import shutil

    out = tmp_path / "sweep"
    args = [*sweep(out, "--seeds", "0,1")]
    args[args.index("0.3,0.7")] = "0.5"
    assert main(args) == 0
    assert "4 points (iama, grpo at 1 weights), 0 finished, 4 to train" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == [0, 1] and set(report["points"]) == {"iama-w0.5@0", "iama-w0.5@1", "grpo-w0.5@0",
                                                                    "grpo-w0.5@1"}
    assert report["points"]["grpo-w0.5@1"]["run"] == "runs/grpo-w0.5-s1"
    hv = report["fronts"]["4"]["methods"]["iama"]["hypervolume"]
    assert hv["se_between"] is not None and hv["ci_low"] <= hv["mean"] <= hv["ci_high"]
    assert report["primary"]["n"] == 4 and "turning" in report["primary"]
    # the eval report groups the seeds into methods
    assert set(json.loads((out / "eval" / "report.json").read_text())["methods"]["methods"]) >= {"iama-w0.5"}

    shutil.rmtree(out / "runs")
    assert main(args) == 0
    assert "4 finished, 0 to train" in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())
    assert again["fronts"] == report["fronts"] and again["kl"] == report["kl"]

"""Intervals as `iama eval` and `iama sweep` report them: inside each quantity's range, seeds resampled with the
prompts, the primary and turning contrasts against their definitions, and the bad input around them."""

import json

import numpy as np
import pytest

from iama.cli import main
from iama.estimate import estimate, seed_groups
from iama.evaluate import evaluate
from iama.pools import Pool
from iama.objective import Criterion
from iama.stats import bootstrap_weights, percentile_ci, seed_draws, seed_resample
from iama.sweep import _contrasts, parse_seeds


def _pool_file(path, solved, prompts=60, m=16):
    """A hand-written pool in the documented JSONL: `solved` of `prompts` prompts have one right answer among
    their M samples (so pass@M is 1 there and 0 elsewhere)."""
    lines = []
    for i in range(prompts):
        scores = [1.0 if (i < solved and k == 0) else 0.0 for k in range(m)]
        lines.append({"prompt": f"What is {i} + 1?", "model": "model",
                      "candidates": [{"text": str(i + 1) if s else "no", "scores": {"correct": s}} for s in scores],
                      "criteria": [{"name": "correct", "reward": "answer", "algorithm": f"bon:{m}", "weight": 1.0}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_pass_at_m_of_57_of_60_stays_inside_0_1(tmp_path):
    pool = _pool_file(tmp_path / "pool.jsonl", solved=57)
    report = evaluate(pools=[pool], out=tmp_path / "out", plots=False, bootstrap=200)
    passk = report["models"]["model"]["values"]["correct"]["bon"]
    i = passk["n"].index(16)
    assert passk["mean"][i] == pytest.approx(0.95)
    assert 0 < passk["ci_low"][i] < 0.95 < passk["ci_high"][i] < 1  # the normal interval reached 1.006
    # the objective (one criterion, weight 1) is the same quantity: the same interval
    obj = report["models"]["model"]["objective_configured"]
    assert (obj["ci_low"], obj["ci_high"]) == pytest.approx((passk["ci_low"][i], passk["ci_high"][i]))
    assert report["criteria"][0]["range"] == [0.0, 1.0]
    assert "Wilson" in report["ci_method"]["values"] and "fixed" in report["ci_method"]["trained_model"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["models"]["model"]["values"]["correct"]["bon"]["ci_high"][i] < 1


def test_a_gzipped_pool_reads_as_the_plain_one(tmp_path):
    import gzip

    plain = _pool_file(tmp_path / "pool.jsonl", solved=40, prompts=50)
    packed = tmp_path / "packed.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = evaluate(pools=[plain], out=tmp_path / "a", plots=False, bootstrap=50)
    b = evaluate(pools=[packed], out=tmp_path / "b", plots=False, bootstrap=50)
    assert a["models"] == b["models"]


def _binary_pools(rng, labels, p, m, rates):
    return [Pool(k, [f"q{i}" for i in range(p)], (rng.random((p, m, 1)) < r).astype(float), None, ["ok"])
            for k, r in zip(labels, rates)]


def test_every_interval_of_a_0_1_criterion_stays_in_range():
    rng = np.random.default_rng(3)
    pools = _binary_pools(rng, ["ref", "a"], 30, 8, [0.97, 0.99])
    report = estimate(pools, [Criterion("ok", "bon:4", 1.0, reward="answer")], reference="ref", bootstrap=100,
                      algorithms=["won"])
    for label in ("ref", "a"):
        for fam, curve in report["models"][label]["values"]["ok"].items():
            assert all(0 <= lo <= v <= hi <= 1 for lo, v, hi in zip(curve["ci_low"], curve["mean"], curve["ci_high"]))
    for curve in report["win_rates"]["a"]["ok"].values():
        assert all(0 <= lo <= hi <= 1 for lo, hi in zip(curve["ci_low"], curve["ci_high"]))
    d = report["models"]["a"]["objective_configured"]["minus_reference"]
    assert -1 <= d["ci_low"] <= d["mean"] <= d["ci_high"] <= 1


def test_seed_level_intervals_widen_when_seeds_differ_and_not_when_they_agree():
    rng = np.random.default_rng(0)
    p, m = 80, 8
    crit = [Criterion("ok", "bon:4", 1.0, reward="answer")]
    base = _binary_pools(rng, ["untrained"], p, m, [0.3])
    one = _binary_pools(rng, ["solo"], p, m, [0.5])[0]
    # the same trained model three times: the seeds agree, and the interval is the prompts' alone
    agree = [Pool(f"g@{s}", one.prompts, one.rewards, None, ["ok"]) for s in range(3)]
    report = estimate(base + [one] + agree, crit, reference="untrained", bootstrap=400)
    g = report["methods"]["methods"]["g"]["minus_reference"]
    solo = report["models"]["solo"]["objective_configured"]["minus_reference"]
    assert g["mean"] == pytest.approx(solo["mean"]) and g["se_between"] == pytest.approx(0.0, abs=1e-12)
    assert g["ci_high"] - g["ci_low"] == pytest.approx(solo["ci_high"] - solo["ci_low"], rel=0.2)
    # seeds far apart: the seed part dominates
    differ = [Pool(f"g@{s}", one.prompts, (rng.random((p, m, 1)) < r).astype(float), None, ["ok"])
              for s, r in enumerate([0.2, 0.5, 0.8])]
    report = estimate(base + differ, crit, reference="untrained", bootstrap=400)
    g2 = report["methods"]["methods"]["g"]["minus_reference"]
    assert g2["se_between"] > 2 * g2["se_within"]
    assert g2["ci_high"] - g2["ci_low"] > 2 * (g["ci_high"] - g["ci_low"])
    # the method's value is the mean over its seeds of each seed's value
    seeds = [report["models"][f"g@{s}"]["objective_configured"]["mean"] for s in range(3)]
    assert report["methods"]["methods"]["g"]["objective_configured"]["mean"] == pytest.approx(np.mean(seeds))


def test_a_method_can_be_the_reference():
    rng = np.random.default_rng(1)
    pools = _binary_pools(rng, ["a@0", "a@1", "b@0", "b@1"], 40, 8, [0.4, 0.45, 0.6, 0.65])
    report = estimate(pools, [Criterion("ok", "bon:2", 1.0, reward="answer")], reference="a", bootstrap=200)
    assert report["reference"] == "a" and report["reference_model"] == "a@0"
    d = report["methods"]["methods"]["b"]["minus_reference"]
    assert d["ci_low"] < d["mean"] < d["ci_high"] and report["methods"]["reference"] == "a"


@pytest.mark.parametrize("labels, message", [
    (["grpo@0", "iama@0", "iama@1"], "method 'grpo' has one seed (grpo@0): a seed-level interval needs two or more"),
    (["grpo", "grpo@0", "grpo@1"], "'grpo' is both a model and a method of seeds"),
    (["grpo@", "x"], "model label 'grpo@': write METHOD@SEED"),
])
def test_seed_labels_that_cannot_be_grouped(labels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        seed_groups(labels)


def test_turning_contrast_against_its_definition():
    """diff(N_max) - diff(1) on a hand-made report: its mean from the two differences, its interval the
    percentile interval of the paired resamples; the secondary budgets Bonferroni-adjusted."""
    rng = np.random.default_rng(0)
    samples = {n: {"iama": rng.normal(n / 10, 0.01, 500), "grpo": rng.normal(0.2, 0.01, 500)} for n in (1, 2, 4, 8)}
    fronts = {str(n): {"difference": {"mean": n / 10 - 0.2, "ci_low": 0, "ci_high": 0}} for n in (1, 2, 4, 8)}
    out = _contrasts(fronts, samples, 4, [1, 2, 4, 8], 0.95)
    t = out["turning"]
    assert (t["n_high"], t["n_low"]) == (8, 1) and t["mean"] == pytest.approx((0.8 - 0.2) - (0.1 - 0.2))
    lo, hi = percentile_ci((samples[8]["iama"] - samples[8]["grpo"]) - (samples[1]["iama"] - samples[1]["grpo"]))
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((float(lo), float(hi)))
    assert out["n"] == 4 and out["secondary"]["n"] == [1, 2, 8]
    assert out["secondary"]["confidence"] == pytest.approx(1 - 0.05 / 3)
    adj = fronts["8"]["difference"]["adjusted"]
    lo, hi = percentile_ci(samples[8]["iama"] - samples[8]["grpo"], 1 - 0.05 / 3)
    assert (adj["ci_low"], adj["ci_high"]) == pytest.approx((float(lo), float(hi)))
    assert "adjusted" not in fronts["4"]["difference"]


def test_seed_draws_are_shared_so_a_method_minus_itself_is_zero():
    """The same draws at two budgets pair them: a statistic that does not change with N gives a turning
    contrast of exactly 0."""
    per_seed = np.random.default_rng(0).normal(size=(3, 200))
    draws = seed_draws(3, 200, 5)
    np.testing.assert_array_equal(seed_resample(per_seed, draws) - seed_resample(per_seed, draws), 0)
    assert bootstrap_weights(10, 4, 0).shape == (4, 10)


def test_sweep_seeds_parse_and_refuse_a_single_one():
    assert parse_seeds("0, 1,2,1") == [0, 1, 2] and parse_seeds(None) is None
    with pytest.raises(ValueError, match="needs two or more seeds"):
        parse_seeds("0")
    with pytest.raises(ValueError, match="not a list of whole numbers"):
        parse_seeds("0,a")


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "3"], "--seeds '3': a seed-level interval needs two or more seeds"),
    (["--primary-n", "32"], "--primary-n 32: the primary contrast's budget must be between 1 and M = 4"),
    (["--eval-offset", "3"], "--eval-offset 3 would evaluate on prompts the runs trained on (the first 16)"),
])
def test_sweep_bad_contrast_input_is_one_line_before_training(tmp_path, capsys, extra, message):
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[1] / "iama" / "configs" / "length-tiny.yaml"
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny), "max_prompts=16", "--steps", "1", "--out", str(out), "-M", "4", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"iama: error: {message}")
    assert not out.exists()


def test_eval_refuses_seeds_of_different_runs_naming_the_one_that_differs(tmp_path, capsys):
    """Two run folders labelled as seeds of one method whose configs differ beyond the seed: one line, before any
    model loads (the run folders hold only their configs here)."""
    import yaml

    from iama.config import load_config, to_dict

    tiny = load_config("configs/length-tiny.yaml")
    runs = []
    for seed, lr in [(0, 1e-4), (1, 3e-4)]:
        run = tmp_path / f"run{seed}"
        (run / "final").mkdir(parents=True)
        (run / "final" / "config.json").write_text("{}")
        cfg = to_dict(tiny)
        cfg.update(seed=seed, output_dir=str(run))
        cfg.setdefault("trl", {})["learning_rate"] = lr
        (run / "iama_config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(run)
    out = tmp_path / "eval"
    code = main(["eval", f"g@0={runs[0]}", f"g@1={runs[1]}", "--out", str(out), "--limit", "2", "-M", "4"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"iama: error: g@1 ({runs[1] / 'final'}) is not a seed of the same method as g@0: "
                   "trl.learning_rate differ"]
    assert not out.exists()

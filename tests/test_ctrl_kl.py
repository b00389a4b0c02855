"""experiments/ctrl.py, InfAlign's claim at matched KL: the contrasts against their definition, the initial beta
against the planner, the training-KL flags, the report from hand-made pools, bad input through main() (one line,
exit 2, nothing trained), and the whole pipeline on the tiny model, resumed from its pools alone."""

import csv
import gzip
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from iama.cli import main as iama_main
from iama.ctrl import CalibrationStore, beta_for_kl, fill, plan
from iama.stats import bootstrap_weights

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ctrl_kl", ROOT / "experiments" / "ctrl.py")
ctrl = sys.modules["ctrl_kl"] = importlib.util.module_from_spec(_spec)  # registered first: it has a dataclass
_spec.loader.exec_module(ctrl)

TINY = ["--model", "tiny-gpt2", "--prompts", "builtin:tiny", "--train-prompts", "4", "--eval-prompts", "4",
        "--k", "4", "-M", "4", "--steps", "2", "--seeds", "0", "--quiet"]


# ---------------------------------------------------------------------------------------------------------------
# the contrasts


def _wins(rng, targets, seeds, prompts=40):
    return {(r, t, s): rng.uniform(0, 1, prompts) for r in ctrl.REWARDS for t in targets for s in seeds}


def test_contrast_is_its_definition_and_its_average_over_targets():
    rng = np.random.default_rng(0)
    targets, seeds = [0.02, 0.04, 0.08], [0, 1]
    wins = _wins(rng, targets, seeds)
    boot = bootstrap_weights(40, 500, 0)
    got = ctrl.contrasts(wins, "transformed", "raw", targets, seeds, boot)
    for t, entry in zip(targets, got["per_target"]):
        expect = (np.mean([wins["transformed", t, s].mean() for s in seeds])
                  - np.mean([wins["raw", t, s].mean() for s in seeds]))
        assert entry["target"] == t and entry["mean"] == pytest.approx(expect)
        assert entry["ci_low"] < entry["mean"] < entry["ci_high"] and entry["held"]
    assert got["average"]["mean"] == pytest.approx(np.mean([e["mean"] for e in got["per_target"]]))
    assert got["average"]["targets"] == targets and "average_held" not in got
    assert got["interval"] == "seeds, then prompts"


def test_contrast_is_paired_in_prompts():
    """Rewards evaluated on the same prompts: a difference that is the same on every prompt and seed has no
    uncertainty, however much the prompts differ from each other."""
    rng = np.random.default_rng(1)
    targets, seeds = [0.05], [0, 1]
    base = rng.uniform(0, 0.9, 60)
    wins = {("raw", 0.05, s): base for s in seeds} | {("transformed", 0.05, s): base + 0.1 for s in seeds}
    got = ctrl.contrasts(wins, "transformed", "raw", targets, seeds, bootstrap_weights(60, 500, 0))
    entry = got["per_target"][0]
    assert entry["mean"] == pytest.approx(0.1)
    assert entry["ci_low"] == pytest.approx(0.1) and entry["ci_high"] == pytest.approx(0.1)


def test_contrast_interval_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    noise = rng.uniform(-0.05, 0.05, (4, 80))
    agree = {("raw", 0.05, 0): 0.5 + noise[0], ("raw", 0.05, 1): 0.5 + noise[1],
             ("transformed", 0.05, 0): 0.6 + noise[2], ("transformed", 0.05, 1): 0.6 + noise[3]}
    disagree = dict(agree)
    disagree["transformed", 0.05, 0] = 0.45 + noise[2]  # the same mean over seeds, 0.6
    disagree["transformed", 0.05, 1] = 0.75 + noise[3]
    boot = bootstrap_weights(80, 1000, 0)
    a = ctrl.contrasts(agree, "transformed", "raw", [0.05], [0, 1], boot)["per_target"][0]
    d = ctrl.contrasts(disagree, "transformed", "raw", [0.05], [0, 1], boot)["per_target"][0]
    assert a["mean"] == pytest.approx(d["mean"])
    assert d["ci_high"] - d["ci_low"] > 3 * (a["ci_high"] - a["ci_low"])
    one = ctrl.contrasts(agree, "transformed", "raw", [0.05], [0], boot)  # one seed: prompts only
    assert one["interval"] == "prompts only, one seed"


def test_targets_not_held_are_marked_and_averaged_apart():
    rng = np.random.default_rng(3)
    wins = _wins(rng, [0.02, 0.04], [0, 1])
    got = ctrl.contrasts(wins, "identity", "raw", [0.02, 0.04], [0, 1], bootstrap_weights(40, 300, 0),
                         held={0.02: True, 0.04: False})
    assert [e["held"] for e in got["per_target"]] == [True, False]
    assert got["average_held"]["targets"] == [0.02]
    assert got["average_held"]["mean"] == pytest.approx(got["per_target"][0]["mean"])


def test_verdict():
    assert ctrl.verdict({"mean": 0.05, "ci_low": 0.01, "ci_high": 0.09}) == "holds"
    assert ctrl.verdict({"mean": 0.05, "ci_low": -0.01, "ci_high": 0.09}) == "holds in direction only"
    assert ctrl.verdict({"mean": -0.01, "ci_low": -0.05, "ci_high": 0.02}) == "fails"
    assert ctrl.verdict({"mean": 0.0, "ci_low": -0.05, "ci_high": 0.05}) == "fails"


# ---------------------------------------------------------------------------------------------------------------
# training KL and the initial beta


def _metrics(path, kls, betas=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "kl", "beta", "step_time"])
        w.writeheader()
        for i, kl in enumerate(kls, start=1):
            w.writerow({"step": i, "kl": kl, "beta": (betas or [1.0] * len(kls))[i - 1], "step_time": 2.0})
        w.writerow({"step": len(kls), "kl": "", "beta": "", "step_time": ""})  # TRL's closing row has no KL


def test_training_kl_over_the_last_quarter_and_the_off_target_flag(tmp_path):
    kls = [0.0, 0.01, 0.03, 0.05, 0.06, 0.05, 0.045, 0.055]
    _metrics(tmp_path / "held.csv", kls, betas=[1, 1, 1, 1, 1, 1, 2.0, 8.0])
    got = ctrl.training_kl(tmp_path / "held.csv", 0.05)
    assert got["kl_last_quarter"] == pytest.approx(0.05)  # steps 7 and 8
    assert not got["off_target"] and got["off_by"] == pytest.approx(0.0, abs=1e-12)
    assert got["reached_step"] == 4 and got["steps"] == 8 and got["step_time_s"] == 2.0
    assert got["beta_last_quarter"] == pytest.approx(4.0)  # geometric mean of 2 and 8
    _metrics(tmp_path / "low.csv", [0.0, 0.01, 0.02, 0.03])
    low = ctrl.training_kl(tmp_path / "low.csv", 0.05)
    assert low["off_target"] and low["off_by"] == pytest.approx(-0.4) and low["reached_step"] is None
    assert not ctrl.training_kl(tmp_path / "low.csv", 0.035)["off_target"]  # 0.03 is 14% under
    assert ctrl.training_kl(tmp_path / "missing.csv", 0.05) == {}


@pytest.mark.parametrize("spec,kl", [("identity", 0.3), ("exp:12.6", 1.6), ("negexp:9.7", 0.8)])
def test_initial_beta_of_a_calibrated_reward_is_the_planners(spec, kl):
    from iama.transforms import parse_transform

    assert ctrl.initial_beta([parse_transform(spec)], kl) == pytest.approx(beta_for_kl(spec, kl), rel=1e-6)


def test_initial_beta_of_the_raw_reward_follows_its_scale_and_the_target():
    rng = np.random.default_rng(4)
    store = CalibrationStore()
    for i in range(6):
        store.add(f"prompt {i}", "sentiment", rng.normal(0, 0.2 + 0.1 * i, 16))
    phis = ctrl.reward_phis(store, "sentiment", "raw", "exp:5")
    beta = ctrl.initial_beta(phis, 1.0)
    scaled = CalibrationStore()
    for p, r in store.rewards["sentiment"].items():
        scaled.add(p, "sentiment", 3 * np.array(r) - 7)  # three times the scale, shifted
    assert ctrl.initial_beta(ctrl.reward_phis(scaled, "sentiment", "raw", "exp:5"), 1.0) == pytest.approx(3 * beta)
    assert ctrl.initial_beta(phis, 0.5) > beta  # a smaller KL needs a larger beta
    # the KL at that beta, averaged over the prompts, is the target
    from iama.ctrl import tradeoff

    assert np.mean([tradeoff(phi, beta)["kl"] for phi in phis]) == pytest.approx(1.0, rel=1e-6)
    flat = CalibrationStore()
    flat.add("p", "sentiment", [0.5] * 8)
    with pytest.raises(ctrl.InputError, match="the same on every reference sample"):
        ctrl.initial_beta(ctrl.reward_phis(flat, "sentiment", "raw", "exp:5"), 1.0)


# ---------------------------------------------------------------------------------------------------------------
# the report from hand-made files


def _pool_line(label, prompt, rewards, task):
    return json.dumps({"prompt": prompt, "model": label, "candidates": [
        {"text": "x", "num_tokens": 10, "finished": True, "scores": {task: float(r)}} for r in rewards]})


def test_analyse_reads_pools_kl_and_logs_into_rows_contrasts_report_and_plot(tmp_path):
    """Hand-made pools with known win rates: best-of-4 of a pool whose every sample beats every reference sample
    wins 1, of an identical pool 1/2."""
    out, task, prompts = tmp_path / "out", "sentiment", [f"p{i}" for i in range(12)]
    design = {"tasks": [task], "rewards": ["raw", "transformed"], "targets": [0.05, 0.1], "seeds": [0, 1],
              "pilot": False, "model": "m", "prompts": "builtin", "steps": 8, "learning_rate": 1e-4,
              "kl_gain": 0.1, "max_completion_length": 32, "eval_prompts": 12, "eval_offset": 64, "m": 4,
              "beta_scale": 0.5}
    rng = np.random.default_rng(5)
    ref = rng.uniform(0, 1, (12, 4))
    lines, kl = [_pool_line("reference", p, r, task) for p, r in zip(prompts, ref)], {}
    runs = [ctrl.Run(task, r, t, s) for r in design["rewards"] for t in design["targets"] for s in design["seeds"]]
    for run in runs:
        rewards = ref + 2.0 if run.reward == "transformed" else ref  # transformed beats everything: win rate 1
        path = out / task / "eval" / "pools" / f"{run.label}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(_pool_line(run.label, p, r, task) for p, r in zip(prompts, rewards)) + "\n"
        if run.seed == 1:  # committed results keep their pools gzipped
            (path.parent / f"{run.label}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
        kl[run.label] = {"key": "k", "per_prompt": [run.target * 20] * 12}
        _metrics(out / task / "runs" / run.label / "metrics.csv",
                 [run.target] * 8 if run.target == 0.05 else [run.target / 2] * 8)  # 0.1 is not held
    (out / task / "eval" / "pools" / "reference.jsonl").write_text("\n".join(lines) + "\n")
    (out / task / "eval" / "kl.json").write_text(json.dumps(kl))
    (out / task / "plan.json").write_text(json.dumps({"transform": "exp:12.6", "initial_beta": {
        r: {"0.05": 1.0, "0.1": 0.5} for r in design["rewards"]}}))

    got = ctrl.analyse(design, out, bootstrap=200)
    rows = {r["label"]: r for r in got["rows"]}
    assert len(rows) == 8
    assert rows["transformed-kl0.05-s1"]["win_rate"] == pytest.approx(1.0)
    assert rows["raw-kl0.1-s0"]["win_rate"] == pytest.approx(0.5)
    assert rows["raw-kl0.1-s0"]["pool_kl"] == pytest.approx(2.0)
    assert rows["raw-kl0.1-s0"]["pool_kl_per_token"] == pytest.approx(0.2)  # 10 tokens a completion
    assert not rows["raw-kl0.05-s0"]["off_target"] and rows["raw-kl0.1-s0"]["off_target"]
    primary = got["contrasts"][task]["primary"]
    assert [e["mean"] for e in primary["per_target"]] == pytest.approx([0.5, 0.5])
    assert [e["held"] for e in primary["per_target"]] == [True, False]
    assert primary["verdict"] == "holds" and "secondary" not in got["contrasts"][task]
    assert primary["at_matched_pool_kl"] == pytest.approx(0.5)

    report = {"command": "python experiments/ctrl.py", "design": design, **got}
    ctrl.write_report(report, out)
    ctrl.plot(report, out)
    md = (out / "ctrl.md").read_text()
    assert "the claim **holds**" in md and "+0.500 [+0.500, +0.500] †" in md
    assert "**off** (-50%)" in md and "Off target: sentiment raw-kl0.1-s0" in md
    assert (out / "ctrl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a pilot gives no verdict, and the numbers its rules read: the last quarter's beta was 1 for every run,
    # started at 1 (target 0.05) or 0.5 (0.1) by a beta scale of 0.5
    pilot = ctrl.analyse({**design, "pilot": True}, out, bootstrap=200)
    assert "verdict" not in pilot["contrasts"][task]["primary"]
    assert pilot["pilot"]["beta_scale"] == pytest.approx(0.5 * math.sqrt(2))
    assert pilot["pilot"]["held"] == {"0.05": True, "0.1": False}
    assert pilot["pilot"]["latest_reached_step"] is None  # the runs at 0.1 stayed at half of it
    assert len(pilot["pilot"]["not_reached"]) == 4 and all("kl0.1-" in x for x in pilot["pilot"]["not_reached"])


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing trained


def _fails(capsys, argv, match):
    assert ctrl.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    return err[0]


@pytest.mark.parametrize("targets,match", [("0,0.05", "positive per-token KL, got 0"),
                                           ("-0.1", "positive per-token KL, got -0.1"),
                                           ("nan", "positive per-token KL, got nan"),
                                           ("0.05,abc", "--targets '0.05,abc': write numbers"),
                                           ("0.05,0.05", "repeats a value")])
def test_a_kl_target_must_be_positive(tmp_path, capsys, targets, match):
    _fails(capsys, [*TINY, "--targets", targets, "--out", str(tmp_path / "out")], match)
    assert not (tmp_path / "out").exists()


def test_a_transform_not_of_the_planners_family_for_the_decoding(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(capsys, [*TINY, "--transform", "harmlessness=exp:5", "--out", str(out)],
           "the planner makes negexp:t for won:4, not exp:5")
    _fails(capsys, [*TINY, "--transform", "sentiment=identity", "--out", str(out)],
           "the planner makes exp:t for bon:4, not identity")
    _fails(capsys, [*TINY, "--tasks", "sentiment", "--transform", "harmlessness=negexp:5", "--out", str(out)],
           "'harmlessness' is not one of the tasks run")
    assert not out.exists()


def test_a_plan_made_for_another_decoding(tmp_path, capsys):
    out = tmp_path / "out"
    path = tmp_path / "ctrl_plan.json"
    path.write_text(json.dumps(plan("won:4", 0.5, "negexp")))  # what `iama ctrl-plan --algorithm won:4` records
    _fails(capsys, [*TINY, "--plan", f"sentiment={path}", "--out", str(out)],
           "the plan was made for won:4, but sentiment is decoded with bon:4")
    (tmp_path / "other.json").write_text("{}")
    _fails(capsys, [*TINY, "--plan", f"sentiment={tmp_path / 'other.json'}", "--out", str(out)],
           "not a plan written by `iama ctrl-plan`")
    _fails(capsys, [*TINY, "--plan", f"harmlessness={path}", "--transform", "harmlessness=negexp:3",
                    "--out", str(out)], "give --plan or --transform, not both")
    assert not out.exists()
    # a plan for the task's own decoding is taken as it is
    assert ctrl.transform_for("harmlessness", path, None, 0.5)["spec"] == json.loads(path.read_text())[
        "best_transform"]


def _store(path, model):
    fill(path, ["a", "b"], lambda batch, k: [["x"] * k for _ in batch], {"sentiment": lambda prompts, completions,
         **kw: [0.1] * len(completions)}, k=2, progress=False, model=model)
    return path


def test_a_calibration_store_from_another_model(tmp_path, capsys):
    out = tmp_path / "out"
    _store(out / "sentiment" / "calibration.json", "smollm2-135m-instruct")
    line = _fails(capsys, [*TINY, "--tasks", "sentiment", "--out", str(out)],
                  "was sampled from model 'smollm2-135m-instruct', not 'tiny-gpt2'")
    assert str(out / "sentiment" / "calibration.json") in line
    assert sorted(p.name for p in out.rglob("*")) == ["calibration.json", "sentiment"]  # nothing else written
    given = _store(tmp_path / "elsewhere.json", "smollm2-135m-instruct")
    _fails(capsys, [*TINY, "--tasks", "sentiment", "--calibration", f"sentiment={given}",
                    "--out", str(tmp_path / "out2")], "was sampled from model 'smollm2-135m-instruct'")
    assert not (tmp_path / "out2").exists()


def test_stores_record_their_model_and_old_ones_stay_readable(tmp_path):
    path = _store(tmp_path / "s.json", "tiny-gpt2")
    assert json.loads(path.read_text())["model"] == "tiny-gpt2"
    CalibrationStore(path).check_model("tiny-gpt2")
    with pytest.raises(ValueError, match="sampled from model 'tiny-gpt2', not 'other'"):
        CalibrationStore(path).check_model("other")
    with pytest.raises(ValueError, match="sampled from model 'tiny-gpt2'"):  # no filling it with another model
        _store(path, "other")
    old = tmp_path / "old.json"  # written before stores recorded their model
    old.write_text(json.dumps({"version": 1, "rewards": {"sentiment": {"a": [0.1, 0.2]}}}))
    CalibrationStore(old).check_model("anything")  # a mismatch is not certain: no error
    _store(old, "tiny-gpt2")  # filled further, it still does not claim a model for the old entries
    stored = json.loads(old.read_text())
    assert "model" not in stored and set(stored["rewards"]["sentiment"]) == {"a", "b"}


def test_iama_train_and_calibrate_refuse_a_store_from_another_model(tmp_path, capsys):
    store = _store(tmp_path / "s.json", "smollm2-135m-instruct")
    overrides = ["criteria=[{name: sentiment, reward: sentiment, algorithm: sampling, calibrated: true}]",
                 f"calibration={store}", "max_prompts=2", "max_steps=1", f"output_dir={tmp_path / 'run'}"]
    config = str(ROOT / "iama" / "configs" / "length-tiny.yaml")
    for argv in (["calibrate", config, *overrides], ["train", config, *overrides]):
        assert iama_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("iama: error: calibration store") and "not 'tiny-gpt2'" in err[-1]
    assert not (tmp_path / "run" / "final").exists()


def test_evaluation_prompts_held_out_or_for_a_pilot_among_the_training_prompts(tmp_path, capsys):
    out = str(tmp_path / "out")
    _fails(capsys, [*TINY, "--eval-offset", "2", "--out", out], "--eval-offset 2 would evaluate on training prompts")
    _fails(capsys, [*TINY, "--pilot", "--eval-prompts", "6", "--out", out],
           "a pilot evaluates on training prompts only: prompts 0 to 5 go beyond the 4 training prompts")
    _fails(capsys, [*TINY, "--eval-prompts", "100", "--out", out], "has 64 prompts, fewer than 4 for training and 100")
    _fails(capsys, [*TINY, "-M", "2", "--out", out], "-M 2 samples per prompt cannot estimate")
    _fails(capsys, [*TINY, "--rewards", "raw,best", "--out", out], "'best' is not one of raw, identity")
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------------------------------------
# the pipeline on the tiny model


@pytest.mark.slow
def test_the_pipeline_trains_evaluates_reports_and_resumes_from_its_pools_alone(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--tasks", "sentiment", "--targets", "0.05,0.1", "--jobs", "2", "--bootstrap", "200",
            "--max-completion-length", "16", "--out", str(out)]
    assert ctrl.main(argv) == 0, capsys.readouterr().err[-3000:]
    first = capsys.readouterr().out
    assert "6 runs (1 tasks x 3 rewards x 2 KL targets x 1 seeds), 0 finished, 6 to train" in first
    report = json.loads((out / "ctrl.json").read_text())
    rows = report["rows"]
    assert len(rows) == 6 and {r["reward"] for r in rows} == set(ctrl.REWARDS)
    for r in rows:
        assert 0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1
        assert math.isfinite(r["pool_kl"]) and r["steps"] == 2 and isinstance(r["off_target"], bool)
        cfg = (out / "sentiment" / "runs" / r["label"] / "config.yaml").read_text()
        assert f"target_kl: {r['target']}" in cfg
    contrasts = report["contrasts"]["sentiment"]
    assert len(contrasts["primary"]["per_target"]) == 2 and "verdict" in contrasts["primary"]
    assert len(contrasts["secondary"]["per_target"]) == 2 and "verdict" not in contrasts["secondary"]
    # the initial beta follows the reward's scale and the target: exp(t u) reaches e^t, u only 1
    betas = json.loads((out / "sentiment" / "plan.json").read_text())["initial_beta"]
    assert betas["transformed"]["0.05"] > 100 * betas["identity"]["0.05"]
    assert all(b["0.05"] > b["0.1"] for b in betas.values())
    md = (out / "ctrl.md").read_text()
    assert "**primary: transformed - raw**" in md and md.count("| sentiment | ") == 6
    assert (out / "ctrl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "sentiment" / "calibration.json").read_text())["model"] == "tiny-gpt2"
    # the pools are drawn as the runs were trained: 16 tokens, not the generation default of 64
    setup = json.loads((out / "sentiment" / "eval" / "report.json").read_text())["setup"]
    assert setup["generation"]["max_new_tokens"] == 16 and setup["prompts"]["offset"] == 4

    # committed results: pools gzipped, no weights, no checkpoints; resumed, nothing is trained or sampled
    for run in (out / "sentiment" / "runs").iterdir():
        if run.is_dir():
            shutil.rmtree(run / "final")
    for pool in (out / "sentiment" / "eval" / "pools").glob("*.jsonl"):
        pool.with_suffix(".jsonl.gz").write_bytes(gzip.compress(pool.read_bytes()))
        pool.unlink()
    assert ctrl.main(argv) == 0, capsys.readouterr().err[-3000:]
    again = capsys.readouterr().out
    assert "6 finished, 0 to train" in again and "evaluating" not in again
    assert json.loads((out / "ctrl.json").read_text())["rows"] == rows

    _fails(capsys, [*argv, "--steps", "3"], "holds an experiment of other settings (steps differ)")

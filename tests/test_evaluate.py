"""`iama eval`: end to end on the tiny model (pools, report, KL and its cache), from pool files with different
labels, the checks before sampling, and its options as the settings dataclass."""

import json

import numpy as np
import pytest
import yaml

from iama.estimate import value_estimates
from iama.evaluate import evaluate

def test_eval_refuses_n_above_m_before_sampling(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"criteria": [{"name": "s", "reward": "length:4:16", "algorithm": "bon:8"}]}))
    with pytest.raises(ValueError, match="M=4 .* N=8") as e:
        evaluate(["tiny-gpt2"], config=cfg, m=4, out=tmp_path / "o", progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown algorithm"):
        evaluate(["tiny-gpt2"], config=cfg, m=8, algorithms=["best"], out=tmp_path / "o", progress=False)

def test_eval_end_to_end_on_the_tiny_model_saves_pools_and_a_report(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"criteria": [
        {"name": "short", "reward": "length:4:16", "algorithm": "bon:2", "weight": 0.5},
        {"name": "long", "reward": "length:12:16", "algorithm": "bon:2", "weight": 0.5}],
        "aggregator": "min", "max_completion_length": 16}))
    out = tmp_path / "eval"
    report = evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                      progress=False, kl=True)
    assert report["setup"]["generation"]["max_new_tokens"] == 16  # from the config's TRL field
    assert sorted(p.name for p in (out / "pools").iterdir()) == ["base.jsonl", "other.jsonl"]
    assert json.loads((out / "report.json").read_text())["reference"] == "base"
    for name in ("values_vs_n.png", "objective_vs_n.png", "pareto.png", "lengths.png", "win_rates.png"):
        assert (out / name).is_file()
    v = report["models"]["other"]["values"]
    expected = np.minimum(v["short"]["bon"]["mean"], v["long"]["bon"]["mean"])  # aggregator: min
    np.testing.assert_allclose(report["models"]["other"]["objective"]["mean"], expected)
    # the same weights under two labels: KL(other || base) from other's pool is zero
    assert report["kl"]["reference"] == "base" and list(report["kl"]["models"]) == ["other"]
    assert report["kl"]["models"]["other"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert "## KL to the reference" in (out / "report.md").read_text()
    # the report is remade from the saved pools alone (criteria and aggregator saved in them), same numbers
    again = evaluate(pools=[out / "pools" / "base.jsonl", out / "pools" / "other.jsonl"], out=tmp_path / "again",
                     bootstrap=100, plots=False)
    assert again["models"]["other"]["objective"]["mean"] == report["models"]["other"]["objective"]["mean"]
    assert again["effective_n"] == report["effective_n"]
    # run again on the same pools: the KL comes from OUT/kl.json, with no forward pass; a changed pool is redone
    import iama.kl

    calls = []
    real_pool_kl = iama.kl.pool_kl
    monkeypatch.setattr(iama.kl, "pool_kl", lambda *a, **k: calls.append(1) or real_pool_kl(*a, **k))
    rerun = evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                     progress=False, kl=True, plots=False)
    assert calls == [] and rerun["kl"] == report["kl"]
    saved = json.loads((out / "kl.json").read_text())
    saved["other"]["key"] = "a pool drawn before"
    (out / "kl.json").write_text(json.dumps(saved))
    assert evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                    progress=False, kl=True, plots=False)["kl"] == report["kl"]
    assert calls == [1]

def test_nan_rewards_are_refused_with_one_line(tmp_path):
    with pytest.raises(ValueError, match="NaN") as e:
        value_estimates(np.array([[0.0, np.nan]]), "bon")
    assert "\n" not in str(e.value)
    line = {"prompt": "p", "model": "m", "candidates": [{"text": "a", "num_tokens": 1, "scores": {"c": float("nan")}}]}
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="line 1: candidate 0 has a non-finite score") as e:
        evaluate(pools=[path], out=tmp_path / "out", plots=False)
    assert "\n" not in str(e.value)

def test_eval_from_pool_files_with_different_labels_aligns_prompts(tmp_path):
    def lines(label, prompts, offset):
        return [{"prompt": p, "model": label,
                 "candidates": [{"text": "x", "num_tokens": k, "scores": {"c": float(k + offset)}} for k in range(4)]}
                for p in prompts]

    path = tmp_path / "pools.jsonl"
    records = lines("a", ["p1", "p2", "p3"], 0) + lines("b", ["p3", "p2", "p4"], 1)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = evaluate(pools=[path], out=tmp_path / "out", plots=False, bootstrap=50, algorithms=["won"])
    assert report["num_prompts"] == 2 and report["setup"]["alignment"]["common_prompts"] == 2
    assert report["criteria"][0]["algorithm"] == "bon:4"  # no config, no decode algorithm: bon:min(4, M)
    # a: rewards 0..3, b: 1..4 on every prompt -> bon:N of b is bon:N of a plus 1
    va = report["models"]["a"]["values"]["c"]["bon"]["mean"]
    vb = report["models"]["b"]["values"]["c"]["bon"]["mean"]
    np.testing.assert_allclose(np.array(vb) - np.array(va), 1.0)
    assert report["models"]["a"]["values"]["c"]["won"]["mean"][-1] == 0.0
    assert (tmp_path / "out" / "report.json").is_file()

def test_eval_options_are_the_settings_dataclass():
    """`iama eval`'s options are EvalSettings' fields with its defaults (not written again in the CLI); an
    unknown setting passed to evaluate() is one clear error."""
    from dataclasses import fields

    from iama.cli import build_parser
    from iama.evaluate import EvalSettings

    args = build_parser().parse_args(["eval", "some-model"])
    defaults = EvalSettings()
    for f in fields(EvalSettings):
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    args = build_parser().parse_args(["eval", "x", "-M", "8", "--no-resume", "--quiet", "--kl", "--top-p", "0.9"])
    assert (args.m, args.resume, args.progress, args.kl, args.top_p) == (8, False, False, True, 0.9)
    assert build_parser().parse_args(["decode", "x"]).limit is None  # decode takes every prompt by default
    with pytest.raises(ValueError, match="unknown evaluation setting.*'samples'"):
        evaluate(["tiny-gpt2"], samples=8)

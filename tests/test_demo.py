"""The main job end to end on the tiny model: both runs train, three pools are drawn, the report states the
effective N of IAMA against GRPO; a second call reuses everything, and other settings stop with one line."""

import json
from pathlib import Path

import pytest

from iama.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end_then_reuses_its_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-gpt2", "--steps", "1", "--eval-prompts", "3", "-M", "4"]
    assert main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["models"]) == ["untrained", "grpo", "iama"] and report["reference"] == "grpo"
    assert report["num_prompts"] == 3
    assert report["setup"]["command"] == f"iama demo --model tiny-gpt2 --steps 1 --eval-prompts 3 -M 4 --out {tmp_path}"
    assert report["setup"]["criteria_from"] == "configs/length.yaml"  # no path of the machine that ran it
    printed = capsys.readouterr().out
    assert "iama with N = 4 matches grpo with N = " in printed and "(objective)" in printed
    assert (tmp_path / "report.md").is_file() and (tmp_path / "lengths.png").is_file()
    assert sorted(p.name for p in (tmp_path / "pools").iterdir()) == ["grpo.jsonl", "iama.jsonl", "untrained.jsonl"]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["trained_now"] == ["grpo", "iama"] and timing["cores"] >= 1
    assert 0 < timing["training_s"] < timing["total_s"]
    assert timing["training_s"] + timing["evaluating_s"] == pytest.approx(timing["total_s"])

    assert main(args) == 0  # finished runs and drawn pools are reused, not redone
    assert capsys.readouterr().out.count("the run is complete") == 2
    assert json.loads((tmp_path / "timing.json").read_text())["trained_now"] == []  # this call trained nothing

    assert main([*args, "--seed", "1"]) == 2  # a finished run is never silently one of other settings
    assert "seed" in capsys.readouterr().err


def test_side_by_side_training_reports_the_failing_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from iama.config import load_config
    from iama.runs import train_side_by_side

    cfg = load_config("configs/length-tiny.yaml", [f"output_dir={tmp_path / 'a'}"])
    args = ["configs/length-tiny.yaml", "model=no/such/model", f"output_dir={tmp_path / 'a'}"]  # fails in the child
    with pytest.raises(RuntimeError, match=r"training a stopped: model 'no/such/model' not found.*a\.log"):
        train_side_by_side({"a": (args, cfg)}, threads=1, progress=False)
    assert not (tmp_path / "a" / "final").exists()

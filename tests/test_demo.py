"""The main job end to end on the tiny model: both runs train, three pools are drawn, the report states the
effective N of IAMA against GRPO; a second call reuses everything, and other settings stop with one line."""

import json

from iama.cli import main


def test_demo_runs_end_to_end_then_reuses_its_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-gpt2", "--steps", "1", "--eval-prompts", "3", "-M", "4"]
    assert main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["models"]) == ["untrained", "grpo", "iama"] and report["reference"] == "grpo"
    assert report["num_prompts"] == 3
    assert report["setup"]["command"] == f"iama demo --model tiny-gpt2 --steps 1 --eval-prompts 3 -M 4 --out {tmp_path}"
    printed = capsys.readouterr().out
    assert "iama with N = 4 matches grpo with N = " in printed and "(objective)" in printed
    assert (tmp_path / "report.md").is_file() and (tmp_path / "lengths.png").is_file()
    assert sorted(p.name for p in (tmp_path / "pools").iterdir()) == ["grpo.jsonl", "iama.jsonl", "untrained.jsonl"]

    assert main(args) == 0  # finished runs and drawn pools are reused, not redone
    assert capsys.readouterr().out.count("the run is complete") == 2

    assert main([*args, "--seed", "1"]) == 2  # a finished run is never silently one of other settings
    assert "seed" in capsys.readouterr().err

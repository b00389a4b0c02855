"""Bad input to voting criteria (maj:N, maj_dense:N) through the command line: one line `iama: error: ...`, exit
2, before any model loads."""

from pathlib import Path

import pytest
import yaml

from iama.cli import main

TINY = Path(__file__).resolve().parents[1] / "iama" / "configs" / "length-tiny.yaml"


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("iama: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("overrides,message", [
    (["criteria=[{name: v, reward: answer, algorithm: 'maj:8'}]", "num_generations=4"],
     "num_generations=4 is smaller than N=8"),
    (["criteria=[{name: v, reward: answer, algorithm: 'maj_dense:8'}]", "num_generations=4", "scale_rewards=batch"],
     "num_generations=4 is smaller than N=8"),
    (["criteria=[{name: v, reward: answer, algorithm: 'maj:4'}]", "estimator=plugin"],
     "criterion 'v': maj:4 has no 'plugin' estimator; use estimator 'unbiased'"),
    (["criteria=[{name: v, reward: 'length:8:32', algorithm: 'maj_dense:4'}]", "scale_rewards=batch"],
     "criterion 'v' uses maj_dense:4, which votes on answers, but its reward 'length:8:32' gives none"),
    (["criteria=[{name: v, reward: answer, algorithm: 'maj_dense:4'}]"],  # the config's scale_rewards: group
     "criterion 'v': maj_dense:4's one factor per prompt cancels under scale_rewards 'group'"),
])
def test_train(overrides, message, tmp_path, monkeypatch, capsys):
    import iama.models
    import iama.trainer

    monkeypatch.setattr(iama.models, "resolve_model", no_model)
    monkeypatch.setattr(iama.trainer, "build_trainer", no_model)
    assert main(["train", str(TINY), *overrides, f"output_dir={tmp_path / 'run'}"]) == 2
    assert message in one_line(capsys)


@pytest.mark.parametrize("argv,message", [
    (["-M", "4", "--config", "MAJ8"], "M=4 samples per prompt cannot estimate N=8 of the criteria; use M >= 8"),
    (["-M", "4", "--config", "DENSE8"], "M=4 samples per prompt cannot estimate N=8 of the criteria; use M >= 8"),
    (["-M", "8", "--config", "DENSE_LENGTH"],
     "criterion 'len' uses maj_dense:8, which votes on answers, but its reward 'length:4:8' gives none"),
    (["-M", "8", "--config", "LENGTH", "--algorithms", "maj_dense"],
     "algorithm maj_dense votes on answers, and no criterion's reward gives them"),
])
def test_eval(argv, message, tmp_path, monkeypatch, capsys):
    pytest.importorskip("math_verify")
    monkeypatch.setattr("iama.backends.make_backend", no_model)
    configs = {"MAJ8": {"criteria": [{"name": "correct", "reward": "answer", "algorithm": "maj:8"}]},
               "DENSE8": {"criteria": [{"name": "correct", "reward": "answer", "algorithm": "maj_dense:8"}],
                          "scale_rewards": "batch"},
               "DENSE_LENGTH": {"criteria": [{"name": "len", "reward": "length:4:8", "algorithm": "maj_dense:8"}],
                                "scale_rewards": "batch"},
               "LENGTH": {"criteria": [{"name": "len", "reward": "length:4:8", "algorithm": "bon:2"}]}}
    for name, config in configs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    argv = [str(tmp_path / f"{a}.yaml") if a in configs else a for a in argv]
    assert main(["eval", "fake", "--limit", "2", "--prompts", "builtin:arith-hard", *argv,
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in one_line(capsys)


def test_decode(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("iama.backends.make_backend", no_model)
    assert main(["decode", "fake", "--prompt", "hi", "--reward", "len=length:4:8", "--algorithm", "maj_dense:2",
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "criterion 'len' uses maj_dense:2, which votes on answers, but its reward 'length:4:8' gives none" in \
        one_line(capsys)

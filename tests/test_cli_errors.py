"""Bad input to every command: one line `iama: error: ...`, exit code 2, before any model loads or anything
trains, and whatever was already written keeps its bytes."""

import os
from pathlib import Path

import pytest
import torch

from iama.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "iama" / "configs" / "length-tiny.yaml"
CTRL = ROOT / "iama" / "configs" / "ctrl-sentiment.yaml"


@pytest.fixture
def no_model(monkeypatch):
    """Every way a command loads a model or starts training fails the test instead."""
    import iama.backends
    import iama.models
    import iama.runs
    import iama.trainer

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded or a run started")

    for module, name in [(iama.models, "load_model"), (iama.models, "resolve_model"), (iama.backends, "make_backend"),
                         (iama.backends, "HFBackend"), (iama.trainer, "build_trainer"),
                         (iama.runs, "train_side_by_side")]:
        monkeypatch.setattr(module, name, forbidden)


def error_line(argv, capsys) -> str:
    """The one line a refused command prints, without its prefix."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("iama: error: "), (code, err)
    return err[0].removeprefix("iama: error: ")


def read_only(folder: Path) -> Path:
    """`folder`, made read-only; the test skips where permissions do not bind (root)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("this user writes to read-only folders (root)")
    return folder


@pytest.fixture
def taken(tmp_path) -> Path:
    """A file where a command is told to write a folder (or the folder of its file)."""
    path = tmp_path / "taken"
    path.write_bytes(b"a user's notes\n")
    yield path
    assert path.read_bytes() == b"a user's notes\n"


# ---------------------------------------------------------------------------------------------------------------
# counts: --steps 0 is not "the config's steps", -M and --eval-prompts are checked before training, enough
# bootstrap resamples for an interval, an empty config is not the defaults


@pytest.mark.parametrize("argv, message", [
    (["demo", "--model", "tiny-gpt2", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["demo", "--model", "tiny-gpt2", "--steps", "-1"], "--steps must be at least 1, got -1"),
    (["demo", "--model", "tiny-gpt2", "-M", "0"], "-M 0 samples per prompt cannot estimate N=4 of the criteria"),
    (["demo", "--model", "tiny-gpt2", "--eval-prompts", "0"], "--eval-prompts must be at least 1, got 0"),
    (["sweep", TINY, "--steps", "0"], "--steps must be at least 1, got 0"),
    (["sweep", TINY, "--bootstrap", "0"], "--bootstrap 0 is too few for 95% intervals: each tail needs a resample, "
                                          "so at least 40"),
    (["eval", "tiny-gpt2", "--config", TINY, "--bootstrap", "0"], "--bootstrap 0 is too few for 95% intervals"),
    (["eval", "tiny-gpt2", "--config", TINY, "--bootstrap", "50", "--confidence", "0.99"],
     "--bootstrap 50 is too few for 99% intervals: each tail needs a resample, so at least 200"),
])
def test_counts_are_checked_before_anything_trains(argv, message, tmp_path, capsys, no_model):
    out = tmp_path / "out"
    assert error_line([*argv, "--out", out], capsys).startswith(message)
    assert not out.exists()


def test_an_empty_config_file_is_not_the_defaults(tmp_path, capsys, no_model):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert error_line(["train", tmp_path / "empty.yaml"], capsys) == \
        f"config file '{tmp_path / 'empty.yaml'}' is empty; write at least the criteria (see configs/)"


# ---------------------------------------------------------------------------------------------------------------
# output paths: checked before any model loads; a file where a folder goes (or the reverse), no permission


def test_eval_out_that_is_a_file(taken, capsys, no_model):
    assert error_line(["eval", "tiny-gpt2", "--config", TINY, "--out", taken], capsys) == \
        f"--out '{taken}' is an existing file, not a folder"


def test_eval_out_inside_a_file(taken, capsys, no_model):
    assert error_line(["eval", "tiny-gpt2", "--config", TINY, "--out", taken / "eval"], capsys) == \
        f"--out '{taken / 'eval'}' is inside '{taken}', which is an existing file, not a folder"


def test_eval_out_read_only(tmp_path, capsys, no_model):
    out = read_only(tmp_path / "ro")
    assert error_line(["eval", "tiny-gpt2", "--config", TINY, "--out", out], capsys) == \
        f"--out '{out}' cannot be written: no write permission on the folder"


def test_decode_out_that_is_a_folder(tmp_path, capsys, no_model):
    assert error_line(["decode", "tiny-gpt2", "--prompt", "hi", "--reward", "n=length:4:8", "--out", tmp_path],
                      capsys) == f"--out '{tmp_path}' is a folder, not a file"


def test_decode_out_in_a_read_only_folder(tmp_path, capsys, no_model):
    out = read_only(tmp_path / "ro") / "picks.jsonl"
    assert error_line(["decode", "tiny-gpt2", "--prompt", "hi", "--reward", "n=length:4:8", "--out", out],
                      capsys).startswith(f"--out '{out}': its folder '{out.parent}' cannot be written")


def test_calibrate_store_that_is_a_folder(tmp_path, capsys, no_model):
    assert error_line(["calibrate", CTRL, "model=tiny-gpt2", f"calibration={tmp_path}"], capsys) == \
        f"calibration store '{tmp_path}' is a folder, not a file"


def test_calibrate_store_in_a_read_only_folder(tmp_path, capsys, no_model):
    store = read_only(tmp_path / "ro") / "calibration.json"
    assert error_line(["calibrate", CTRL, "model=tiny-gpt2", f"calibration={store}"], capsys).startswith(
        f"calibration store '{store}': its folder '{store.parent}' cannot be written")


def test_ctrl_plan_out_that_is_a_file(taken, capsys):
    assert error_line(["ctrl-plan", "--out", taken], capsys) == f"--out '{taken}' is an existing file, not a folder"


def test_lab_out_that_is_a_file(taken, capsys):
    assert error_line(["lab", "toy", "--quick", "--out", taken], capsys) == \
        f"--out '{taken}' is an existing file, not a folder"


def test_sweep_out_that_is_a_file(taken, capsys, no_model):
    assert error_line(["sweep", TINY, "--out", taken], capsys) == f"--out '{taken}' is an existing file, not a folder"


def test_sweep_out_read_only(tmp_path, capsys, no_model):
    out = read_only(tmp_path / "ro")
    assert error_line(["sweep", TINY, "--out", out], capsys) == \
        f"--out '{out}' cannot be written: no write permission on the folder"
    assert list(out.iterdir()) == []


def test_train_output_dir_empty(capsys, no_model):
    assert error_line(["train", TINY, "output_dir="], capsys) == "output_dir is empty: give the run's folder (got None)"


def test_train_output_dir_read_only(tmp_path, capsys, no_model):
    out = read_only(tmp_path / "ro") / "run"
    assert error_line(["train", TINY, f"output_dir={out}"], capsys) == \
        f"output_dir '{out}' cannot be written: no write permission on the folder (its parent '{out.parent}')"


def test_an_error_the_system_raises_while_writing_is_one_line(tmp_path, capsys):
    """What no check foresees (here: a folder where the plot goes) still ends in one line naming the path."""
    (tmp_path / "ctrl_plan.png").mkdir()
    assert error_line(["ctrl-plan", "--algorithm", "bon:2", "--out", tmp_path], capsys) == \
        f"{tmp_path / 'ctrl_plan.png'}: Is a directory"


# ---------------------------------------------------------------------------------------------------------------
# options that ended in tracebacks, and checks that waited for a model they do not need


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_eval_device_cuda_without_cuda(tmp_path, capsys, no_model):
    assert error_line(["eval", "tiny-gpt2", "--config", TINY, "--device", "cuda", "--out", tmp_path / "out"],
                      capsys) == "--device cuda: this machine has 0 CUDA device(s)"


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "float128"], "--dtype 'float128' is not a torch dtype (e.g. float32, bfloat16, float16, auto)"),
    (["--device", "gpu0"], "--device 'gpu0' is not a device (e.g. cpu, cuda, cuda:1)"),
    (["--reference", "grpo"], "--reference 'grpo' is not one of the models ['tiny-gpt2']"),
    (["--confidence", "1.5"], "--confidence must be in (0, 1), got 1.5"),
])
def test_eval_options(argv, message, tmp_path, capsys, no_model):
    assert error_line(["eval", "tiny-gpt2", "--config", TINY, *argv, "--out", tmp_path / "out"], capsys) == message


def test_decode_dtype(capsys, no_model):
    assert error_line(["decode", "tiny-gpt2", "--prompt", "hi", "--reward", "n=length:4:8", "--dtype", "float128"],
                      capsys).startswith("--dtype 'float128' is not a torch dtype")


def test_decode_an_empty_prompt(capsys, no_model):
    assert error_line(["decode", "tiny-gpt2", "--prompt", "", "--reward", "n=length:4:8"], capsys) == \
        "the prompts given are empty (--prompt ''): give a prompt's text"


@pytest.mark.parametrize("option, message", [
    (["--k", "0"], "--k must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
])
def test_calibrate_counts(option, message, tmp_path, capsys, no_model):
    assert error_line(["calibrate", CTRL, "model=tiny-gpt2", f"calibration={tmp_path / 'c.json'}", *option],
                      capsys) == message


def test_a_corrupt_calibration_store_is_named_and_kept(tmp_path, capsys, no_model):
    store = tmp_path / "calibration.json"
    store.write_bytes(b'{"rewards": {"sentiment": ')
    assert error_line(["calibrate", CTRL, "model=tiny-gpt2", f"calibration={store}"], capsys).startswith(
        f"calibration store '{store}' is not one `iama calibrate` wrote (")
    assert store.read_bytes() == b'{"rewards": {"sentiment": '


def test_ctrl_plan_kl_zero(tmp_path, capsys):
    assert error_line(["ctrl-plan", "--kl", "0", "--out", tmp_path / "out"], capsys) == \
        "the KL budget must be a positive finite number, got 0.0"

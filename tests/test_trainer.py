"""The TRL trainer: the hook still fits, advantages equal TRL's for GRPO, many processes agree, runs resume,
bad configs stop before any model loads, the length task splits."""

import csv
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer

from iama.cli import main
from iama.config import ConfigError, load_config
from iama.trainer import RewardFailure, build_trainer, guard_reward, kl_controller, last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "iama" / "configs" / "length-tiny.yaml"
BASELINE = ROOT / "iama" / "configs" / "length-tiny-baseline.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def tiny_cfg(tmp_path, *overrides, path=TINY):
    return load_config(path, ["max_steps=2", "max_prompts=16", "per_device_train_batch_size=16",
                              f"output_dir={tmp_path / 'run'}", *overrides])


def one_batch(trainer):
    trainer.model.train()
    return next(iter(trainer.get_train_dataloader()))


def test_trl_hook_still_fits():
    """The two methods we override exist with the signatures we call (pinned TRL range in pyproject)."""
    assert Version("1.16") <= Version(trl.__version__) < Version("1.17")
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters) == [
        "self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert "gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)
    assert "advantages[process_slice]" in inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # exact resume (IAMATrainer._save_checkpoint, _load_optimizer_and_scheduler, _get_train_sampler, skip_epochs)
    from transformers import Trainer
    from trl.trainer.utils import RepeatSampler

    assert list(inspect.signature(GRPOTrainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(GRPOTrainer._load_optimizer_and_scheduler).parameters) == ["self", "checkpoint"]
    assert list(inspect.signature(GRPOTrainer._get_train_sampler).parameters) == ["self", "dataset"]
    assert "return RepeatSampler(" in inspect.getsource(GRPOTrainer._get_train_sampler)
    # the buffer of generations and the micro-step counter that indexes it, which we save and restore
    assert "self._buffered_inputs[self._step % self.args.steps_per_generation]" in inspect.getsource(
        GRPOTrainer._prepare_inputs)
    assert "self._step += 1" in inspect.getsource(GRPOTrainer.training_step)
    # one permutation per epoch from a generator seeded once, and no set_epoch that would reseed it
    assert "torch.randperm(self.num_samples, generator=self.generator)" in inspect.getsource(RepeatSampler.__iter__)
    assert {"shuffle", "seed"} <= set(inspect.signature(RepeatSampler).parameters)
    assert not hasattr(RepeatSampler, "set_epoch")
    # floor(state.epoch) is the epoch a resumed run starts in; the RNGs are restored after skipping batches
    run_epoch = inspect.getsource(Trainer._run_epoch)
    assert "self.state.epoch = epoch + (step + 1) / steps_in_epoch" in run_epoch
    assert "self._load_rng_state(resume_from_checkpoint)" in run_epoch
    loop = inspect.getsource(Trainer._inner_training_loop)
    assert loop.index("self.get_train_dataloader()") < loop.index("self._prepare_for_training(")  # sampler, then load
    assert "self._load_optimizer_and_scheduler(resume_from_checkpoint)" in inspect.getsource(
        Trainer._prepare_for_training)


def test_sampling_with_group_mean_equals_trl_advantages(tmp_path):
    cfg = tiny_cfg(tmp_path, path=BASELINE)
    assert cfg.baseline == "group_mean" and cfg.scale_rewards == "group"
    trainer, _ = build_trainer(cfg)
    out = GRPOTrainer._generate_and_score_completions(trainer, one_batch(trainer))  # TRL's own advantages
    ours = trainer.iama_estimates(trainer._gathered_rewards, cfg.num_generations).advantages.reshape(-1)
    assert out["advantages"].abs().max() > 0.1
    # TRL divides by std + 1e-4, iama by std alone
    weighted = trainer._gathered_rewards @ torch.tensor([c.weight for c in cfg.criteria])
    std = weighted.view(-1, cfg.num_generations).std(1, keepdim=True).expand(-1, cfg.num_generations).reshape(-1)
    torch.testing.assert_close((ours * std / (std + 1e-4)).to(out["advantages"]), out["advantages"],
                               atol=1e-5, rtol=1e-5)


def test_n_equal_m_objective_still_learns(tmp_path):
    cfg = tiny_cfg(tmp_path, "criteria.0.algorithm=bon:8", "criteria.1.algorithm=bon:8", "scale_rewards=none")
    trainer, _ = build_trainer(cfg)
    out = trainer._generate_and_score_completions(one_batch(trainer))
    adv = out["advantages"].view(-1, 8)
    assert (adv != 0).any(dim=1).all()  # every group has a signal
    rewards = trainer._gathered_rewards.view(-1, 8, 2)
    grpo_style = build_trainer(tiny_cfg(tmp_path, "criteria.0.algorithm=bon:8", "criteria.1.algorithm=bon:8",
                                        "baseline=group_mean", "scale_rewards=none"))[0]
    assert grpo_style.iama_estimates(rewards.reshape(-1, 2), 8).advantages.abs().max() < 1e-6


DIST_SCRIPT = """
import json, sys, torch
from iama.config import load_config
from iama.trainer import build_trainer
cfg = load_config(sys.argv[1], ["max_steps=1", "max_prompts=8", "per_device_train_batch_size=4",
                  "output_dir=" + sys.argv[2], "criteria.1.algorithm=won:4"])
trainer, _ = build_trainer(cfg)
trainer.model.train()
batch = next(iter(trainer.get_train_dataloader()))
out = trainer._generate_and_score_completions(batch)
lengths = out["completion_mask"].sum(1).tolist()
rank = trainer.accelerator.process_index
json.dump({"gathered": trainer._gathered_rewards.tolist(), "advantages": out["advantages"].tolist(),
           "lengths": lengths, "world": trainer.accelerator.num_processes},
          open(sys.argv[2] + f"/rank{rank}.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_compute_the_same_advantages(tmp_path):
    """accelerate launch --num_processes 2 on the CPU: each group of 8 is split 4 + 4 across the processes."""
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(TINY), str(tmp_path)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["gathered"] == ranks[1]["gathered"]
    gathered = np.array(ranks[0]["gathered"])  # (8, 2): one group, half from each process
    assert gathered.shape == (8, 2)
    for r, rank in enumerate(ranks):  # rank r's completions sit at rows 4r..4r+3 of the gathered rewards
        expected = [-((n - 8) / 32) ** 2 for n in rank["lengths"]]
        np.testing.assert_allclose(gathered[4 * r: 4 * r + 4, 0], expected, atol=1e-6)
    cfg = load_config(TINY, ["criteria.1.algorithm=won:4"])
    from iama.config import build_objective

    single = build_objective(cfg)(gathered[None]).advantages.reshape(-1)
    np.testing.assert_allclose(ranks[0]["advantages"] + ranks[1]["advantages"], single, atol=1e-5)


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# what a resumed run must reproduce, step by step: the loss, the rewards, the objective, the KL's beta
SAME_AFTER_RESUME = ("loss", "grad_norm", "learning_rate", "reward", "rewards/short/mean", "rewards/long/mean",
                     "completions/mean_length", "iama/objective", "beta")


def assert_same_run(a, b, after=0):
    """Two run folders: final weights bit-identical, and the same metrics for every step after `after`."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    differ = {k: (wa[k] - wb[k]).abs().max().item() for k in wa if not torch.equal(wa[k], wb[k])}
    assert not differ, differ
    rows_a, rows_b = ([{k: r.get(k) for k in SAME_AFTER_RESUME} | {"step": r["step"]}
                       for r in read_metrics(d / "metrics.csv") if r.get("loss") and int(r["step"]) > after]
                      for d in (a, b))
    assert rows_a and rows_a == rows_b


@pytest.mark.slow
def test_checkpoint_kill_and_resume(tmp_path):
    """SIGKILL after a checkpoint, `iama train` again: the same run as one never interrupted, bit for bit (CPU, one
    thread), whichever checkpoint the kill fell after."""
    out = tmp_path / "run"
    overrides = ["max_steps=12", "save_steps=2", "max_prompts=16", "per_device_train_batch_size=16",
                 "keep_checkpoints=true", "report_to=none"]
    cmd = [sys.executable, "-m", "iama.cli", "train", str(TINY), *overrides, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-4" / "trainer_state.json").is_file():
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    killed_at = int(Path(last_checkpoint(out)).name.split("-")[1])
    assert 4 <= killed_at < 12
    assert (Path(last_checkpoint(out)) / "model.safetensors").is_file()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{killed_at}'}" in done.stdout
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    steps = [int(r["step"]) for r in read_metrics(out / "metrics.csv") if r.get("loss")]
    assert steps == list(range(1, 13))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None
    from iama.trainer import train

    train(load_config(TINY, [*overrides, f"output_dir={tmp_path / 'uninterrupted'}"]))
    assert_same_run(tmp_path / "uninterrupted", out)


class Killed(Exception):
    pass


@pytest.mark.parametrize("overrides, stop_at", [
    # steps_per_generation 1; checkpoint 8 ends the first epoch (16 prompts, 2 per step): epoch 2's order
    ([], 8),
    # one generation per 2 steps, checkpoint 9 in the middle of a buffer and of the second epoch; with the KL
    # controller moving beta
    (["steps_per_generation=2", "save_steps=3", "beta=0.05", "target_kl=0.01"], 9),
])
@pytest.mark.slow
def test_resume_is_the_same_run(tmp_path, monkeypatch, overrides, stop_at):
    """train(cfg) stopped right after checkpoint `stop_at` (as if killed), then train(cfg) again, against one
    uninterrupted train(cfg): final weights bit-identical, the same metrics at every step after the checkpoint."""
    from transformers import TrainerCallback

    import iama.trainer

    common = ["max_steps=12", "save_steps=4", "max_prompts=16", "per_device_train_batch_size=16",
              "keep_checkpoints=true", "report_to=none", "disable_tqdm=true", *overrides]
    iama.trainer.train(load_config(TINY, [*common, f"output_dir={tmp_path / 'a'}"]))

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == stop_at:
                raise Killed  # after the checkpoint is complete, before anything else

    real = iama.trainer.IAMATrainer.train

    def train_and_stop(self, *args, **kwargs):
        self.add_callback(StopAfterSave())
        return real(self, *args, **kwargs)

    cfg = load_config(TINY, [*common, f"output_dir={tmp_path / 'b'}"])
    with monkeypatch.context() as m:
        m.setattr(iama.trainer.IAMATrainer, "train", train_and_stop)
        with pytest.raises(Killed):
            iama.trainer.train(cfg)
    assert last_checkpoint(tmp_path / "b") == str(tmp_path / "b" / f"checkpoint-{stop_at}")
    iama.trainer.train(cfg)
    assert_same_run(tmp_path / "a", tmp_path / "b", after=stop_at)


def test_skip_epochs_keeps_trls_order():
    """A fresh sampler after skip_epochs(e) gives the order TRL's gives in epoch e of an uninterrupted run."""
    from trl.trainer.utils import RepeatSampler

    from iama.trainer import skip_epochs

    def make():
        return RepeatSampler(range(10), mini_repeat_count=2, batch_size=3, repeat_count=2, shuffle=True, seed=3)

    trl = make()
    trl_order = [list(trl) for _ in range(4)]  # TRL's sampler, iterated for 4 epochs
    assert trl_order[0] != trl_order[1]
    for epoch in range(4):
        resumed = make()
        skip_epochs(resumed, epoch)
        assert [list(resumed) for _ in range(epoch, 4)] == trl_order[epoch:]


def test_lora_is_merged_into_final(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["train", str(TINY), "lora=true", "lora_r=4", "max_steps=1", "max_prompts=16",
                 "per_device_train_batch_size=16", f"output_dir={tmp_path}"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in model.state_dict())
    assert AutoTokenizer.from_pretrained(tmp_path / "final").eos_token == "<eos>"
    assert not list(tmp_path.glob("checkpoint-*"))  # a finished run drops its checkpoints unless told to keep them


@pytest.mark.parametrize("override, message", [
    ("criteria.0.algorithm=best:4", "unknown algorithm"),
    ("criteria.0.reward=bogus", "bogus"),
    ("num_generations=3", "smaller than N=4"),
    ("criteria.0.weight=-1", "weight"),
    ("criteria.0.colour=red", "criterion 'short': unknown field(s) colour"),
    ("criteria.0.transform=log", "a transform applies to calibrated rewards"),
    ("criteria.1.reward=null", "criterion 'long' needs a reward"),
    ("model=no/such-model-here", "not found"),
    ("frobnicate=1", "unknown config key"),
    ("aggregator=max", "unknown aggregator"),
    ("scale_rewards=std", "unknown scale_rewards"),
    ("learning_rate=fast", "GRPOConfig field learning_rate must be a number, got 'fast'"),
    ("max_steps=ten", "max_steps must be an integer, got 'ten'"),
    ("per_device_train_batch_size=12", "GRPOConfig refused"),
    ("temperature=-1", "temperature must be > 0 (sampling), got -1"),
    ("learning_rate=-1e-4", "learning_rate must be >= 0, got -0.0001"),
    ("max_completion_length=0", "max_completion_length (tokens per completion) must be at least 1, got 0"),
    ("report_to=tensorbord", "report_to: unknown integration 'tensorbord'; choose from none, all, "),
    ("criteria.0={name: a", "override 'criteria.0={name: a': the value is not valid YAML"),
    ("max_dropped_steps=0", "max_dropped_steps must be an integer >= 1, got 0"),
])
def test_bad_config_stops_with_one_line_before_loading_a_model(override, message, monkeypatch, capsys, tmp_path):
    import iama.models
    import iama.trainer

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iama.models, "resolve_model", forbidden)
    monkeypatch.setattr(iama.trainer, "build_trainer", forbidden)
    assert main(["train", str(TINY), override, f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iama: error:") and len(err.splitlines()) == 1 and message in err, err


def test_a_finished_run_is_not_reused_under_other_settings(tmp_path, capsys):
    import yaml

    from iama.config import to_dict
    from iama.trainer import train

    cfg = load_config(None, output_dir=str(tmp_path / "run"), max_steps=3, learning_rate=1e-4, report_to="none")
    (tmp_path / "run" / "final").mkdir(parents=True)  # a finished run of exactly these settings
    for path in (tmp_path / "run" / "config.yaml", tmp_path / "run" / "final" / "iama_config.yaml"):
        path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert train(cfg) == tmp_path / "run" / "final"  # reused, nothing loaded
    logs_elsewhere = load_config(None, output_dir=str(tmp_path / "run"), max_steps=3, learning_rate=1e-4,
                                 report_to="tensorboard")
    assert train(logs_elsewhere) == tmp_path / "run" / "final"
    other = load_config(None, output_dir=str(tmp_path / "run"), max_steps=5, learning_rate=3e-4, report_to="none")
    with pytest.raises(ConfigError, match=r"other settings \(max_steps, trl.learning_rate differ\)"):
        train(other)
    fresh = load_config(None, output_dir=str(tmp_path / "run"), max_steps=5, resume=False)
    from iama.trainer import changed_settings

    assert "max_steps" in changed_settings(tmp_path / "run", fresh)
    assert changed_settings(tmp_path / "elsewhere", fresh) == []


def test_output_dir_that_is_a_file_stops_with_one_line(tmp_path, monkeypatch, capsys):
    import iama.models
    import iama.trainer

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iama.models, "resolve_model", forbidden)
    monkeypatch.setattr(iama.trainer, "build_trainer", forbidden)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for out, message in ((taken, "is an existing file"), (taken / "run", "inside")):
        assert main(["train", str(TINY), f"output_dir={out}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("iama: error: output_dir") and len(err.splitlines()) == 1 and message in err, err
    assert taken.read_text() == "not a folder"


def test_missing_config_file(capsys):
    assert main(["train", "no-such-config.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def flaky(prompts, completions, **kwargs):
    return [None if i % 5 == 0 else 1.0 for i in range(len(completions))]


def boom(prompts, completions, **kwargs):
    if len(completions) > 1:
        raise RuntimeError("reward server down")
    return [0.5]


def test_guard_reward_policies():
    assert guard_reward(flaky, "f", "drop")([""] * 6, ["a"] * 6)[0] is math.nan or \
        math.isnan(guard_reward(flaky, "f", "drop")([""] * 6, ["a"] * 6)[0])
    with pytest.raises(RewardFailure, match="reward 'f' returned NaN/None"):
        guard_reward(flaky, "f", "stop")([""] * 6, ["a"] * 6)
    with pytest.raises(RewardFailure, match="reward 'b' raised RuntimeError: reward server down"):
        guard_reward(boom, "b", "stop")([""] * 3, ["a"] * 3)
    assert guard_reward(boom, "b", "drop")([""] * 3, ["a"] * 3) == [0.5, 0.5, 0.5]  # retried one by one


def test_invalid_rewards_stop_or_drop(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    common = [f"criteria.1.reward={__name__}:flaky", "max_steps=1", "max_prompts=16",
              "per_device_train_batch_size=16"]
    assert main(["train", str(TINY), *common, f"output_dir={tmp_path / 'stop'}"]) == 2
    assert "reward 'long' returned NaN/None" in capsys.readouterr().err
    assert main(["train", str(TINY), *common, "invalid_rewards=drop", f"output_dir={tmp_path / 'drop'}"]) == 0
    rows = [r for r in read_metrics(tmp_path / "drop" / "metrics.csv") if r.get("loss")]
    assert float(rows[0]["iama/dropped_samples"]) > 0


def always_none(prompts, completions, **kwargs):
    """A scorer that is down: every sample's reward is missing."""
    return [None] * len(completions)


def test_a_step_with_every_sample_dropped_trains_nothing_and_is_counted(tmp_path, caplog, monkeypatch):
    """Under invalid_rewards=drop a step whose every sample is dropped is skipped, warned of and counted; with no
    step left to estimate an objective, the model card is still written, and the weights are the untrained ones."""
    from safetensors.torch import load_file

    from iama.models import resolve_model

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    assert main(["train", str(TINY), f"criteria.1.reward={__name__}:always_none", "invalid_rewards=drop",
                 "max_steps=2", "save_steps=1", "beta=0.05", "max_prompts=16", "per_device_train_batch_size=16",
                 "report_to=none", f"output_dir={out}"]) == 0
    assert "every sample of step 1 was dropped (invalid rewards of 'long'): the step trains nothing" in caplog.text
    trained, untrained = load_file(out / "final" / "model.safetensors"), \
        load_file(Path(resolve_model("tiny-gpt2")) / "model.safetensors")
    assert all(torch.equal(trained[k], untrained[k]) for k in untrained)
    rows = [r for r in read_metrics(out / "metrics.csv") if r.get("loss")]
    assert [float(r["iama/skipped_steps"]) for r in rows] == [1.0, 2.0]
    assert "skipped steps (every sample's reward invalid, dropped): 2" in (out / "final" / "README.md").read_text()


CALLS = []


def down_after_one_call(prompts, completions, **kwargs):
    """length:24:32 once, then a scorer that is down."""
    CALLS.append(len(completions))
    return [-(((len(ids) - 24) / 32) ** 2) if len(CALLS) == 1 else None for ids in kwargs["completion_ids"]]


def test_a_skipped_step_changes_neither_the_weights_nor_the_kl_controller(tmp_path, monkeypatch):
    """After a step that trained, a step with every sample dropped: the weights stay bit for bit (the optimizer's
    momentum would move them), and beta stays where step 1's KL put it."""
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    CALLS.clear()
    out = tmp_path / "run"
    assert main(["train", str(TINY), f"criteria.1.reward={__name__}:down_after_one_call", "invalid_rewards=drop",
                 "beta=0.05", "target_kl=10.0", "max_steps=2", "save_steps=1", "keep_checkpoints=true",
                 "logging_steps=2",  # step 1's KL is still in the log's window at step 2
                 "max_prompts=16", "per_device_train_batch_size=16", "report_to=none", f"output_dir={out}"]) == 0
    weights = [load_file(out / f"checkpoint-{i}" / "model.safetensors") for i in (1, 2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    beta = [json.loads((out / f"checkpoint-{i}" / "iama_state.json").read_text())["beta"] for i in (1, 2)]
    assert beta[0] < 0.05 and beta[1] == beta[0]


def test_dropped_steps_in_a_row_stop_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    assert main(["train", str(TINY), f"criteria.1.reward={__name__}:always_none", "invalid_rewards=drop",
                 "max_dropped_steps=2", "max_steps=4", "save_steps=1", "max_prompts=16",
                 "per_device_train_batch_size=16", "report_to=none", f"output_dir={out}"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("iama: error:")]
    assert err == ["iama: error: every sample of step 2 was dropped (invalid rewards of 'long'), 2 steps in a row: "
                   "stopping (max_dropped_steps=2); the run resumes from its last checkpoint"]
    assert last_checkpoint(out) == str(out / "checkpoint-1") and not (out / "final").exists()
    assert json.loads((out / "checkpoint-1" / "iama_state.json").read_text())["dropped_in_a_row"] == 1


def test_the_python_objective_trains_as_iama_train_does():
    """Objective's defaults are the config's: the same criteria give the same advantages either way."""
    from iama.config import build_objective
    from iama.objective import Objective

    cfg = load_config(TINY)
    rewards = np.random.default_rng(0).normal(size=(4, 8, 2))
    np.testing.assert_array_equal(Objective(cfg.criteria)(rewards).advantages,
                                  build_objective(cfg)(rewards).advantages)


@pytest.mark.parametrize("objective, args, kwargs, message", [
    ({"scale_rewards": "none"}, {}, {}, "the objective's scale_rewards='none' and args.scale_rewards='group' differ"),
    ({}, {"scale_rewards": "batch"}, {}, "the objective's scale_rewards='group' and args.scale_rewards='batch' differ"),
    ({}, {}, {"target_kl": 0.1}, "target_kl needs target_kl > 0 and an initial beta > 0"),
    ({"algorithm": "bon:16"}, {}, {}, "num_generations=8 is smaller than N=16 of the largest algorithm"),
    ({}, {}, {"invalid_rewards": "skip"}, "invalid_rewards must be 'stop' or 'drop', got 'skip'"),
    ({}, {}, {"max_dropped_steps": 0}, "max_dropped_steps must be an integer >= 1, got 0"),
])
def test_the_trainer_refuses_at_construction_before_loading_a_model(objective, args, kwargs, message, tmp_path,
                                                                     monkeypatch):
    import iama.models
    from iama import IAMATrainer
    from iama.objective import Criterion, Objective

    monkeypatch.setattr(iama.models, "resolve_model", lambda *a, **k: pytest.fail("a model was loaded"))
    algorithm = objective.pop("algorithm", "bon:4")
    with pytest.raises(ValueError) as e:
        IAMATrainer(model="tiny-gpt2", reward_funcs=[flaky], train_dataset=None,
                    args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, **args),
                    objective=Objective([Criterion("a", algorithm)], **objective), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_reward_failure_names_the_fix_in_the_callers_spelling():
    from iama.trainer import CONFIG_DROP

    with pytest.raises(RewardFailure, match='set invalid_rewards="drop" to drop such samples'):
        guard_reward(flaky, "f", "stop")([""] * 6, ["a"] * 6)  # IAMATrainer's keyword
    with pytest.raises(RewardFailure, match="set invalid_rewards: drop to drop such samples"):
        guard_reward(flaky, "f", "stop", CONFIG_DROP)([""] * 6, ["a"] * 6)  # the config's key


def test_save_final_refuses_a_file_or_a_folder_that_is_no_model_and_moves_nothing(tmp_path):
    from iama.trainer import save_final

    trainer, _ = build_trainer(tiny_cfg(tmp_path, "report_to=none"))
    taken = tmp_path / "taken"
    taken.write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        save_final(trainer, taken)
    assert taken.read_bytes() == b"a user's file"
    (tmp_path / "run").mkdir(exist_ok=True)  # where the trainer logs
    (tmp_path / "run" / "metrics.csv").write_bytes(b"step\n1\n")
    with pytest.raises(ValueError, match="holds files but no saved model"):
        save_final(trainer, tmp_path / "run")  # the run's own folder
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == b"step\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]  # nothing moved aside
    assert save_final(trainer, tmp_path / "final") == tmp_path / "final"
    assert save_final(trainer, tmp_path / "final") == tmp_path / "final"  # a model it saved is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "run", "taken"]


def test_a_final_folder_that_is_a_file_stops_iama_train_before_loading_a_model(tmp_path, capsys, monkeypatch):
    import iama.trainer

    monkeypatch.setattr(iama.trainer, "build_trainer", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final").write_bytes(b"notes")
    assert main(["train", str(TINY), f"output_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"iama: error: the final model's folder '{tmp_path / 'run' / 'final'}' is an existing file, not a folder"]
    assert (tmp_path / "run" / "final").read_bytes() == b"notes"


def test_resuming_a_tied_model_does_not_warn_of_a_missing_weight(tmp_path, capfd):
    """tiny-gpt2 ties lm_head to the input embeddings; safetensors stores them once, and that is no news."""
    cfg = tiny_cfg(tmp_path, "save_steps=1", "keep_checkpoints=true", "report_to=none")
    trainer, _ = build_trainer(cfg)
    trainer.train()
    capfd.readouterr()
    trainer, _ = build_trainer(cfg)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    err = capfd.readouterr().err
    assert "missing keys" not in err and "lm_head" not in err


def test_kl_controller():
    assert kl_controller(0.1, 0.2, 0.1, 0.1) == pytest.approx(0.1 * math.exp(0.1))
    assert kl_controller(0.1, 0.05, 0.1, 0.1) == pytest.approx(0.1 * math.exp(-0.05))
    # an upward gain of its own: used above the target only
    assert kl_controller(0.1, 0.15, 0.1, 0.1, gain_up=1.0) == pytest.approx(0.1 * math.exp(0.5))
    assert kl_controller(0.1, 0.05, 0.1, 0.1, gain_up=1.0) == pytest.approx(0.1 * math.exp(-0.05))
    assert kl_controller(0.1, 0.1, 0.1, 0.1, gain_up=1.0) == pytest.approx(0.1)
    assert kl_controller(0.1, 100.0, 0.1, 0.1) == pytest.approx(0.1 * math.exp(0.1))  # clipped


def test_target_kl_moves_beta(tmp_path):
    cfg = tiny_cfg(tmp_path, "beta=0.05", "target_kl=10.0", "max_steps=2")
    assert main(["train", str(TINY), "beta=0.05", "target_kl=10.0", "max_steps=2", "max_prompts=16",
                 "per_device_train_batch_size=16", f"output_dir={cfg.output_dir}"]) == 0
    betas = [float(r["beta"]) for r in read_metrics(Path(cfg.output_dir) / "metrics.csv") if r.get("beta")]
    assert betas[0] == pytest.approx(0.05) and betas[-1] < 0.05  # KL far below its target: beta falls


def test_config_passes_trl_fields_through(tmp_path):
    cfg = tiny_cfg(tmp_path, "learning_rate=1e-3", "trl.top_k=5")
    assert cfg.trl["learning_rate"] == 1e-3 and cfg.trl["top_k"] == 5
    from iama.config import grpo_config

    args = grpo_config(cfg)
    assert isinstance(args, GRPOConfig) and args.learning_rate == 1e-3 and args.num_generations == 8
    with pytest.raises(ConfigError, match="top level"):
        tiny_cfg(tmp_path, "trl.beta=0.1")


@pytest.mark.slow
def test_default_scaling_trains_best_of_m_like_grpo(tmp_path):
    """Pass@k's k = n case (bon:M) and bon:M/2 under the default scale_rewards=group: finite loss, grad norms of
    GRPO's order in the same run, the best-of-N objective rising, and |A| <= sqrt(M - 1) in the logged metric.
    One criterion (short answers: most of the random model's answers run to the cap) so there is room to rise."""
    runs = {"bon8": ["criteria.0.algorithm=bon:8"], "bon4": ["criteria.0.algorithm=bon:4"],
            "grpo": ["criteria.0.algorithm=sampling", "baseline=group_mean"]}
    logs = {}
    for label, overrides in runs.items():
        cfg = tiny_cfg(tmp_path, "max_steps=24", "criteria.0.reward=length:2:32", "criteria.1.weight=0",
                       f"output_dir={tmp_path / label}", "report_to=none", "disable_tqdm=true", *overrides)
        assert cfg.scale_rewards == "group"
        from iama.trainer import train

        train(cfg)
        with open(tmp_path / label / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss")]
        logs[label] = {k: np.array([float(r[k]) for r in rows])
                       for k in ("loss", "grad_norm", "iama/objective", "iama/advantage_abs_max")}
    for label, log in logs.items():
        assert len(log["loss"]) == 24 and np.all(np.isfinite(log["loss"])), label
        assert np.all(log["iama/advantage_abs_max"] <= np.sqrt(7) + 1e-5), label
        assert 0.05 < log["grad_norm"].mean() / logs["grpo"]["grad_norm"].mean() < 20, label
        objective = log["iama/objective"]
        assert objective[-8:].mean() > objective[:8].mean(), label


@pytest.mark.parametrize("bf16", [True, False])
def test_generation_runs_under_the_losss_autocast_with_bf16_on_cpu(tmp_path, monkeypatch, bf16):
    """TRL autocasts only the loss; with bf16 on a CPU iama samples under the same autocast (the demo's speed)."""
    trainer, _ = build_trainer(tiny_cfg(tmp_path, f"bf16={str(bf16).lower()}"))
    seen = []
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    trainer._generate(["a prompt"])
    assert seen == [(bf16, torch.bfloat16)] if bf16 else seen[0][0] is False


class LengthAnswer:
    """A stand-in for the `answer` reward that tiny-gpt2 can satisfy: a completion's answer is its length in
    characters mod 3, right if it equals the prompt's `answer` column (which TRL passes as a keyword argument)."""

    __name__ = "length_answer"

    def answers(self, completions):
        from iama.rewards import text_of

        return [str(len(text_of(c)) % 3) for c in completions]

    def __call__(self, prompts, completions, answer, **kwargs):
        return [float(a == ref) for a, ref in zip(self.answers(completions), answer)]


@pytest.mark.parametrize("spec", ["maj:4", "maj_dense:4"])
def test_majority_vote_trains_from_a_datasets_answer_column(spec, tmp_path):
    from iama.config import grpo_config
    from iama.data import Prompts, prompt_dataset
    from iama.models import resolve_model
    from iama.objective import Criterion, Objective
    from iama.trainer import IAMATrainer

    from transformers import AutoTokenizer

    cfg = tiny_cfg(tmp_path, "num_generations=8", f"criteria=[{{name: vote, reward: answer, algorithm: '{spec}'}}]",
                   "scale_rewards=batch")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-gpt2"), padding_side="left")
    prompts = Prompts(["a b c", "d e f", "g h i", "j k l"] * 4, {"answer": [str(i % 3) for i in range(16)]})
    reward = LengthAnswer()
    trainer = IAMATrainer(model=resolve_model("tiny-gpt2"), reward_funcs=[reward], args=grpo_config(cfg),
                          train_dataset=prompt_dataset(prompts, tokenizer), processing_class=tokenizer,
                          objective=Objective([Criterion("vote", spec)], baseline="loo", scale_rewards="batch"))
    batch = one_batch(trainer)
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions(batch)
    texts = tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True)
    answers = trainer._gathered_answers
    assert len(answers) == len(texts) and len(set(answers)) > 1
    est = trainer.objective(trainer._gathered_rewards.view(-1, 8, 1).numpy(),
                            answers=[answers[i : i + 8] for i in range(0, len(answers), 8)])
    torch.testing.assert_close(out["advantages"], torch.as_tensor(est.advantages.reshape(-1), dtype=torch.float32))
    assert out["advantages"].abs().max() > 0  # the vote moves something
    trainer.train()
    logged = [h[f"iama/vote/{spec}"] for h in trainer.state.log_history if f"iama/vote/{spec}" in h]  # maj@4
    assert len(logged) == 2 and all(0 <= v <= 1 for v in logged)


def test_majority_vote_on_a_reward_without_answers_is_one_error(tmp_path, capsys, monkeypatch):
    import iama.trainer

    monkeypatch.setattr(iama.trainer, "build_trainer", lambda *a, **k: pytest.fail("got past the config"))
    assert main(["train", str(TINY), "criteria=[{name: v, reward: 'length:8:32', algorithm: 'maj:4'}]",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("iama: error: criterion 'v' uses maj:4, which votes on answers, but its reward")

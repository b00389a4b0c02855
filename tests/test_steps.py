"""What every training step does around the objective, in TRL and verl alike (iama.steps): the invalid-reward policy
and the iama/* metrics."""

import math

import numpy as np
import pytest
import torch

from iama import Criterion, Objective
from iama.steps import INVALID_REWARDS, apply_policy, step_metrics


class Refused(Exception):
    pass


def refuse(bad):
    return Refused(list(bad))


def test_invalid_values_are_nan_none_inf_and_non_numbers():
    values = [1, None, "n/a", "2.5", float("inf"), float("nan"), True, torch.tensor(0.5), {"score": 1}]
    out = apply_policy(values, "drop", refuse)
    assert out.dtype == np.float64 and list(np.isnan(out)) == [False, True, True, False, True, True, False, False, True]
    assert out[[0, 3, 6, 7]].tolist() == [1.0, 2.5, 1.0, 0.5]  # a numeric string counts (verl's string columns)
    with pytest.raises(Refused) as stopped:
        apply_policy(values, "stop", refuse)
    assert stopped.value.args[0] == [1, 2, 4, 5, 8]  # the caller's exception, told which values are invalid
    assert apply_policy(np.array([0.0, 1.0]), "stop", refuse).tolist() == [0.0, 1.0]
    assert INVALID_REWARDS == ("stop", "drop")


def test_padding_rows_are_never_invalid_and_always_nan():
    out = apply_policy(np.array([1.0, np.nan, 3.0]), "stop", refuse, padding=[False, True, True])
    assert out[0] == 1.0 and np.isnan(out[1:]).all()


def test_step_metrics_names_and_values():
    objective = Objective([Criterion("a", "bon:2", 0.5), Criterion("b", "sampling", 0.5)])
    rng = np.random.default_rng(0)
    rewards = rng.uniform(-1, 1, size=(3, 4, 2))
    rewards[1, 2, 0] = np.nan  # one sample dropped
    est = objective(rewards)
    metrics = step_metrics(objective, est, rewards.reshape(-1, 2), est.advantages.reshape(-1))
    assert list(metrics) == ["iama/a/reward", "iama/a/bon:2", "iama/b/reward", "iama/b/sampling", "iama/objective",
                             "iama/dropped_samples", "iama/advantage_abs", "iama/advantage_abs_max"]
    assert metrics["iama/a/bon:2"] == pytest.approx(np.nanmean(est.values[:, 0]))
    assert metrics["iama/b/reward"] == pytest.approx(rewards[..., 1].mean())
    assert metrics["iama/objective"] == est.objective and metrics["iama/dropped_samples"] == est.dropped == 1
    assert metrics["iama/advantage_abs_max"] == pytest.approx(np.abs(est.advantages).max())
    trl = step_metrics(objective, est, torch.tensor(rewards.reshape(-1, 2), dtype=torch.float32),
                       torch.tensor(est.advantages.reshape(-1)), reward_means=False)  # as the TRL trainer calls it
    assert not any(k.endswith("/reward") for k in trl) and trl["iama/advantage_abs"] == pytest.approx(
        metrics["iama/advantage_abs"])


def test_step_metrics_leave_out_padding_and_say_nan_without_groups():
    objective = Objective([Criterion("a", "bon:2")], scale_rewards="none")
    rewards = np.full((8, 1), np.nan)
    rewards[:2, 0] = [0.0, 1.0]  # a group of 4 with 2 samples left (bon:2 needs 2: estimable)...
    est = objective(rewards.reshape(2, 4, 1))
    padding = np.r_[np.zeros(4, bool), np.ones(4, bool)]  # ...and a group of padding rows
    metrics = step_metrics(objective, est, rewards, est.advantages.reshape(-1), padding)
    assert metrics["iama/dropped_samples"] == 2 and est.dropped == 6  # the objective also counts the padding
    nothing = objective(np.full((1, 4, 1), np.nan))
    metrics = step_metrics(objective, nothing, np.full((4, 1), np.nan), nothing.advantages.reshape(-1))
    assert math.isnan(metrics["iama/objective"]) and math.isnan(metrics["iama/a/bon:2"])
    assert metrics["iama/dropped_samples"] == 4 and metrics["iama/advantage_abs_max"] == 0

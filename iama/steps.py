"""What a training step does around the objective, whichever framework runs it (the TRL trainer, the verl plugin):
the invalid-reward policy, and the iama/* metrics it logs.

A reward is invalid when it is NaN, None, inf or not a number. The policy is 'stop' (the run stops with one line
naming the reward) or 'drop' (the sample gets a NaN reward, which the objective drops from its group and counts).
"""

from __future__ import annotations

import warnings

import numpy as np

from .algorithms import to_numpy

INVALID_REWARDS = ("stop", "drop")


def reward_value(value) -> float:
    """A reward as a float, NaN where it is not a number. A numeric string counts: verl's np.array turns a column
    that holds one string into strings."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # None, a label, a dict, an int beyond float's range
        return float("nan")


def apply_policy(values, policy: str, refuse, padding=None) -> np.ndarray:
    """(n,) float64 rewards from one reward's per-sample values, NaN where a value is invalid, and on `padding`
    rows (not samples: never invalid). Under 'stop' an invalid value raises refuse(indices of the invalid values),
    the caller's exception naming the reward and how to drop such samples."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        out = values.astype(np.float64).reshape(-1)
    else:  # a list, or an array of objects (a None, a label) or strings: one value at a time
        items = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else list(values)
        out = np.array([reward_value(v) for v in items], dtype=np.float64)
    padding = np.zeros(len(out), dtype=bool) if padding is None else np.asarray(padding, dtype=bool)
    bad = np.flatnonzero(~np.isfinite(out) & ~padding)
    if len(bad) and policy == "stop":
        raise refuse(bad)
    out[~np.isfinite(out) | padding] = np.nan
    return out


def step_metrics(objective, estimates, rewards, advantages, padding=None, reward_means=True) -> dict[str, float]:
    """The iama/* metrics of one step, from the objective's estimates on the step's rewards (rows, criteria) and
    the advantages of the same rows; `padding` marks rows that are no samples (verl's). NaN where there is no
    number (no group could be estimated):

        iama/NAME/reward        criterion NAME's mean reward (reward_means; TRL logs its own, rewards/NAME/mean)
        iama/NAME/ALGORITHM     its value under its algorithm, say iama/helpful/bon:4: the groups' estimates, averaged
        iama/objective          the aggregate of those values
        iama/dropped_samples    samples dropped for an invalid reward
        iama/advantage_abs      the mean |advantage|, and iama/advantage_abs_max the largest (<= sqrt(M - 1) under
                                scale_rewards 'group')
    """
    rewards = to_numpy(rewards, check=False)[0].reshape(-1, len(objective.criteria))
    advantages = to_numpy(advantages, check=False)[0].reshape(-1)
    samples = np.ones(len(rewards), dtype=bool) if padding is None else ~np.asarray(padding, dtype=bool)
    out = {}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a criterion with no valid sample: NaN, said quietly
        for i, c in enumerate(objective.criteria):
            if reward_means:
                out[f"iama/{c.name}/reward"] = float(np.nanmean(rewards[samples, i]))
            out[f"iama/{c.name}/{c.algorithm.spec}"] = float(np.nanmean(estimates.values[..., i]))
    # the objective's own count of dropped samples also has the NaN that pads verl's shorter groups
    out["iama/objective"] = float(estimates.objective)
    out["iama/dropped_samples"] = float((np.isnan(rewards).any(-1) & samples).sum())
    out["iama/advantage_abs"] = float(np.abs(advantages[samples]).mean()) if samples.any() else float("nan")
    out["iama/advantage_abs_max"] = float(np.abs(advantages[samples]).max(initial=0.0))
    return out

"""The IAMA objective: criteria + aggregator -> per-sample first-variation estimates and advantages.

    J[pi] = g(R_1[pi], ..., R_m[pi]) - beta KL(pi || pi_ref),   R_i[pi] = E_x E_{y ~ T_i[pi]} r_i(x, y)

Non-linear GRPO replaces GRPO's reward by an estimate of dJ/dpi at each sample: for a group of M samples
of one prompt, s_j = sum_i dg/dR_i * s_ij, with s_ij the group estimate of criterion i's first variation.
The KL term stays with the trainer. The trainer, evaluation, deployment and the verl plugin all call this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax

from .algorithms import Algorithm, Sampling, Tilted, _to_numpy, parse_algorithm

AGGREGATORS = ("sum", "min", "smoothmin")
BASELINES = ("loo", "group_mean", "none")
SCALES = ("none", "group", "batch")
# An advantage this small relative to the first-variation estimates it came from is floating-point noise.
RELATIVE_ZERO = 1e-10


@dataclass
class Criterion:
    """One criterion: a reward scored under an inference-time algorithm, with a weight.

    `reward` is whatever the caller scores samples with (a callable, a spec string); the math here only
    sees the resulting numbers."""

    name: str
    algorithm: Algorithm | str = field(default_factory=Sampling)
    weight: float = 1.0
    reward: Any = None

    def __post_init__(self):
        self.algorithm = parse_algorithm(self.algorithm)
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"criterion {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}")


@dataclass
class Estimates:
    """What the objective makes of a batch of groups: G groups of M samples, m criteria (leading axes (...))."""

    advantages: Any  # (..., M): sum_i dg/dR_i * (s_ij - b_ij), optionally scaled; same type as the input
    first_variation: np.ndarray  # (..., M): sum_i dg/dR_i * s_ij
    per_criterion: np.ndarray  # (..., M, m): s_ij
    baselines: np.ndarray  # (..., M, m): b_ij
    values: np.ndarray  # (..., m): per-group value estimates of R_i (NaN for a group too small to estimate)
    grad_weights: np.ndarray  # (m,): dg/dR_i at the batch's values
    objective: float  # g at the batch's mean values
    dropped: int  # samples dropped for a NaN reward
    skipped_groups: int  # groups left with too few samples to estimate (their advantages are 0)


class Objective:
    """criteria, aggregated by 'sum' (sum_i w_i R_i), 'min' (min_i R_i) or 'smoothmin'
    (-(1/gamma) log sum_i w_i exp(-gamma R_i)).

    estimator: 'unbiased' (U-statistics; leave-one-out for Tilted) or 'plugin' (the IAMA paper's).
    baseline:  'loo' (from the other samples only: the gradient stays unbiased and N = M still learns),
               'group_mean' (GRPO's), or 'none'.
    scale_rewards: 'none', 'group' or 'batch': divide advantages by their root mean square in the group (or
               batch); for `sampling` criteria that is GRPO's division by the std of the rewards.
    """

    def __init__(self, criteria, aggregator="sum", gamma=1.0, estimator="unbiased", baseline="loo",
                 scale_rewards="none"):
        self.criteria = [c if isinstance(c, Criterion) else Criterion(**c) for c in criteria]
        if not self.criteria:
            raise ValueError("an objective needs at least one criterion")
        names = [c.name for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion names must be unique, got {names}")
        for value, allowed, what in [(aggregator, AGGREGATORS, "aggregator"), (baseline, BASELINES, "baseline"),
                                     (estimator, ("unbiased", "plugin"), "estimator"),
                                     (scale_rewards, SCALES, "scale_rewards")]:
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {allowed}")
        if aggregator == "smoothmin" and not gamma > 0:
            raise ValueError(f"smoothmin needs gamma > 0, got {gamma!r}")
        if aggregator != "min" and sum(c.weight for c in self.criteria) <= 0:
            raise ValueError("at least one criterion needs a positive weight")
        self.aggregator, self.gamma, self.estimator = aggregator, float(gamma), estimator
        self.baseline, self.scale_rewards = baseline, scale_rewards
        self.weights = np.array([c.weight for c in self.criteria], dtype=np.float64)

    @property
    def max_n(self) -> int:
        return max((c.algorithm.n or 1) for c in self.criteria)

    def min_group_size(self) -> int:
        """The smallest M this objective can estimate from."""
        need = self.max_n if self.estimator == "unbiased" else 1
        return max(need, 2 if self.baseline == "loo" else 1)

    # ---- g and its gradient ------------------------------------------------------------------------------------
    def aggregate(self, values) -> np.ndarray:
        """g(R) over the last axis (m criteria)."""
        v = np.asarray(values, dtype=np.float64)
        if self.aggregator == "sum":
            return v @ self.weights
        if self.aggregator == "min":
            return v.min(-1)
        with np.errstate(divide="ignore"):
            return -logsumexp(np.log(self.weights) - self.gamma * v, axis=-1) / self.gamma

    def grad(self, values) -> np.ndarray:
        """dg/dR_i at values (m,). For 'min' a subgradient: uniform over tied minima."""
        v = np.asarray(values, dtype=np.float64)
        if self.aggregator == "sum":
            return self.weights.copy()
        if self.aggregator == "min":
            at_min = np.isclose(v, v.min(), rtol=0, atol=1e-12)
            return at_min / at_min.sum()
        with np.errstate(divide="ignore"):
            return softmax(np.log(self.weights) - self.gamma * v)

    def _estimator_for(self, algorithm):
        if isinstance(algorithm, Tilted):
            return "plugin" if self.estimator == "plugin" else "loo"
        return self.estimator

    # ---- the estimates -----------------------------------------------------------------------------------------
    def _group_estimates(self, r, rng):
        """(s, b, values) for complete groups r (G, M, m)."""
        s, b, v = np.empty_like(r), np.empty_like(r), np.empty(r.shape[:1] + r.shape[2:])
        for i, c in enumerate(self.criteria):
            alg = c.algorithm
            s[..., i], b[..., i] = alg.estimate(r[..., i], self._estimator_for(alg), rng=rng)
            if alg.n is not None and r.shape[1] < alg.n:  # plugin on a small group: no unbiased value
                v[:, i] = np.nan
            else:
                v[:, i] = alg.estimate_value(r[..., i], rng=rng)
        if self.baseline == "group_mean":
            b = np.broadcast_to(s.mean(axis=1, keepdims=True), s.shape).copy()
        elif self.baseline == "none":
            b = np.zeros_like(s)
        return s, b, v

    def __call__(self, rewards, *, rng=None) -> Estimates:
        """rewards: (..., M, m) array or tensor, one group per leading index, one column per criterion.

        A sample with a NaN reward in any criterion is dropped from its group (advantage 0) and counted; a
        group left with fewer samples than the estimator needs contributes advantage 0 and is counted."""
        r, back = _to_numpy(rewards, check=False)
        m = len(self.criteria)
        if r.ndim < 2 or r.shape[-1] != m:
            raise ValueError(f"rewards must have shape (..., M, {m}) for {m} criteria; got {r.shape}")
        if np.any(np.isinf(r)):
            raise ValueError("rewards contain infinite values")
        lead, mm = r.shape[:-2], r.shape[-2]
        r = r.reshape(-1, mm, m)
        s, b = np.zeros_like(r), np.zeros_like(r)
        v = np.full((r.shape[0], m), np.nan)
        bad = np.isnan(r).any(-1)  # (G, M)
        need = self.min_group_size()
        complete = ~bad.any(-1)
        if complete.any():
            s[complete], b[complete], v[complete] = self._group_estimates(r[complete], rng)
        valid = ~bad
        for g in np.flatnonzero(~complete):  # ragged groups, one at a time (rare)
            keep = ~bad[g]
            if keep.sum() < need:
                valid[g] = False
                continue
            sg, bg, vg = self._group_estimates(r[g, keep][None], rng)
            s[g, keep], b[g, keep], v[g] = sg[0], bg[0], vg[0]
        if np.all(np.isnan(v)):
            batch_values = np.full(m, np.nan)
            c = self.weights if self.aggregator == "sum" else np.full(m, 1.0 / m)
        else:
            batch_values = np.nanmean(v, axis=0)
            c = self.grad(batch_values)
        fv = s @ c
        adv = (s - b) @ c
        adv = np.where(valid, adv, 0.0)
        # the size of the numbers the advantages were differenced from: below RELATIVE_ZERO of it is rounding noise
        size = np.maximum(np.maximum(np.abs(fv), np.abs(b @ c)), np.abs(np.nan_to_num(r)) @ np.abs(c))
        adv = self._scale(adv, size, valid)
        return Estimates(
            advantages=back(adv.reshape(lead + (mm,))),
            first_variation=fv.reshape(lead + (mm,)),
            per_criterion=s.reshape(lead + (mm, m)),
            baselines=b.reshape(lead + (mm, m)),
            values=v.reshape(lead + (m,)),
            grad_weights=c,
            objective=float(self.aggregate(batch_values)),
            dropped=int(bad.sum()),
            skipped_groups=int((~valid.any(-1) & bad.any(-1)).sum()),
        )

    def _scale(self, adv, size, valid):
        """Divide each group's advantages by their root mean square (M - 1 in the denominator), the whole batch's
        with 'batch'. For `sampling` criteria this is GRPO's (r - mean) / std(r) exactly, with either baseline;
        for every algorithm and N it keeps |A_j| <= sqrt(M - 1), is invariant to a*r + b (a > 0) wherever the
        algorithm is, and gives 0 to a group whose advantages vanish. (Dividing by the std of the first-variation
        estimates instead blows up as N nears M: their spread goes to 0 while the advantages' does not.)"""
        if self.scale_rewards == "none":
            return adv
        axis = -1 if self.scale_rewards == "group" else None
        count = valid.sum(axis=axis, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            rms = np.sqrt(np.sum(adv**2, axis=axis, keepdims=True) / (count - 1))
        size = np.max(np.where(valid, size, 0.0), axis=axis, keepdims=True)
        flat = ~(rms > RELATIVE_ZERO * size) | (count < 2)
        return np.where(flat, 0.0, adv / np.where(flat, 1.0, rms))

    def describe(self) -> str:
        parts = [f"{c.weight:g}*{c.name}[{c.algorithm.spec}]" for c in self.criteria]
        return f"{self.aggregator}({', '.join(parts)}), estimator={self.estimator}, baseline={self.baseline}"

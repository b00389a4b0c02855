"""The IAMA objective: criteria + aggregator -> per-sample first-variation estimates and advantages.

    J[pi] = g(R_1[pi], ..., R_m[pi]) - beta KL(pi || pi_ref),   R_i[pi] = E_x E_{y ~ T_i[pi]} r_i(x, y)

Non-linear GRPO replaces GRPO's reward by an estimate of dJ/dpi at each sample: for a group of M samples
of one prompt, s_j = sum_i dg/dR_i * s_ij, with s_ij the group estimate of criterion i's first variation.
The KL term stays with the trainer. The trainer, evaluation, deployment and the verl plugin all call this.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax

from .algorithms import Algorithm, MajorityVoteDense, Sampling, Tilted, answer_array, parse_algorithm, to_numpy
from .transforms import parse_transform

AGGREGATORS = ("sum", "min", "smoothmin")
BASELINES = ("loo", "group_mean", "none")
SCALES = ("none", "group", "batch")
# An advantage this small relative to the first-variation estimates it came from is floating-point noise.
RELATIVE_ZERO = 1e-10


@dataclass
class Criterion:
    """One criterion: a reward scored under an inference-time algorithm, with a weight.

    `reward` is whatever the caller scores samples with (a callable, a spec string, verl's compute_score key);
    the math here only sees the resulting numbers. `calibrated` and `transform` are InfAlign-CTRL's, applied by
    the trainer to the reward before it reaches the objective (evaluation and deployment score the raw reward)."""

    name: str
    algorithm: Algorithm | str = field(default_factory=Sampling)
    weight: float = 1.0
    reward: Any = None
    calibrated: bool = False
    transform: Any = None  # a transform spec (iama.transforms) of the calibrated reward; None: identity

    def __post_init__(self):
        self.name, self.calibrated, self.transform = str(self.name), bool(self.calibrated), self.transform or None
        try:
            self.algorithm = parse_algorithm(self.algorithm)
            self.weight = float(self.weight)
            if self.transform is not None:
                if not self.calibrated:
                    raise ValueError("a transform applies to calibrated rewards; set calibrated: true")
                parse_transform(self.transform)
        except (TypeError, ValueError) as e:
            raise ValueError(f"criterion {self.name!r}: {e}") from None
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"criterion {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}")

    def to_dict(self) -> dict:
        """The plain form parse_criteria reads back (a config's YAML): every field, but the optional ones (after
        `reward`) only where they differ from their default."""
        out = {"name": self.name, "reward": self.reward, "algorithm": self.algorithm.spec, "weight": self.weight}
        for f in fields(self)[4:]:
            if getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out


# what a criterion's plain form may hold: its dataclass fields, listed in messages with the two it needs first
FIELDS = ("name", "reward", *(f.name for f in fields(Criterion) if f.name not in ("name", "reward")))


def parse_criteria(raw, fields=FIELDS) -> list[Criterion]:
    """Criteria from their plain form, a list of mappings with at least a name (Criterion objects pass through).
    `fields` are the ones allowed, or a mapping of the caller's names onto Criterion's (verl's plugin reads a
    compute_score `key` as the reward). Anything wrong is a ValueError of one line naming the criterion."""
    names = dict(fields) if isinstance(fields, dict) else {f: f for f in fields}
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"criteria must be a list of at least one criterion {{{', '.join(names)}}}")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Criterion):
            if not isinstance(c, dict) or "name" not in c:
                raise ValueError(f"criterion {i} must be a mapping with at least a 'name'")
            extra = [str(k) for k in c if k not in names]
            if extra:
                raise ValueError(f"criterion {c['name']!r}: unknown field(s) {', '.join(extra)}; "
                                 f"allowed: {', '.join(names)}")
            c = Criterion(**{names[k]: v for k, v in c.items()})
        out.append(c)
    listed = [c.name for c in out]
    if len(set(listed)) != len(listed):
        raise ValueError(f"criterion names must be unique, got {listed}")
    return out


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
    scale_rewards: 'group' (the default, as in `iama train` and TRL's GRPOConfig), 'batch' or 'none': divide
               advantages by their root mean square in the group (or batch); for `sampling` criteria that is GRPO's
               division by the std of the rewards. 'none' keeps them unbiased estimates of the gradient.
    """

    def __init__(self, criteria, aggregator="sum", gamma=1.0, estimator="unbiased", baseline="loo",
                 scale_rewards="group"):
        self.criteria = parse_criteria(list(criteria))
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
        for c in self.criteria:
            if self._estimator_for(c.algorithm) not in c.algorithm.estimators:  # maj:N has no plugin estimator
                raise ValueError(f"criterion {c.name!r}: {c.algorithm.spec} has no {estimator!r} estimator; use "
                                 f"estimator {c.algorithm.estimators[0]!r}")
        dense = [c for c in self.criteria if isinstance(c.algorithm, MajorityVoteDense)]
        if dense and len(self.criteria) == 1 and scale_rewards == "group":
            raise ValueError(f"criterion {dense[0].name!r}: {dense[0].algorithm.spec}'s one factor per prompt cancels "
                             "under scale_rewards 'group', which would train exactly as GRPO; use 'batch' or 'none'")

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
        if isinstance(algorithm, MajorityVoteDense):
            return "dense"  # its only estimator, a plug-in, under either setting
        return self.estimator

    # ---- the estimates -----------------------------------------------------------------------------------------
    @property
    def needs_answers(self) -> bool:
        """True if a criterion's algorithm selects by answers (maj:N): then calls must pass `answers`."""
        return any(c.algorithm.needs_answers for c in self.criteria)

    def _group_estimates(self, r, rng, answers=None):
        """(s, b, values) for complete groups r (G, M, m), answers (G, M) or None."""
        s, b, v = np.empty_like(r), np.empty_like(r), np.empty(r.shape[:1] + r.shape[2:])
        for i, c in enumerate(self.criteria):
            alg = c.algorithm  # every algorithm takes the group's answers; only a vote reads them
            s[..., i], b[..., i] = alg.estimate(r[..., i], self._estimator_for(alg), answers=answers, rng=rng)
            if alg.n is not None and r.shape[1] < alg.n:  # plugin on a small group: no unbiased value
                v[:, i] = np.nan
            else:
                v[:, i] = alg.estimate_value(r[..., i], answers=answers, rng=rng)
        if self.baseline == "group_mean":
            b = np.broadcast_to(s.mean(axis=1, keepdims=True), s.shape).copy()
        elif self.baseline == "none":
            b = np.zeros_like(s)
        return s, b, v

    def __call__(self, rewards, *, answers=None, rng=None) -> Estimates:
        """rewards: (..., M, m) array or tensor, one group per leading index, one column per criterion.
        answers: (..., M) hashable answer keys (None: no answer), needed when a criterion votes (maj:N).

        A sample with a NaN reward in any criterion is dropped from its group (advantage 0) and counted; a
        group left with fewer samples than the estimator needs contributes advantage 0 and is counted."""
        r, back = to_numpy(rewards, check=False)
        lead, group_size, n_criteria = r.shape[:-2], r.shape[-2], len(self.criteria)
        r = self._check_rewards(r).reshape(-1, group_size, n_criteria)  # (G, M, m)
        answers = self._check_answers(answers, lead + (group_size,))  # (G, M) or None
        s, b, v, valid = self._estimate_groups(r, answers, rng)  # (G, M, m), (G, M, m), (G, m), (G, M)

        # the method: the chain rule at the batch's values, the baseline, the scale
        batch_values = np.nanmean(v, axis=0) if not np.all(np.isnan(v)) else np.full(n_criteria, np.nan)  # (m,)
        if np.all(np.isnan(batch_values)):  # no group could be estimated: dg/dR at no particular point
            c = self.weights if self.aggregator == "sum" else np.full(n_criteria, 1.0 / n_criteria)
        else:
            c = self.grad(batch_values)  # (m,): dg/dR_i
        fv = s @ c  # (G, M): the first variation of J at each sample
        adv = np.where(valid, (s - b) @ c, 0.0)  # (G, M)
        # the size of the numbers the advantages were differenced from: below RELATIVE_ZERO of it is rounding noise
        size = np.maximum(np.maximum(np.abs(fv), np.abs(b @ c)), np.abs(np.nan_to_num(r)) @ np.abs(c))
        adv = self._scale(adv, size, valid)

        bad = np.isnan(r).any(-1)
        return Estimates(
            advantages=back(adv.reshape(lead + (group_size,))),
            first_variation=fv.reshape(lead + (group_size,)),
            per_criterion=s.reshape(lead + (group_size, n_criteria)),
            baselines=b.reshape(lead + (group_size, n_criteria)),
            values=v.reshape(lead + (n_criteria,)),
            grad_weights=c,
            objective=float(self.aggregate(batch_values)),
            dropped=int(bad.sum()),
            skipped_groups=int((~valid.any(-1) & bad.any(-1)).sum()),
        )

    def _check_rewards(self, r):
        n_criteria = len(self.criteria)
        if r.ndim < 2 or r.shape[-1] != n_criteria:
            raise ValueError(f"rewards must have shape (..., M, {n_criteria}) for {n_criteria} criteria; got {r.shape}")
        if np.any(np.isinf(r)):
            raise ValueError("rewards contain infinite values")
        return r

    def _check_answers(self, answers, shape):
        if not self.needs_answers:
            return None
        if answers is None:
            voting = next(c for c in self.criteria if c.algorithm.needs_answers)
            raise ValueError(f"criterion {voting.name!r} uses {voting.algorithm.spec}, which needs each sample's "
                             "answer (answers=...)")
        return answer_array(answers, shape).reshape(-1, shape[-1])

    def _estimate_groups(self, r, answers, rng):
        """Per-criterion estimates s, baselines b (G, M, m), values v (G, m) and the samples that count (G, M).
        Groups without a NaN are estimated together; the others one at a time without their NaN samples, or
        not at all when too few remain (their values stay NaN and no sample counts)."""
        group_size, n_criteria = r.shape[1:]
        s, b, v = np.zeros_like(r), np.zeros_like(r), np.full((len(r), n_criteria), np.nan)
        valid = ~np.isnan(r).any(-1)  # (G, M)
        complete = valid.all(-1)  # (G,)
        if complete.any():
            s[complete], b[complete], v[complete] = self._group_estimates(
                r[complete], rng, None if answers is None else answers[complete])
        for g in np.flatnonzero(~complete):  # ragged groups, one at a time (rare)
            keep = valid[g].copy()
            if keep.sum() < self.min_group_size():
                valid[g] = False
                continue
            sg, bg, vg = self._group_estimates(r[g, keep][None], rng,
                                               None if answers is None else answers[g, keep][None])
            s[g, keep], b[g, keep], v[g] = sg[0], bg[0], vg[0]
        return s, b, v, valid

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
        """g of the criteria, e.g. sum(0.5*short[bon:4], 0.5*long[bon:4]) (how it is estimated is not part of it)."""
        parts = [f"{c.weight:g}*{c.name}[{c.algorithm.spec}]" for c in self.criteria]
        return f"{self.aggregator}({', '.join(parts)})"

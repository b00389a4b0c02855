"""Estimation from pools: every value under inference-time algorithms, from one pool of M samples per prompt.

For every criterion, every algorithm family (sampling, bon, won, soft_bon:TAU, tilted:TAU) and every N <= M the
value is the mean over prompts of per-prompt unbiased estimates (METHOD §4: sorted rewards weighted by
C(i-1, N-1) / C(M, N) for best-of-N; subsets for soft best-of-N; tilted is self-normalised over the pool, hence
consistent, not unbiased). No separate sampling per N: one pool serves every N.

Confidence intervals (95% by default; one method per kind of quantity, iama/stats.py and docs/method.md): a value,
a win rate or a linear objective is a mean over prompts (independent across prompts), with the Wilson score
interval at the effective sample size where its range is known and the normal interval otherwise; a paired
difference of them uses MOVER; a non-linear objective g (min, smoothmin), effective N and anything else that is a
function of several means use a percentile bootstrap over prompts (the same resampled prompts for every model,
criterion and N, so paired comparisons stay paired); methods of several seeds (METHOD@SEED) resample seeds first.

Majority voting (maj:N) selects by each sample's answer, which a reward with an `answers` method gives (the
`answer` reward): pools store the answer keys, and a criterion with answers is evaluated under maj@N and under
best-of-N (pass@N for a 0/1 reward) at every N <= M, by the same per-prompt U-statistics (MajorityVote counts
votes instead of listing subsets).

Also: cross-effects (select by criterion a with bon/won, measure criterion b, ties in a broken uniformly at
random, which the estimator does exactly by averaging b over tied a), win rates against a reference model
under bon:N and won:N (product of the two pools' unbiased distributions of the selected reward; for a 0/1
reward with answers also maj:N), Pareto fronts across models per N (iama.fronts), effective N (the budget the
reference needs to match a model, interpolated linearly in log N), method-level estimates over seeds, and
token-length histograms; schema in docs/formats.md.

Pure numpy over pools (iama.pools.Pool): nothing here samples, loads a model or writes a file. iama.evaluate
orchestrates, iama/report.py writes the report. Over 500 lines because estimate() assembles the report from
helpers (per-model estimates, effective N, win rates, seeds) that share its per-prompt arrays: they read best
beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .algorithms import MajorityVote, OrderStatistic, SoftBestOfN, Tilted, parse_algorithm
from .fronts import pareto_fronts
from .objective import Objective, parse_criteria
from .pools import Pool
from .rewards import spec_text
from .stats import (bootstrap_weights, difference_ci, percentile_ci, seed_draws, seed_parts, seed_resample,
                    value_ci)
from .utils import json_safe

SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# algorithm families: a family is a spec without its N ('bon', 'soft_bon:0.1'), evaluated at every N from one pool


def family_of(algorithm) -> str:
    """'bon:4' -> 'bon', 'won:2' -> 'won', 'sampling' -> 'sampling', 'soft_bon:4:0.1' -> 'soft_bon:0.1',
    'tilted:0.1' -> 'tilted:0.1'. A family is returned normalised."""
    return parse_algorithm(algorithm, n=1).family


def family_ns(family, m: int) -> list[int]:
    """The N a family is evaluated at from a pool of M: 1..M where its value depends on N, else its own N
    (sampling: 1) or the pool (tilted: M)."""
    alg = parse_algorithm(family, n=1)
    return list(range(1, m + 1)) if alg.increasing is not None else [alg.n or m]


# ---------------------------------------------------------------------------------------------------------------
# per-prompt unbiased estimates from a pool


def _check_pool_array(r, name="rewards"):
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] == 0:
        raise ValueError(f"{name} must have shape (prompts, M) with M >= 1; got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} contain NaN or infinite values; fix the reward or drop those prompts")
    return r


def _check_ns(ns, m):
    ns = [int(n) for n in ns]
    bad = [n for n in ns if n < 1 or n > m]
    if bad:
        raise ValueError(f"N={bad[0]} cannot be estimated from a pool of M={m} samples per prompt (need 1 <= N <= M)")
    return ns


def _order_statistic(family, what):
    alg = parse_algorithm(family, n=1)
    if isinstance(alg, OrderStatistic):  # their pool weights are what cross-effects and win rates need
        return alg
    raise ValueError(f"{what} are estimated for bon and won, not {family!r}")


def value_estimates(rewards, family, ns=None, *, rng=None, answers=None) -> np.ndarray:
    """(P, len(ns)) per-prompt estimates of the value of `family` at each N from rewards (P, M); `answers`
    (P, M) hashable answer keys, None for no answer, for a family that votes on them (maj)."""
    r = _check_pool_array(rewards)
    m = r.shape[1]
    ns = family_ns(family, m) if ns is None else _check_ns(ns, m)
    return parse_algorithm(family, n=1).estimate_values(r, ns, answers=answers, rng=rng)


def tie_averaged(select, measure):
    """Both sorted by `select` ascending, with `measure` replaced by its mean over ties in `select`: selecting
    by `select` with uniform random tie-breaking then has the expected `measure` of this order."""
    a = np.asarray(select, dtype=np.float64)
    b = np.asarray(measure, dtype=np.float64)
    order = np.argsort(a, axis=1, kind="stable")
    a_s, b_s = np.take_along_axis(a, order, 1), np.take_along_axis(b, order, 1)
    for p in np.flatnonzero((np.diff(a_s, axis=1) == 0).any(axis=1)):  # only rows with ties
        _, inv = np.unique(a_s[p], return_inverse=True)
        b_s[p] = (np.bincount(inv, weights=b_s[p]) / np.bincount(inv))[inv]
    return a_s, b_s


def cross_estimates(select, measure, family: str, ns=None) -> np.ndarray:
    """(P, len(ns)) per-prompt unbiased estimates of E[measure of the sample chosen by `family` (bon or won)
    at N, selecting by `select`], from rewards (P, M) of two criteria on the same candidates."""
    a, b = _check_pool_array(select, "select rewards"), _check_pool_array(measure, "measured rewards")
    if a.shape != b.shape:
        raise ValueError(f"select and measure rewards must have the same shape; got {a.shape} and {b.shape}")
    alg = _order_statistic(family, "cross-effects")
    m = a.shape[1]
    ns = family_ns(family, m) if ns is None else _check_ns(ns, m)
    _, b_sorted = tie_averaged(a, b)
    return b_sorted @ alg.pool_weights(m, ns).T


def win_rate_estimates(model, reference, family: str, ns=None) -> np.ndarray:
    """(P, len(ns)) per-prompt unbiased estimates of P(X > Y) + P(X = Y) / 2, X the reward selected by `family`
    (bon or won) at N from the model, Y from the reference, both decoded the same way, the two pools
    independent: sum_ij w_i v_j h(x_(i), y_(j)) with each pool's order-statistic weights."""
    x, y = _check_pool_array(model, "model rewards"), _check_pool_array(reference, "reference rewards")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"win rates need the same prompts in both pools; got {x.shape[0]} and {y.shape[0]}")
    alg = _order_statistic(family, "win rates")
    mx, my = x.shape[1], y.shape[1]
    ns = family_ns(family, min(mx, my)) if ns is None else _check_ns(ns, min(mx, my))
    xs, ys = np.sort(x, axis=1), np.sort(y, axis=1)
    h = (xs[:, :, None] > ys[:, None, :]) + 0.5 * (xs[:, :, None] == ys[:, None, :])  # (P, Mx, My)
    wx, wy = alg.pool_weights(mx, ns), alg.pool_weights(my, ns)
    return np.einsum("ki,pij,kj->pk", wx, h, wy)


# ---------------------------------------------------------------------------------------------------------------
# intervals, effective N


def effective_n(curve, target, ns=None, increasing: bool = True) -> np.ndarray:
    """The budget N at which a reference's value curve first reaches `target`, interpolated linearly in log N
    between consecutive integers; inf where it never does within the curve (report: 'more than M').

    curve: (..., K) values at N = ns (default 1..K, consecutive integers); target: (...). 'Reaches' means
    >= for an increasing family (bon), <= for a decreasing one (won: an attacker's budget). A target already
    met at N = ns[0] gives ns[0]."""
    c = np.asarray(curve, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    ns = np.arange(1, c.shape[-1] + 1, dtype=np.float64) if ns is None else np.asarray(ns, dtype=np.float64)
    if not increasing:
        c, t = -c, -t
    reached = c >= t[..., None]
    any_reached = reached.any(axis=-1)
    k = np.argmax(reached, axis=-1)  # first index reached (0 if none)
    k_prev = np.maximum(k - 1, 0)
    c_hi = np.take_along_axis(c, k[..., None], -1)[..., 0]
    c_lo = np.take_along_axis(c, k_prev[..., None], -1)[..., 0]
    log_hi, log_lo = np.log(ns[k]), np.log(ns[k_prev])
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(c_hi > c_lo, (t - c_lo) / (c_hi - c_lo), 1.0)
    x = np.exp(log_lo + np.clip(frac, 0.0, 1.0) * (log_hi - log_lo))
    out = np.where(k == 0, ns[0], x)
    return np.where(any_reached, out, np.inf)


def _json_effective(values, m):
    """Numbers, with inf as the string 'more than M' (the report's convention; 'at most 1' is set by the
    caller where the reference's N = 1 value is already strictly better)."""
    return [f"more than {m}" if math.isinf(v) else float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


# ---------------------------------------------------------------------------------------------------------------
# the estimation core


def criterion_bounds(criterion, binary: bool = False):
    """(low, high), the range of a criterion's values under any algorithm (each selects or averages rewards): its
    reward's declared range (rewards.reward_bounds), else [0, 1] for a reward that is 0/1 in every pool; None
    when unknown (its intervals are then normal)."""
    from .rewards import reward_bounds

    known = reward_bounds(criterion.reward) if criterion.reward is not None else None
    return known if known is not None else ((0.0, 1.0) if binary else None)


def objective_bounds(objective, bounds):
    """The range of a linear ('sum') objective's per-prompt values given its criteria's ranges; None when one
    is unknown."""
    if any(b is None for b in bounds):
        return None
    lo = sum(min(w * a, w * b) for w, (a, b) in zip(objective.weights, bounds))
    hi = sum(max(w * a, w * b) for w, (a, b) in zip(objective.weights, bounds))
    return (float(lo), float(hi)) if hi > lo else None


def paired_difference(model_values, ref_values, objective, boot, confidence, bounds=None) -> dict:
    """g(model) - g(reference) at the configured algorithms (both pools on the same prompts, so prompt-to-prompt
    variation cancels). Values: (P, criteria). A linear ('sum') g is a mean over prompts of per-prompt values,
    so its difference gets the paired difference interval of its kind (stats.difference_ci; `bounds`: the
    objective's range or None); any other g a paired percentile bootstrap over prompts."""
    out = {"mean": float(objective.aggregate(model_values.mean(0)) - objective.aggregate(ref_values.mean(0)))}
    if objective.aggregator == "sum":
        if len(model_values) > 1:
            ci = difference_ci(model_values @ objective.weights, ref_values @ objective.weights, bounds, confidence)
            out.update(ci_low=float(ci["ci_low"]), ci_high=float(ci["ci_high"]))
    elif boot is not None:
        diffs = objective.aggregate(boot @ model_values) - objective.aggregate(boot @ ref_values)
        lo, hi = percentile_ci(diffs, confidence)
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def criteria_families(criteria, extra=(), answered=()) -> dict:
    """{criterion: [families]}: its own family, 'sampling', and `extra` (e.g. ['bon', 'won']); for a tilted
    criterion also soft_bon at its temperature (tilted is soft best-of-N's N -> infinity limit); for a criterion
    with answers (`answered`: names; a voting one always) both 'bon' and 'maj', so that pass@k (best-of-k on a
    0/1 reward) and maj@k are side by side. A voting family in `extra` goes to the answered criteria only."""
    extra = [family_of(a) for a in extra or ()]
    out = {}
    for c in parse_criteria(criteria):
        alg = c.algorithm
        fams = [alg.family, "sampling"]
        if isinstance(alg, Tilted):
            fams.append(SoftBestOfN(1, alg.temperature).family)
        has_answers = c.name in answered or alg.needs_answers
        if has_answers:
            fams += ["bon", MajorityVote(1).family]
        fams += [f for f in extra if has_answers or not parse_algorithm(f, n=1).needs_answers]
        out[c.name] = list(dict.fromkeys(fams))
    return out


def _curve_json(stats, ns):
    return {"n": list(ns), **{k: np.asarray(v).tolist() for k, v in stats.items()}}


def estimate(pools: list[Pool], criteria, *, aggregator: str = "sum", gamma: float = 1.0,
             reference: str | None = None, algorithms=(), confidence: float = 0.95, bootstrap: int = 1000,
             seed: int = 0) -> dict:
    """Everything numeric of a report from pools (same prompts, same criteria, in that order).

    criteria: Criterion or {name, algorithm, weight, reward?} (parse_criteria); the objective is g(R_1..R_m)
    with `aggregator`, each R_i the value of criterion i under its own family at a common N (a sampling or tilted
    criterion is N-free). Labels METHOD@SEED (e.g. grpo@0 grpo@1) name trained seeds of one method: the report
    then also has method-level estimates under `methods`, whose intervals resample seeds and prompts
    (method_estimates); `reference` may name such a method."""
    criteria = parse_criteria(criteria)
    groups = seed_groups([p.label for p in pools])
    reference, ref_model = _check_pools(pools, criteria, reference, algorithms or (), confidence, groups)
    answered = _answered_criteria(pools, criteria, algorithms or ())
    families = criteria_families(criteria, algorithms, answered)
    names = [c.name for c in criteria]
    # a 0/1 reward under best-of-k is pass@k
    binary = {n: all(np.isin(p.rewards[:, :, i], (0.0, 1.0)).all() for p in pools) for i, n in enumerate(names)}
    bounds = {c.name: criterion_bounds(c, binary[c.name]) for c in criteria}
    objective = Objective(criteria, aggregator=aggregator, gamma=gamma, scale_rewards="none")  # g alone: no training
    obj_bounds = objective_bounds(objective, [bounds[n] for n in names])
    P = len(pools[0].prompts)
    boot = bootstrap_weights(P, bootstrap, seed) if bootstrap and P > 1 else None
    rng = np.random.default_rng(seed)

    per_model = {p.label: _model_estimates(p, criteria, families, objective, boot, confidence, rng, bounds,
                                           obj_bounds) for p in pools}
    models = {label: e.entry for label, e in per_model.items()}
    ref, ref_pool = per_model[ref_model], next(p for p in pools if p.label == ref_model)
    effective, wins = {}, {}
    for pool in pools:
        if pool.label == ref_model:
            continue
        est = per_model[pool.label]
        est.entry["objective_configured"]["minus_reference"] = paired_difference(
            est.configured, ref.configured, objective, boot, confidence, obj_bounds)
        effective[pool.label] = _effective_n_entries(est, ref, criteria, families, objective, boot, confidence)
        wins[pool.label] = _win_rates(pool, ref_pool, est, ref, names, [n for n in answered if binary[n]], confidence)
    methods = (method_estimates(per_model, groups, reference, criteria, families, objective, boot, confidence, seed)
               if any(len(v) > 1 for v in groups.values()) else None)

    configured = [c.algorithm for c in criteria]
    linear = aggregator == "sum"
    value_method = ("Wilson score interval at the effective sample size p(1 - p) / SE^2 on the criterion's range "
                    "(stats.bounded_mean_ci) where the range is known, else normal: mean +- z * SE over prompts")
    difference_method = ("MOVER: the two Wilson intervals recombined with the per-prompt correlation "
                         "(stats.paired_difference_ci) where the range is known, else normal on the paired "
                         "per-prompt differences")
    bootstrap_method = f"percentile bootstrap over prompts, {bootstrap} resamples, the same for every model (paired)"
    return json_safe({
        "schema_version": SCHEMA_VERSION,
        "confidence": confidence,
        "ci_method": {"values": value_method,
                      "objective": (f"as values (a weighted sum is a mean over prompts), on the range {obj_bounds}"
                                    if linear else bootstrap_method),
                      "effective_n": bootstrap_method,
                      "minus_reference": difference_method if linear else bootstrap_method,
                      "win_rates": "Wilson score interval at the effective sample size, on [0, 1]",
                      "cross_effects": value_method + " (selection by rewards: bon and won)",
                      "kl": "normal on the log scale (delta method), inside (0, inf)",
                      "seeds": (None if methods is None else
                                f"two-stage percentile bootstrap: each method's seeds with replacement, then prompts "
                                f"(the same for every model), {bootstrap} resamples; every method-level quantity"),
                      "trained_model": ("each model's intervals hold its trained weights fixed (prompts and "
                                        "samples vary, the training run does not)")},
        "num_prompts": P,
        "criteria": [{"name": c.name, "reward": spec_text(c.reward), "algorithm": c.algorithm.spec,
                      "weight": c.weight, "family": c.algorithm.family, "n": c.algorithm.n,
                      "families": families[c.name], "answers": c.name in answered, "binary": binary[c.name],
                      "range": None if bounds[c.name] is None else list(bounds[c.name])}
                     for c in criteria],
        "objective": {"aggregator": aggregator, "gamma": gamma, "description": objective.describe(),
                      "range": None if obj_bounds is None else list(obj_bounds)},
        "reference": reference,
        "reference_model": ref_model,
        "key_n": key_ns(min(p.m for p in pools), [alg.n for alg in configured]),
        "models": models,
        "methods": methods,
        "effective_n": effective,
        "win_rates": wins,
        "pareto": pareto_fronts(models, names, configured),
    })


def seed_groups(labels) -> dict:
    """{method: [labels]}: labels METHOD@SEED grouped by METHOD (in order of appearance), any other label a group
    of its own. Two seeds of one method are needed for a seed-level interval: a METHOD@SEED alone is an error,
    as is a METHOD that is also a plain label."""
    groups: dict[str, list] = {}
    for label in labels:
        method, at, tag = label.rpartition("@")
        if at and (not method or not tag):
            raise ValueError(f"model label {label!r}: write METHOD@SEED, e.g. grpo@0")
        groups.setdefault(method if at else label, []).append(label)
    for method, members in groups.items():
        seeded = [m for m in members if "@" in m]
        if seeded and len(seeded) != len(members):
            raise ValueError(f"{method!r} is both a model and a method of seeds ({', '.join(seeded)}); rename one")
        if len(seeded) == 1:
            raise ValueError(f"method {method!r} has one seed ({seeded[0]}): a seed-level interval needs two or "
                             f"more; add seeds or label the model without @")
    return groups


def _check_pools(pools, criteria, reference, algorithms, confidence, groups) -> tuple[str, str]:
    """One clear error for pools that cannot be estimated together; returns (the reference: a model's label or a
    method of seeds, the model that per-model comparisons are made against: the reference or its first seed)."""
    if not pools:
        raise ValueError("nothing to evaluate: no pools")
    names = [c.name for c in criteria]
    labels = [p.label for p in pools]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; name them LABEL=PATH")
    for p in pools:
        if p.criteria != names:
            raise ValueError(f"pool {p.label!r} is scored on {p.criteria}, the evaluation on {names}")
    if len({len(p.prompts) for p in pools}) != 1:
        raise ValueError("all pools must cover the same prompts (use align_pools)")
    reference = reference or labels[0]
    if reference not in labels and reference not in groups:
        raise ValueError(f"reference {reference!r} is not one of the models {labels}")
    ref_model = reference if reference in labels else groups[reference][0]
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    for c in criteria:
        for p in pools:
            if c.algorithm.n is not None and c.algorithm.n > p.m:
                raise ValueError(f"criterion {c.name!r} uses {c.algorithm.spec} but pool {p.label!r} has only "
                                 f"M={p.m} samples per prompt; sample more (M >= {c.algorithm.n})")
    for a in algorithms:
        n = parse_algorithm(a, n=1).n  # the N written in a, or 1 for a family ('bon')
        for p in pools:
            if n is not None and n > p.m:
                raise ValueError(f"algorithm {a} needs N={n} > M={p.m} samples per prompt of {p.label!r}")
    for p in pools:
        for n, a in p.answers.items():
            if a.shape != p.rewards.shape[:2]:
                raise ValueError(f"pool {p.label!r}: answers for {n!r} have shape {a.shape}, the rewards "
                                 f"{p.rewards.shape[:2]}")
    return reference, ref_model


def _answered_criteria(pools, criteria, algorithms) -> list[str]:
    """The criteria with answers in every pool (their reward gives answer keys); voting needs them."""
    answered = [c.name for c in criteria if all(c.name in p.answers for p in pools)]
    for c in criteria:
        if c.algorithm.needs_answers and c.name not in answered:
            lacking = next(p.label for p in pools if c.name not in p.answers)
            raise ValueError(f"criterion {c.name!r} uses {c.algorithm.spec}, which votes on answers, but pool "
                             f"{lacking!r} has none for it; its reward must give answers (such as 'answer')")
    voting = [a for a in algorithms if parse_algorithm(a, n=1).needs_answers]
    if voting and not answered:
        raise ValueError(f"algorithm {voting[0]} votes on answers, and no criterion has them (a reward with "
                         "an `answers(completions)` method, such as 'answer', gives them)")
    return answered


@dataclass
class _ModelEstimates:
    """One model's per-prompt estimates (kept for the paired comparisons with the reference) and its report
    entry."""

    values: dict  # {(criterion, family): (P, K) per-prompt values at the family's N}
    curve: np.ndarray  # (P, criteria, M): each criterion under its configured family along N
    configured: np.ndarray  # (P, criteria): each criterion at its configured N
    entry: dict


def _model_estimates(pool, criteria, families, objective, boot, confidence, rng, bounds, obj_bounds):
    """A model's per-prompt estimates and its report entry. Intervals by kind (stats): a value or a linear
    objective is a mean over prompts (value_ci on its range, `bounds` / `obj_bounds`); a non-linear objective
    gets the percentile bootstrap."""
    m, names = pool.m, [c.name for c in criteria]
    values, value_entries = {}, {}
    for i, name in enumerate(names):
        value_entries[name] = {}
        for fam in families[name]:
            ns = family_ns(fam, m)
            values[name, fam] = est = value_estimates(pool.rewards[:, :, i], fam, ns, rng=rng,
                                                      answers=pool.answers.get(name))
            value_entries[name][fam] = _curve_json(value_ci(est, bounds[name], confidence), ns)
    # the objective along N (N-free criteria constant) and at each criterion's configured N
    curve = np.stack([values[c.name, c.algorithm.family] if c.algorithm.increasing is not None
                      else np.repeat(values[c.name, c.algorithm.family][:, :1], m, axis=1) for c in criteria], axis=1)
    configured = np.stack([curve[:, i, (c.algorithm.n or 1) - 1] for i, c in enumerate(criteria)], axis=1)
    objective_entry = {"n": list(range(1, m + 1)), "mean": objective.aggregate(curve.mean(axis=0).T)}
    configured_entry = {"mean": float(objective.aggregate(configured.mean(axis=0))),
                        "values": {n: float(v) for n, v in zip(names, configured.mean(0))},
                        "algorithms": {c.name: c.algorithm.spec for c in criteria}}
    if objective.aggregator == "sum":  # per prompt, sum_i w_i R_i: a mean over prompts like any value
        if len(curve) > 1:
            ci = value_ci(np.einsum("pin,i->pn", curve, objective.weights), obj_bounds, confidence)
            objective_entry.update(ci_low=ci["ci_low"], ci_high=ci["ci_high"], se=ci["se"])
            ci = value_ci(configured @ objective.weights, obj_bounds, confidence)
            configured_entry.update(ci_low=float(ci["ci_low"]), ci_high=float(ci["ci_high"]))
    elif boot is not None:
        bobj = objective.aggregate(np.moveaxis(np.einsum("bp,pin->bin", boot, curve), 1, -1))  # (B, M)
        lo, hi = percentile_ci(bobj, confidence)
        objective_entry.update(ci_low=lo, ci_high=hi, se=bobj.std(axis=0, ddof=1))
        lo, hi = percentile_ci(objective.aggregate(boot @ configured), confidence)
        configured_entry.update(ci_low=float(lo), ci_high=float(hi))
    # cross-effects: select by a with bon / won, measure every b
    cross = {a: {fam: {b: _curve_json(value_ci(cross_estimates(pool.rewards[:, :, ia], pool.rewards[:, :, ib], fam),
                                               bounds[b], confidence), range(1, m + 1))
                       for ib, b in enumerate(names)} for fam in ("bon", "won")} for ia, a in enumerate(names)}
    entry = {"num_prompts": len(pool.prompts), "m": m, "values": value_entries, "objective": objective_entry,
             "objective_configured": configured_entry, "cross_effects": cross,
             "lengths": length_stats(pool.num_tokens)}
    return _ModelEstimates(values, curve, configured, entry)


def _effective_n_entries(est, ref, criteria, families, objective, boot, confidence) -> dict:
    """Effective N against the reference: of the objective, of each criterion at its configured family, and of
    every N-dependent family evaluated (for an answered criterion both pass@k, bon, and maj@k)."""
    ref_objective = objective.aggregate(ref.curve.mean(0).T)  # (M_ref,)
    inc = bool(ref_objective[-1] >= ref_objective[0])  # the objective's direction, from the reference's curve
    by_family = {}
    for name, fams in families.items():
        for fam in fams:
            increasing = parse_algorithm(fam, n=1).increasing
            if increasing is not None:
                by_family.setdefault(name, {})[fam] = {
                    **_effective_entry(est.values[name, fam][:, None], ref.values[name, fam][:, None],
                                       lambda v: v[..., 0], increasing, boot, confidence), "family": fam}
    return {"objective": {**_effective_entry(est.curve, ref.curve, objective.aggregate, inc, boot, confidence),
                          "increasing": inc},
            "criteria": {c.name: by_family[c.name][c.algorithm.family] for c in criteria
                         if c.algorithm.increasing is not None},
            "families": by_family}


def _effective_entry(model_pp, ref_pp, aggregate, increasing, boot, confidence) -> dict:
    """For each N <= M, the reference's budget that matches the model's value at N (effective_n), 'at most 1'
    where the reference's N = 1 is already better. model_pp: (P, k, M) per-prompt values of k criteria; ref_pp:
    (P, k, M_ref); aggregate maps (..., k) -> (...)."""
    m, m_ref = model_pp.shape[2], ref_pp.shape[2]
    target = aggregate(model_pp.mean(0).T)  # (M,)
    ref_values = aggregate(ref_pp.mean(0).T)  # (M_ref,)
    point = effective_n(np.broadcast_to(ref_values, (m, m_ref)), target, increasing=increasing)
    beaten = target < ref_values[0] if increasing else target > ref_values[0]
    entry = {"n": list(range(1, m + 1)),
             "effective_n": [("at most 1" if b else v) for b, v in zip(beaten, _json_effective(point, m_ref))],
             "model_value": target.tolist(), "reference_value": ref_values.tolist()}
    if boot is not None:
        P, k = model_pp.shape[:2]
        bt = aggregate(np.moveaxis((boot @ model_pp.reshape(P, -1)).reshape(-1, k, m), 1, -1))  # (B, M)
        br = aggregate(np.moveaxis((boot @ ref_pp.reshape(P, -1)).reshape(-1, k, m_ref), 1, -1))  # (B, M_ref)
        lo, hi = percentile_ci(effective_n(br[:, None, :].repeat(m, 1), bt, increasing=increasing), confidence)
        entry.update(ci_low=_json_effective(lo, m_ref), ci_high=_json_effective(hi, m_ref))
    return entry


def _win_rates(pool, ref_pool, est, ref, names, binary_answered, confidence) -> dict:
    """{criterion: {family: curve}}: the chance that the model's best (worst) of N beats the reference's, ties
    counted half; for a 0/1 reward with answers also under majority voting."""
    wins = {}
    ns = range(1, min(pool.m, ref_pool.m) + 1)
    for i, name in enumerate(names):
        wins[name] = {fam: _curve_json(value_ci(win_rate_estimates(pool.rewards[:, :, i], ref_pool.rewards[:, :, i],
                                                                   fam, ns), (0.0, 1.0), confidence), ns)
                      for fam in ("bon", "won")}
        if name in binary_answered:
            # P(X > Y) + P(X = Y) / 2 = (1 + P(X = 1) - P(Y = 1)) / 2, with P(X = 1) maj@N's value
            k = len(ns)
            est_wins = 0.5 + 0.5 * (est.values[name, "maj"][:, :k] - ref.values[name, "maj"][:, :k])
            wins[name]["maj"] = _curve_json(value_ci(est_wins, (0.0, 1.0), confidence), ns)
    return wins


def method_estimates(per_model, groups, reference, criteria, families, objective, boot, confidence,
                     seed: int = 0) -> dict:
    """Method-level estimates, for the methods of two or more seeds and the reference: a method's value of any
    quantity is the mean over its seeds of each seed's value (the expected result of one training run), with the
    two-stage bootstrap (stats.seed_resample): seeds drawn with replacement for each method, prompts resampled
    the same way for every model, so that a difference between methods is paired in prompts and its seeds are
    independent. Each entry also gives `se_within` (prompts, the trained models fixed) and `se_between` (seeds).
    A single model (e.g. the untrained one) is a method of one seed: it varies with the prompts only."""
    if boot is None:
        raise ValueError("seed-level intervals need bootstrap resamples (--bootstrap >= 1) and two or more prompts")
    chosen = {g: ls for g, ls in groups.items() if len(ls) > 1 or reference in (g, *ls)}
    ms = {per_model[label].curve.shape[2] for ls in chosen.values() for label in ls}
    m = min(ms)
    draws = {g: seed_draws(len(ls), len(boot), [seed, i]) for i, (g, ls) in enumerate(chosen.items())}

    def stat(group, point_fn, boot_fn):
        """point (...), resampled (B, ...) and the report entry of a per-seed statistic."""
        point = np.stack([point_fn(per_model[k]) for k in chosen[group]])
        per_boot = np.stack([boot_fn(per_model[k]) for k in chosen[group]])
        samples = seed_resample(per_boot, draws[group])
        lo, hi = percentile_ci(samples, confidence)
        parts = seed_parts(point, per_boot)
        return point.mean(0), samples, {"mean": point.mean(0), "ci_low": lo, "ci_high": hi,
                                        "se_within": parts["within"], "se_between": parts["between"]}

    def configured(e):
        return objective.aggregate(e.configured.mean(0))

    def configured_boot(e):
        return objective.aggregate(boot @ e.configured)

    def along_n(e):
        return objective.aggregate(e.curve[:, :, :m].mean(0).T)

    def along_n_boot(e):
        k = e.curve.shape[1]
        return objective.aggregate(np.moveaxis((boot @ e.curve[:, :, :m].reshape(boot.shape[1], -1))
                                               .reshape(-1, k, m), 1, -1))

    ref_group = next(g for g, ls in chosen.items() if reference in (g, *ls))
    ref_point, ref_samples, _ = stat(ref_group, configured, configured_boot)
    ref_curve, ref_curve_samples, _ = stat(ref_group, along_n, along_n_boot)
    out = {}
    for group, labels in chosen.items():
        point, samples, entry = stat(group, configured, configured_boot)
        curve, curve_samples, curve_entry = stat(group, along_n, along_n_boot)
        values = {c.name: {fam: {"n": family_ns(fam, m), **stat(
            group, lambda e, c=c, fam=fam: e.values[c.name, fam][:, :len(family_ns(fam, m))].mean(0),
            lambda e, c=c, fam=fam: boot @ e.values[c.name, fam][:, :len(family_ns(fam, m))])[2]}
            for fam in families[c.name]} for c in criteria}
        result = {"seeds": labels, "objective_configured": entry, "objective": {"n": list(range(1, m + 1)),
                                                                                 **curve_entry},
                  "values": values}
        if group != ref_group:
            diff = samples - ref_samples
            lo, hi = percentile_ci(diff, confidence)
            result["minus_reference"] = {"mean": float(point - ref_point), "ci_low": float(lo), "ci_high": float(hi),
                                         "se_within": _within_of_difference(group, ref_group, per_model, chosen,
                                                                            configured_boot),
                                         "se_between": _hypot(entry["se_between"], _between(ref_group, chosen,
                                                                                          per_model, configured))}
            inc = bool(ref_curve[-1] >= ref_curve[0])
            beaten = curve < ref_curve[0] if inc else curve > ref_curve[0]
            eff = effective_n(np.broadcast_to(ref_curve, (m, len(ref_curve))), curve, increasing=inc)
            elo, ehi = percentile_ci(effective_n(ref_curve_samples[:, None, :].repeat(m, 1), curve_samples,
                                                 increasing=inc), confidence)
            result["effective_n"] = {"n": list(range(1, m + 1)),
                                     "effective_n": [("at most 1" if b else v)
                                                     for b, v in zip(beaten, _json_effective(eff, m))],
                                     "ci_low": _json_effective(elo, m), "ci_high": _json_effective(ehi, m),
                                     "increasing": inc}
        out[group] = result
    return {"reference": ref_group, "methods": out}


def _between(group, chosen, per_model, fn):
    point = np.stack([fn(per_model[k]) for k in chosen[group]])
    return float(point.std(ddof=1) / math.sqrt(len(point))) if len(point) > 1 else None


def _within_of_difference(a, b, per_model, chosen, boot_fn):
    """The SE over prompt resamples of (mean over a's seeds) - (mean over b's seeds): the prompt part."""
    da = np.mean([boot_fn(per_model[k]) for k in chosen[a]], axis=0)
    db = np.mean([boot_fn(per_model[k]) for k in chosen[b]], axis=0)
    return float((da - db).std(ddof=1))


def _hypot(x, y):
    parts = [v for v in (x, y) if v is not None]
    return float(math.sqrt(sum(float(v) ** 2 for v in parts))) if parts else None


def key_ns(m: int, configured=()) -> list[int]:
    """1, powers of two up to M, the criteria's configured N, and M."""
    ks = {1, m, *[n for n in configured if n is not None and n <= m]}
    k = 2
    while k <= m:
        ks.add(k)
        k *= 2
    return sorted(ks)


def length_stats(num_tokens) -> dict | None:
    if num_tokens is None:
        return None
    t = np.asarray(num_tokens).ravel()
    hi = int(t.max()) if t.size else 0
    counts = np.bincount(t, minlength=hi + 1)
    return {"mean": float(t.mean()), "std": float(t.std()), "min": int(t.min()), "max": hi,
            "quantiles": {str(q): float(np.quantile(t, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "histogram": {"lengths": list(range(hi + 1)), "counts": counts.tolist()}}


"""Pareto fronts and hypervolumes of models in criterion space (every criterion maximised), with paired
bootstrap intervals over prompts: what `iama sweep` compares GRPO and IAMA by."""

from __future__ import annotations

import numpy as np

from .stats import bootstrap_weights, percentile_ci


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows of points (K, m), every column maximised: a row is dominated when
    another is >= on every column and > on one. Duplicates do not dominate each other, so both are kept."""
    x = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    ge = (x[:, None, :] >= x[None, :, :]).all(-1)
    gt = (x[:, None, :] > x[None, :, :]).any(-1)
    return ~(ge & gt).any(axis=0)  # [j, i] of ge & gt: j dominates i


def hypervolume(points, reference) -> float:
    """The measure of the union of the boxes [reference, p] over points (K, m), every column maximised; a point
    not strictly above the reference in every coordinate adds nothing. Exact: a sweep in 2-D, slicing along the
    last coordinate above (recursion into m - 1 dimensions; K^(m-1) work, fine for the few points of a front)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    x = np.asarray(points, dtype=np.float64).reshape(-1, ref.size)
    x = x[(x > ref).all(axis=1)] - ref
    return float(_hv(x[pareto_mask(x)])) if len(x) else 0.0


def _hv(x: np.ndarray) -> float:
    """Hypervolume of positive points x (K, m) against the origin."""
    if len(x) == 0:
        return 0.0
    if x.shape[1] == 1:
        return float(x.max())
    if x.shape[1] == 2:
        area, top = 0.0, 0.0
        for a, b in x[np.argsort(-x[:, 0], kind="stable")]:  # widest first: each adds the strip above the last
            if b > top:
                area += a * (b - top)
                top = b
        return area
    levels = np.unique(x[:, -1])[::-1]  # slabs between consecutive last coordinates, from the top
    total = 0.0
    for hi, lo in zip(levels, [*levels[1:], 0.0]):
        total += (hi - lo) * _hv(x[x[:, -1] >= hi, :-1])
    return total


def front_line(points, reference) -> np.ndarray:
    """(L, 2) vertices of the staircase through the non-dominated 2-D points: the boundary of the region they
    dominate, with its tails out to the reference where the reference lies beyond the front's ends (a front
    below the reference in a criterion gets no tail towards it). What `iama sweep` draws for a method."""
    x = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ref = np.asarray(reference, dtype=np.float64)
    x = x[pareto_mask(x)]
    x = x[np.lexsort((-x[:, 1], x[:, 0]))]  # x ascending, so y descending along the front
    line = [(ref[0], x[0, 1])] if ref[0] < x[0, 0] else []
    for i, (a, b) in enumerate(x):
        line.append((a, b))
        if i + 1 < len(x):
            line.append((a, x[i + 1, 1]))
    if ref[1] < x[-1, 1]:
        line.append((x[-1, 0], ref[1]))
    return np.array(line)


def bootstrap_fronts(values: dict, groups: dict, reference, *, difference=("iama", "grpo"), resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Points, fronts and hypervolumes of groups of models, with percentile bootstrap intervals over prompts.

    values: {model: (P, m) per-prompt values}, all over the same P prompts; groups: {method: [models]};
    reference: (m,), held fixed (a chosen point, not re-estimated per resample). Every resample reweights the
    prompts the same way for every model (bootstrap_weights), so the difference of two methods' hypervolumes
    is paired. A point's interval is per coordinate: the percentile interval of each criterion's bootstrap mean
    (a box, not a joint 2-D region). Returns {"points": {model: {mean, ci_low, ci_high}}, "methods": {method:
    {front, hypervolume: {mean, ci_low, ci_high}}}, "difference": {minuend, subtrahend, mean, ci_low, ci_high}
    or None when `difference` does not name two of the groups}."""
    labels = list(values)
    arrays = {k: np.asarray(values[k], dtype=np.float64) for k in labels}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"every model needs values on the same prompts; got {sorted(sizes)} prompts")
    boot = bootstrap_weights(sizes.pop(), resamples, seed)  # (B, P)
    means = {k: a.mean(0) for k, a in arrays.items()}
    bmeans = {k: boot @ a for k, a in arrays.items()}  # (B, m)
    points = {}
    for k in labels:
        lo, hi = percentile_ci(bmeans[k], confidence)
        points[k] = {"mean": means[k].tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist()}
    methods, samples = {}, {}
    for method, members in groups.items():
        pts = np.array([means[k] for k in members])
        stacked = np.stack([bmeans[k] for k in members], axis=1)  # (B, K, m)
        samples[method] = np.array([hypervolume(s, reference) for s in stacked])
        lo, hi = percentile_ci(samples[method], confidence)
        methods[method] = {"front": [k for k, f in zip(members, pareto_mask(pts)) if f],
                           "hypervolume": {"mean": hypervolume(pts, reference), "ci_low": float(lo),
                                           "ci_high": float(hi)}}
    diff = None
    a, b = difference
    if a in groups and b in groups:
        lo, hi = percentile_ci(samples[a] - samples[b], confidence)
        diff = {"minuend": a, "subtrahend": b,
                "mean": methods[a]["hypervolume"]["mean"] - methods[b]["hypervolume"]["mean"],
                "ci_low": float(lo), "ci_high": float(hi)}
    return {"points": points, "methods": methods, "difference": diff}


def pearson_bootstrap(x, y, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Pearson correlation of two rewards over all samples x, y (P, M), with a percentile bootstrap interval
    over prompts (a prompt's M samples move together). Negative: the criteria conflict."""

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.vstack([np.full(len(x), 1.0 / len(x)), bootstrap_weights(len(x), resamples, seed)])  # row 0: the data
    mx, my = w @ x.mean(1), w @ y.mean(1)
    cov = w @ (x * y).mean(1) - mx * my
    vx, vy = w @ (x * x).mean(1) - mx**2, w @ (y * y).mean(1) - my**2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    lo, hi = percentile_ci(r[1:], confidence)
    return {"mean": float(r[0]), "ci_low": float(lo), "ci_high": float(hi)}

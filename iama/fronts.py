"""Pareto fronts and hypervolumes of models in criterion space (every criterion maximised), with paired
bootstrap intervals over prompts: what `iama sweep` compares GRPO and IAMA by; and the fronts per N of an
evaluation's report (pareto_fronts)."""

from __future__ import annotations

import numpy as np

from .stats import bootstrap_weights, percentile_ci, seed_parts, seed_resample, value_ci


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


def _seeds(members) -> list[list]:
    """A method's models as a list of seeds, each a list of models: [a, b] is one seed, [[a, b], [c, d]] two."""
    return [list(m) for m in members] if members and isinstance(members[0], (list, tuple)) else [list(members)]


def method_hypervolumes(bmeans: dict, members, reference, draws=None) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """(hypervolume, its (B,) resamples over seeds and prompts, its (B,) resamples over prompts alone, {within,
    between}) of one method above `reference`: each seed's front of its points (bmeans: {model: (B + 1, m)}, row
    0 the full data, then the prompt resamples), the mean over seeds, resampled in two stages
    (stats.seed_resample) with `draws` (B, S) when there are several seeds."""
    seeds = _seeds(members)
    per_seed = np.array([[hypervolume(s, reference) for s in np.stack([bmeans[k] for k in models], axis=1)]
                         for models in seeds])  # (S, B + 1)
    samples = per_seed[0, 1:] if len(seeds) == 1 else seed_resample(per_seed[:, 1:], draws)
    return (float(per_seed[:, 0].mean()), samples, per_seed[:, 1:].mean(0),
            seed_parts(per_seed[:, 0], per_seed[:, 1:]))


def bootstrap_fronts(values: dict, groups: dict, reference, *, difference=("iama", "grpo"), resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, bounds=None, references=None, draws=None,
                     boot=None) -> dict:
    """Points, fronts and hypervolumes of groups of models, with intervals over prompts (and seeds).

    values: {model: (P, m) per-prompt values}, all over the same P prompts; groups: {method: [models]} for one
    trained seed per point, or {method: [[models of seed 1], [models of seed 2], ...]}; reference: (m,), held
    fixed (a chosen point, not re-estimated per resample). A point's interval is per coordinate, the interval of
    a value (stats.value_ci on the criterion's range from `bounds`, a list with None where unknown): a box, not
    a joint region. A hypervolume's is the percentile bootstrap over prompts, the same resamples (`boot`, else
    bootstrap_weights(P, resamples, seed)) for every model so that the difference of two methods is paired; with
    several seeds a method's hypervolume is the mean of its seeds' and its interval the two-stage bootstrap with
    `draws` ({method: (B, S)}, stats.seed_draws, shared across N by the caller). `references`: {name: (m,)},
    further reference points under which the difference is also given. Returns {"points": {model: {mean, ci_low,
    ci_high}}, "methods": {method: {front, hypervolume: {mean, ci_low, ci_high, se_within, se_between}}},
    "difference": {minuend, subtrahend, mean, ci_low, ci_high, se_within, se_between} or None when `difference`
    does not name two of the groups, "by_reference": {name: difference}, "samples": {method: (B,)}}."""
    labels = list(values)
    arrays = {k: np.asarray(values[k], dtype=np.float64) for k in labels}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"every model needs values on the same prompts; got {sorted(sizes)} prompts")
    num = sizes.pop()
    boot = bootstrap_weights(num, resamples, seed) if boot is None else boot  # (B, P)
    full = np.full((1, num), 1.0 / num)
    bmeans = {k: np.vstack([full, boot]) @ a for k, a in arrays.items()}  # (B + 1, m), row 0 the data
    width = next(iter(arrays.values())).shape[1]
    bounds = list(bounds) if bounds is not None else [None] * width
    points = {}
    for k in labels:
        cis = [value_ci(arrays[k][:, i], bounds[i], confidence) for i in range(width)]
        points[k] = {"mean": arrays[k].mean(0).tolist(), "ci_low": [float(c["ci_low"]) for c in cis],
                     "ci_high": [float(c["ci_high"]) for c in cis]}
    draws = draws or {}
    methods, samples, fixed = {}, {}, {}
    for method, members in groups.items():
        seeds = _seeds(members)
        front = [k for models in seeds for k, f in zip(models, pareto_mask([arrays[k].mean(0) for k in models]))
                 if f]
        hv, samples[method], fixed[method], parts = method_hypervolumes(bmeans, members, reference,
                                                                        draws.get(method))
        lo, hi = percentile_ci(samples[method], confidence)
        methods[method] = {"front": front, "hypervolume": {"mean": hv, "ci_low": float(lo), "ci_high": float(hi),
                                                          "se_within": _float(parts["within"]),
                                                          "se_between": _float(parts["between"])}}
    a, b = difference
    diff, by_reference = None, {}
    if a in groups and b in groups:
        diff = _difference(a, b, methods[a]["hypervolume"]["mean"] - methods[b]["hypervolume"]["mean"],
                           samples[a] - samples[b], fixed[a] - fixed[b], confidence)
        parts = [methods[k]["hypervolume"]["se_between"] for k in (a, b)]
        diff["se_between"] = None if None in parts else float(np.hypot(*parts))
        for name, ref in (references or {}).items():
            hv_a, s_a, f_a, _ = method_hypervolumes(bmeans, groups[a], ref, draws.get(a))
            hv_b, s_b, f_b, _ = method_hypervolumes(bmeans, groups[b], ref, draws.get(b))
            by_reference[name] = {"point": [float(v) for v in ref],
                                  **_difference(a, b, hv_a - hv_b, s_a - s_b, f_a - f_b, confidence)}
    return {"points": points, "methods": methods, "difference": diff, "by_reference": by_reference,
            "samples": samples}


def _difference(a, b, mean, samples, prompts_only, confidence) -> dict:
    """A difference of hypervolumes: its interval from `samples` (seeds and prompts), its prompts' part
    (se_within) from `prompts_only` (the seeds' means under prompt resampling alone)."""
    lo, hi = percentile_ci(samples, confidence)
    return {"minuend": a, "subtrahend": b, "mean": float(mean), "ci_low": float(lo), "ci_high": float(hi),
            "se_within": float(np.std(prompts_only, ddof=1))}


def _float(x):
    return None if x is None else float(x)


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


def pareto_fronts(models: dict, names, configured) -> dict:
    """Per N (up to the smallest M), the non-dominated models in criterion space, each criterion at its own
    family's value at N (sampling and tilted criteria at their single value); configured: each criterion's
    algorithm."""
    labels = list(models)
    m = min(models[k]["m"] for k in labels)
    fronts = {}
    for n in range(1, m + 1):
        points = []
        for k in labels:
            row = []
            for name, alg in zip(names, configured):
                curve = models[k]["values"][name][alg.family]
                row.append(curve["mean"][curve["n"].index(n)] if n in curve["n"] else curve["mean"][0])
            points.append(row)
        mask = pareto_mask(points)
        fronts[str(n)] = {"front": [k for k, f in zip(labels, mask) if f],
                          "points": {k: list(map(float, pt)) for k, pt in zip(labels, points)}}
    return {"criteria": list(names), "fronts": fronts}


"""Intervals over prompts and over trained seeds: one method per kind of quantity (docs/method.md, "Intervals").

- A mean over prompts of a quantity with a known range [low, high] (pass@k, maj@k, any value of a bounded reward,
  a win rate): `bounded_mean_ci`, the Wilson score interval with the effective sample size of the per-prompt
  values, never reaching less far towards an end than the all-at-the-end sample's. It stays inside the range and,
  unlike the normal (Wald) interval, keeps its coverage near the range's ends (benchmarks/interval_coverage.py
  measures both).
- The paired difference of two such means (the same prompts): `paired_difference_ci`, MOVER (Newcombe's method
  for paired proportions, generalised by Zou & Donner): the two Wilson intervals recombined with the per-prompt
  correlation. It stays inside [low - high, high - low].
- A mean of a quantity without a known range: `mean_ci`, the normal interval mean +- z SE.
- Anything that is a function of several means (a non-linear objective, a hypervolume, an effective N): the
  percentile bootstrap over prompts, with the same resamples for every model (`bootstrap_weights`), so that
  differences are paired; a percentile interval lies inside the range of the statistic by construction.
- Several trained seeds of one method: the two-stage bootstrap (`seed_resample`): seeds, then prompts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm


def _z(confidence: float) -> float:
    return float(norm.ppf(0.5 + confidence / 2))


def mean_ci(per_prompt, confidence: float = 0.95) -> dict:
    """Mean over prompts (axis 0) with a normal interval mean +- z SE (SE = std(ddof=1) / sqrt(P));
    the interval is NaN with a single prompt."""
    x = np.asarray(per_prompt, dtype=np.float64)
    mean = x.mean(axis=0)
    p = x.shape[0]
    se = x.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full_like(mean, np.nan)
    z = _z(confidence)
    return {"mean": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "se": se}


def _wilson(p, se, num, z):
    """Wilson score limits for proportions p in [0, 1] with standard errors se, over `num` prompts.

    The effective sample size n = p (1 - p) / se^2 (Korn & Graubard 1998) makes the per-prompt values, which may be
    fractions (pass@1 of 16 samples), count as n Bernoulli trials of the same variance; for a 0/1 sample it is
    P - 1 (se uses ddof = 1), so the interval is Wilson's for P - 1 trials, a little wider than Wilson's own. At
    p = 0 or 1 the sample variance is 0 and says nothing: n = P there, so the interval reaches P / (P + z^2) from
    the end (the Wilson interval of P successes in P) instead of collapsing.

    No interval reaches less far towards the far end than that: the lower limit is at most P / (P + z^2) and the
    upper at least z^2 / (P + z^2). Every sample lies at or below the all-ones one, prompt by prompt, and this is
    that one's lower limit: from P prompts, a share of about z^2 / P of prompts at the other end cannot be
    excluded, however close to the end the observed values are. Without it, values just short of the end (maj@k
    or win rates of 0.9999, a few pass@1 of 15/16) give a huge n and an interval that excludes the truth whenever
    the sample happens to hold none of the rare hard prompts (benchmarks/interval_coverage.py). It leaves 0/1
    samples alone (their limits are within those bounds). Inside the bounds, se = 0 (every prompt the same
    fraction) gives a zero-width interval, as the normal one does."""
    p, se = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(se, dtype=np.float64))
    at_end = (p <= 0) | (p >= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.where(at_end, float(num), p * (1 - p) / se**2)
        z2n = np.where(np.isinf(n), 0.0, z * z / n)
        centre = (p + z2n / 2) / (1 + z2n)
        half = np.sqrt(z2n * p * (1 - p) + z2n**2 / 4) / (1 + z2n)
    reach = z * z / (num + z * z)  # the all-ones sample's distance from the end
    # the limits reach at least that far towards the ends, and bracket p exactly (at p = 1 rounding would put the
    # upper one a hair below it)
    return (np.clip(np.minimum(np.minimum(centre - half, 1 - reach), p), 0.0, 1.0),
            np.clip(np.maximum(np.maximum(centre + half, reach), p), 0.0, 1.0))


def bounded_mean_ci(per_prompt, low: float = 0.0, high: float = 1.0, confidence: float = 0.95) -> dict:
    """Mean over prompts (axis 0) of values in [low, high], with the Wilson score interval at the values'
    effective sample size (see _wilson); the interval lies inside [low, high]. NaN with a single prompt. Returns
    {mean, ci_low, ci_high, se} like mean_ci."""
    x = np.asarray(per_prompt, dtype=np.float64)
    if not high > low:
        raise ValueError(f"a range needs low < high, got [{low}, {high}]")
    slack = 1e-6 * (high - low)  # float rounding (a cosine of 1 + 1e-7) is clipped, anything more refused
    if x.size and (x.min() < low - slack or x.max() > high + slack):
        raise ValueError(f"values outside their range [{low}, {high}]: {x.min():.6g} .. {x.max():.6g}")
    x = np.clip(x, low, high)
    out = mean_ci(x, confidence)
    p, num = x.shape[0], x.shape[0]
    if p > 1:
        scale = high - low
        u = np.clip((out["mean"] - low) / scale, 0.0, 1.0)
        lo, hi = _wilson(u, out["se"] / scale, num, _z(confidence))
        out.update(ci_low=low + scale * lo, ci_high=low + scale * hi)
    return out


def paired_difference_ci(a, b, low: float = 0.0, high: float = 1.0, confidence: float = 0.95) -> dict:
    """Mean over prompts of a - b, where a and b (P, ...) are values in [low, high] on the same prompts, with the
    MOVER interval: the Wilson intervals (l, u) of each mean recombined with r, the correlation of a and b over
    prompts (Newcombe 1998, method 10; Zou & Donner 2008):
        low  = d - sqrt((A - l_a)^2 - 2 r (A - l_a)(u_b - B) + (u_b - B)^2)
        high = d + sqrt((u_a - A)^2 - 2 r (u_a - A)(B - l_b) + (B - l_b)^2)
    with A, B the means and d = A - B. It stays inside [low - high, high - low]; a constant a or b has r = 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs values on the same prompts, got {a.shape} and {b.shape}")
    ca, cb = bounded_mean_ci(a, low, high, confidence), bounded_mean_ci(b, low, high, confidence)
    d = ca["mean"] - cb["mean"]
    se = (a - b).std(axis=0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.full_like(d, np.nan)
    out = {"mean": d, "ci_low": np.full_like(d, np.nan), "ci_high": np.full_like(d, np.nan), "se": se}
    if len(a) > 1:
        da, db = a - a.mean(0), b - b.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (da * db).sum(0) / np.sqrt((da**2).sum(0) * (db**2).sum(0))
        r = np.nan_to_num(r, nan=0.0)
        ea_lo, ea_hi = ca["mean"] - ca["ci_low"], ca["ci_high"] - ca["mean"]
        eb_lo, eb_hi = cb["mean"] - cb["ci_low"], cb["ci_high"] - cb["mean"]
        out["ci_low"] = d - np.sqrt(np.maximum(ea_lo**2 - 2 * r * ea_lo * eb_hi + eb_hi**2, 0.0))
        out["ci_high"] = d + np.sqrt(np.maximum(ea_hi**2 - 2 * r * ea_hi * eb_lo + eb_lo**2, 0.0))
    return out


def positive_mean_ci(per_prompt, confidence: float = 0.95) -> dict:
    """Mean over prompts of a quantity that is positive in truth (a KL) though its per-prompt estimates need not be,
    with the normal interval on the log scale (delta method): mean * exp(+- z SE / mean), inside (0, inf); the
    normal interval where the mean is not positive."""
    out = mean_ci(per_prompt, confidence)
    m, se = np.asarray(out["mean"]), np.asarray(out["se"])
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.exp(_z(confidence) * se / m)
    out["ci_low"] = np.where(m > 0, m / f, out["ci_low"])
    out["ci_high"] = np.where(m > 0, m * f, out["ci_high"])
    return out


def value_ci(per_prompt, bounds=None, confidence: float = 0.95) -> dict:
    """The interval of a mean over prompts by its kind: bounded_mean_ci on a known range, else mean_ci."""
    return mean_ci(per_prompt, confidence) if bounds is None else bounded_mean_ci(per_prompt, *bounds, confidence)


def difference_ci(a, b, bounds=None, confidence: float = 0.95) -> dict:
    """The interval of a paired difference of means by its kind: MOVER on a known range, else normal."""
    if bounds is None:
        return mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), confidence)
    return paired_difference_ci(a, b, *bounds, confidence)


def bootstrap_weights(num_prompts: int, resamples: int, seed=0) -> np.ndarray:
    """(B, P) multinomial counts / P: row b averages a bootstrap resample of the prompts."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_prompts, np.full(num_prompts, 1.0 / num_prompts), size=resamples) / num_prompts


def percentile_ci(samples, confidence: float = 0.95):
    """(low, high) percentiles over axis 0; infinities (e.g. 'never reached') are kept."""
    s = np.asarray(samples, dtype=np.float64)
    q = [50 * (1 - confidence), 50 * (1 + confidence)]
    with np.errstate(invalid="ignore"):
        lo, hi = np.percentile(s, q, axis=0, method="linear")
    # np.percentile interpolates inf - inf into NaN; use the nearest order statistic where that happens
    lo2, hi2 = np.percentile(s, q, axis=0, method="nearest")
    return np.where(np.isnan(lo), lo2, lo), np.where(np.isnan(hi), hi2, hi)


# ---------------------------------------------------------------------------------------------------------------
# several trained seeds of a method: the two-stage bootstrap


def seed_draws(num_seeds: int, resamples: int, rng) -> np.ndarray:
    """(B, S) seed indices drawn with replacement, one row per prompt resample. Draw them once per method and
    share them across everything computed for that method (every N, every quantity), so that contrasts between
    quantities of one method (the turning contrast) are paired in seeds as well as in prompts."""
    return np.random.default_rng(rng).integers(0, num_seeds, size=(resamples, num_seeds))


def seed_resample(per_seed, draws) -> np.ndarray:
    """The two-stage bootstrap of a mean over seeds: per_seed (S, B, ...) holds each seed's statistic under
    prompt resample b (the same prompt resamples for every seed and model); draws (B, S) from seed_draws. Row b of
    the result averages the seeds drawn for b at prompt resample b, so it lies inside the statistic's range. With
    one seed the statistic is returned as it is (the trained model fixed).

    Two biases, in opposite directions. Resampling S seeds with replacement shrinks the seeds' own effects'
    variance by (S - 1) / S, and a percentile interval from a handful of seeds cannot have a t-quantile's width:
    with three seeds the seed part is approximate, which is why seed_parts reports it separately. And each seed's
    own noise on each prompt (its samples, its interaction with the prompt) is counted by both stages, like the
    pigeonhole bootstrap of a crossed design (Owen 2007): where that noise dominates the interval errs wide, where
    the prompts' shared difficulty or the seeds' own effects dominate the excess is small (tests/test_stats.py
    checks the bounds)."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.shape[0] == 1:
        return x[0]
    b = np.arange(x.shape[1])[:, None]
    return x[draws, b].mean(axis=1)


def seed_parts(point_per_seed, boot_per_seed) -> dict:
    """The two parts of a mean over seeds' uncertainty: `within` (prompts: the SE of the seeds' mean over prompt
    resamples, the trained models held fixed) and `between` (seeds: the SD of the seeds' full-data values over
    sqrt(S); None with one seed). point_per_seed (S, ...), boot_per_seed (S, B, ...)."""
    point = np.asarray(point_per_seed, dtype=np.float64)
    boot = np.asarray(boot_per_seed, dtype=np.float64)
    s = point.shape[0]
    within = boot.mean(axis=0).std(axis=0, ddof=1)
    between = point.std(axis=0, ddof=1) / math.sqrt(s) if s > 1 else None
    return {"within": within, "between": between}

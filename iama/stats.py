"""Intervals over prompts: normal intervals of means, and the percentile bootstrap that evaluation and the
sweep's fronts share (the same resamples for every model, so comparisons are paired)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm


def mean_ci(per_prompt, confidence: float = 0.95) -> dict:
    """Mean over prompts (axis 0) with a normal interval mean +- z SE (SE = std(ddof=1) / sqrt(P));
    the interval is NaN with a single prompt."""
    x = np.asarray(per_prompt, dtype=np.float64)
    mean = x.mean(axis=0)
    p = x.shape[0]
    se = x.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full_like(mean, np.nan)
    z = norm.ppf(0.5 + confidence / 2)
    return {"mean": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "se": se}


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

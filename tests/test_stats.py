"""The interval functions of iama.stats, pinned against closed forms and against simulations with known variances."""

import math
import warnings

import numpy as np
import pytest

from iama.stats import (
    bootstrap_weights,
    bounded_mean_ci,
    mean_ci,
    paired_difference_ci,
    percentile_ci,
    seed_draws,
    seed_parts,
    seed_resample,
)

Z = 1.959963984540054  # the normal 97.5% quantile


def wilson(p, n, z=Z):
    """Wilson's score interval for a proportion p of n trials, written out."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# ---------------------------------------------------------------------------------------------------------------
# bounded means


def test_zero_one_sample_is_wilson_at_p_minus_one():
    x = np.r_[np.ones(57), np.zeros(3)]
    out = bounded_mean_ci(x)
    assert out["mean"] == pytest.approx(0.95)
    assert 0 <= out["ci_low"] < 0.95 < out["ci_high"] <= 1
    # effective n = p (1 - p) / SE^2 with SE from std(ddof=1): exactly P - 1 trials for 0/1 values
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(wilson(0.95, 59), abs=1e-12)
    assert out["ci_low"] < 0.95 - Z * out["se"]  # not the normal interval: Wilson leans away from the end


def test_all_ones_and_all_zeros_reach_wilson_of_p_out_of_p():
    p = 40
    out = bounded_mean_ci(np.ones(p))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((p / (p + Z * Z), 1.0), abs=1e-12)
    out = bounded_mean_ci(np.zeros(p))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.0, Z * Z / (p + Z * Z)), abs=1e-12)


def test_constant_interior_sample_has_zero_width():
    out = bounded_mean_ci(np.full(25, 0.625))
    assert out["ci_low"] == out["ci_high"] == pytest.approx(0.625)


def test_fractional_values_use_their_effective_sample_size():
    rng = np.random.default_rng(3)
    x = rng.binomial(16, 0.6, size=50) / 16  # pass@1-like fractions: less spread than 0/1 values
    out = bounded_mean_ci(x)
    p, se = x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    n = p * (1 - p) / se**2
    assert n > 5 * len(x)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(wilson(p, n), abs=1e-12)


def test_values_just_short_of_the_end_reach_as_far_as_the_all_ones_sample():
    # 29 ones and a 0.9999 (a maj@k or win rate near 1): the sample variance is tiny, the effective n huge; the
    # all-ones sample's limit P / (P + z^2) still bounds the interval, or one near-one value would exclude 0.99
    p = 30
    out = bounded_mean_ci(np.r_[np.ones(p - 1), 0.9999])
    assert out["ci_low"] == pytest.approx(p / (p + Z * Z), abs=1e-12)
    assert out["ci_high"] < 1
    out = bounded_mean_ci(np.r_[np.zeros(p - 1), 1e-4])  # and symmetrically at 0
    assert out["ci_high"] == pytest.approx(Z * Z / (p + Z * Z), abs=1e-12)


def test_one_prompt_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bounded_mean_ci(np.array([0.7]))
        diff = paired_difference_ci(np.array([0.7]), np.array([0.2]))
    assert out["mean"] == pytest.approx(0.7)
    assert np.isnan(out["ci_low"]) and np.isnan(out["ci_high"]) and np.isnan(out["se"])
    assert diff["mean"] == pytest.approx(0.5)
    assert np.isnan(diff["ci_low"]) and np.isnan(diff["ci_high"])


def test_values_outside_the_range_are_refused():
    with pytest.raises(ValueError, match="outside their range"):
        bounded_mean_ci(np.array([0.2, 1.5]))
    with pytest.raises(ValueError, match="outside their range"):
        bounded_mean_ci(np.array([-0.5, 0.5]), low=0.0, high=1.0)
    with pytest.raises(ValueError, match="outside their range"):
        paired_difference_ci(np.array([0.2, 0.4]), np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="low < high"):
        bounded_mean_ci(np.array([0.5, 0.5]), low=1.0, high=1.0)


@pytest.mark.parametrize("x", [
    np.random.default_rng(0).binomial(16, 0.4, size=(40, 3)) / 16,  # columns are separate quantities
    np.r_[np.ones(30), 0.9999, 0.96],  # near the end, where the bound on the reach applies
])
def test_a_rescaled_range_maps_the_interval(x):
    a, b = bounded_mean_ci(x), bounded_mean_ci(2 * x - 1, low=-1.0, high=1.0)
    for key in ("mean", "ci_low", "ci_high"):
        np.testing.assert_allclose(b[key], 2 * a[key] - 1, atol=1e-12)
    np.testing.assert_allclose(b["se"], 2 * a["se"], atol=1e-12)


def test_columns_are_independent_quantities():
    rng = np.random.default_rng(1)
    x = rng.random((30, 4))
    out = bounded_mean_ci(x)
    for j in range(4):
        col = bounded_mean_ci(x[:, j])
        assert (out["ci_low"][j], out["ci_high"][j]) == pytest.approx((col["ci_low"], col["ci_high"]), abs=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# paired differences


def test_paired_difference_at_the_extremes_stays_in_range():
    p = 30
    reach = Z * Z / (p + Z * Z)  # each mean's Wilson interval reaches this far from its end
    out = paired_difference_ci(np.ones(p), np.zeros(p))
    assert out["mean"] == 1
    assert -1 <= out["ci_low"] < 1 and out["ci_high"] == pytest.approx(1.0)
    # a constant a or b has r = 0: the low side combines both reaches
    assert out["ci_low"] == pytest.approx(1 - math.sqrt(2) * reach, abs=1e-12)
    out = paired_difference_ci(np.zeros(p), np.ones(p))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((-1.0, -1 + math.sqrt(2) * reach), abs=1e-12)


def test_paired_difference_uncorrelated_is_the_mover_formula():
    # centred, these are orthogonal patterns: the correlation over prompts is exactly 0
    a = np.tile([0.75, 0.75, 0.25, 0.25], 10)
    b = np.tile([0.5, 0.25, 0.5, 0.25], 10)
    p = len(a)
    out = paired_difference_ci(a, b)
    bounds = []
    for x in (a, b):
        m, se = x.mean(), x.std(ddof=1) / math.sqrt(p)
        bounds.append((m, *wilson(m, m * (1 - m) / se**2)))
    (ma, la, ua), (mb, lb, ub) = bounds
    assert out["mean"] == pytest.approx(ma - mb)
    assert out["ci_low"] == pytest.approx(ma - mb - math.hypot(ma - la, ub - mb), abs=1e-12)
    assert out["ci_high"] == pytest.approx(ma - mb + math.hypot(ua - ma, mb - lb), abs=1e-12)
    assert out["se"] == pytest.approx((a - b).std(ddof=1) / math.sqrt(p))


def test_paired_difference_narrows_with_correlation():
    rng = np.random.default_rng(2)
    q = rng.beta(2, 2, size=60)
    a = rng.binomial(16, q) / 16
    b_corr = rng.binomial(16, np.clip(q - 0.05, 0, 1)) / 16  # the same prompts hard for both
    b_ind = rng.permutation(b_corr)  # same values, pairing broken
    corr, ind = paired_difference_ci(a, b_corr), paired_difference_ci(a, b_ind)
    assert corr["ci_high"] - corr["ci_low"] < 0.7 * (ind["ci_high"] - ind["ci_low"])


def test_paired_difference_needs_the_same_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference_ci(np.ones(5), np.ones(6))


# ---------------------------------------------------------------------------------------------------------------
# the normal interval


def test_mean_ci_is_the_normal_interval():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    out = mean_ci(x)
    se = math.sqrt(5 / 3) / 2  # std(ddof=1) / sqrt(4)
    assert out["mean"] == 2.5 and out["se"] == pytest.approx(se)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2.5 - Z * se, 2.5 + Z * se))
    out = mean_ci(x, confidence=0.9)
    assert out["ci_high"] - 2.5 == pytest.approx(1.6448536269514722 * se)
    # no range: 0/1 values of 29 in 30 give an interval past 1, and all ones a zero-width one
    out = mean_ci(np.r_[np.ones(29), 0.0])
    assert out["ci_high"] > 1
    out = mean_ci(np.ones((10, 2)))
    np.testing.assert_array_equal(out["ci_low"], [1.0, 1.0])
    np.testing.assert_array_equal(out["ci_high"], [1.0, 1.0])
    out = mean_ci(np.array([[0.3, 0.4]]))
    assert np.all(np.isnan(out["ci_low"])) and np.all(np.isnan(out["se"]))


# ---------------------------------------------------------------------------------------------------------------
# the bootstrap over prompts, and over seeds then prompts


def test_bootstrap_weights_and_percentiles():
    w = bootstrap_weights(7, 50, seed=4)
    assert w.shape == (50, 7)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_array_equal(w, bootstrap_weights(7, 50, seed=4))
    lo, hi = percentile_ci(np.array([[1.0], [2.0], [np.inf], [np.inf]]))
    assert lo[0] == pytest.approx(1.075) and hi[0] == np.inf  # 'never reached' kept, not NaN


def simulate_seeds(rng, seeds, prompts, tau, sigma_prompt, sigma_noise=0.0):
    """(S, P) per-prompt values: 0.5 + u_s + v_p + e_sp with a seed effect u_s ~ N(0, tau^2) on every prompt of a
    seed, a prompt effect v_p ~ N(0, sigma_prompt^2) shared by the seeds (the same prompts) and noise e_sp ~
    N(0, sigma_noise^2) of each seed on each prompt (its own samples). The mean over seeds and prompts has variance
    tau^2 / S + sigma_prompt^2 / P + sigma_noise^2 / (P S)."""
    return (0.5 + rng.normal(0, tau, (seeds, 1)) + rng.normal(0, sigma_prompt, (1, prompts))
            + rng.normal(0, sigma_noise, (seeds, prompts)))


def two_stage(rng, x, resamples=400):
    """(two-stage rows, prompt-only rows, per-seed rows (S, B)) for the mean over seeds and prompts of x (S, P)."""
    per_seed = x @ bootstrap_weights(x.shape[1], resamples, rng).T
    return seed_resample(per_seed, seed_draws(x.shape[0], resamples, rng)), per_seed.mean(axis=0), per_seed


def test_seeds_that_agree_give_the_prompt_only_interval():
    # tau = 0 and no noise of their own: every seed has the same values, so the seed stage adds nothing at all
    rng = np.random.default_rng(5)
    x = simulate_seeds(rng, 3, 80, tau=0.0, sigma_prompt=0.2)
    two, one, _ = two_stage(rng, x)
    np.testing.assert_allclose(two, one, atol=1e-12)


def test_seeds_agreeing_up_to_their_own_noise_are_about_as_wide_as_prompts_only():
    # tau = 0 but each seed has its own noise (sigma 0.05 against 0.2 shared by prompts). The seed stage counts
    # that noise again: drawing seeds at each prompt resample, their spread holds the noise of the data and of the
    # resample (Owen 2007, the pigeonhole bootstrap: 3 sigma_noise^2 / (P S) instead of 1), so the two-stage SD is
    # sqrt(1 + 2 sigma_noise^2 / (S sigma_prompt^2 + sigma_noise^2)) = 1.020 times the prompt-only SD here
    rng = np.random.default_rng(6)
    ratios = []
    for _ in range(100):
        two, one, _ = two_stage(rng, simulate_seeds(rng, 3, 100, tau=0.0, sigma_prompt=0.2, sigma_noise=0.05))
        ratios.append((two.var(), one.var()))
    v2, v1 = np.mean(ratios, axis=0)
    assert 0.97 < math.sqrt(v2 / v1) < 1.05


def test_seed_variance_widens_the_interval_to_the_theoretical_se():
    # S = 5 seeds with tau = 0.05, 100 prompts with sigma = 0.2: SE^2 = tau^2 / S + sigma^2 / P = 0.0009, where the
    # prompts alone give 0.0004. Over 200 data sets the mean bootstrap variance has a Monte Carlo SE of about 3%
    # (the seed part rests on 4 degrees of freedom per data set): 10% is three of them.
    rng = np.random.default_rng(7)
    s, p, tau, sigma = 5, 100, 0.05, 0.2
    var2, var1, width2, width1 = [], [], [], []
    for _ in range(200):
        two, one, _ = two_stage(rng, simulate_seeds(rng, s, p, tau, sigma))
        var2.append(two.var(ddof=1))
        var1.append(one.var(ddof=1))
        width2.append(np.subtract(*percentile_ci(two)[::-1]))
        width1.append(np.subtract(*percentile_ci(one)[::-1]))
    # a bootstrap over P prompts has variance (P - 1) / P of sigma^2 / P, one over S seeds (S - 1) / S of tau^2 / S
    theory = tau**2 / s * (s - 1) / s + sigma**2 * (p - 1) / p**2
    assert np.mean(var2) == pytest.approx(theory, rel=0.10)
    assert np.mean(var1) == pytest.approx(sigma**2 * (p - 1) / p**2, rel=0.05)
    assert np.mean(width2) > 1.3 * np.mean(width1)  # clearly wider: 1.5 in theory
    # the percentile width over 2 z: under the SE by the seeds' (S - 1) / S and a few % more (the mean of an SD
    # estimate with 4 degrees of freedom is under the SD; five seeds resample to few distinct means)
    assert np.mean(width2) / (2 * Z) == pytest.approx(math.sqrt(tau**2 / s * (s - 1) / s + sigma**2 / p), rel=0.10)


def test_two_stage_variance_lies_between_the_truth_and_the_pigeonhole_excess():
    # seeds differing only by their own noise (tau = 0, no shared prompt effect): the truth is sigma^2 / (P S);
    # the two-stage bootstrap is conservative: not under the truth, at most 3 sigma^2 / (P S) (see above)
    rng = np.random.default_rng(8)
    s, p, sigma = 3, 100, 0.2
    v = np.mean([two_stage(rng, simulate_seeds(rng, s, p, 0.0, 0.0, sigma))[0].var(ddof=1) for _ in range(200)])
    assert 0.9 * sigma**2 / (p * s) < v < 1.1 * 3 * sigma**2 / (p * s)


def test_seed_parts():
    rng = np.random.default_rng(9)
    s, p, tau, sigma_prompt, sigma_noise = 4, 100, 0.05, 0.2, 0.1
    within = []
    for _ in range(100):
        x = simulate_seeds(rng, s, p, tau, sigma_prompt, sigma_noise)
        point = x.mean(axis=1)
        _, _, per_seed = two_stage(rng, x)
        parts = seed_parts(point, per_seed)
        # between: the SD of the seeds' full-data values over sqrt(S), exactly
        assert parts["between"] == pytest.approx(np.std(point, ddof=1) / math.sqrt(s), rel=1e-12)
        within.append(parts["within"])
    # within: the prompts' part of the mean over seeds, sqrt((sigma_prompt^2 + sigma_noise^2 / S) / P) (times the
    # bootstrap's sqrt((P - 1) / P)); its mean over 100 data sets is within 1% or so
    expect = math.sqrt((sigma_prompt**2 + sigma_noise**2 / s) * (p - 1)) / p
    assert np.mean(within) == pytest.approx(expect, rel=0.05)
    assert seed_parts(point[:1], per_seed[:1])["between"] is None


def test_one_seed_is_the_statistic_itself():
    rng = np.random.default_rng(10)
    per_seed = rng.random((1, 50, 3))
    out = seed_resample(per_seed, seed_draws(1, 50, rng))
    np.testing.assert_array_equal(out, per_seed[0])


def test_seed_resample_keeps_infinities():
    # an effective N 'never reached' (inf) by a seed stays inf where that seed is drawn, and a row drawing only
    # finite seeds stays finite (the mean of all seeds, inf, is no centre to widen them about)
    per_seed = np.array([[1.0, 2.0], [np.inf, np.inf]])  # (S, B)
    draws = np.array([[0, 0], [1, 0]])  # (B, S)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = seed_resample(per_seed, draws)
    assert out[0] == 1.0 and np.isinf(out[1])
    assert not np.isnan(out).any()

"""The exact lab: the mirror step, the toy's closed form, the convergence bound, the estimators, the gap."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from iama import BestOfN, Criterion, Objective, Sampling, WorstOfN
from iama.lab import (
    _policy_gradients,
    convergence_instance,
    estimate_first_variation,
    first_variation,
    kl,
    mirror_descent,
    mirror_step,
    objective_value,
    plugin_expectation,
    run_lab,
    sample,
    sup_cdf_distance,
    toy_objective,
    toy_optimum,
    toy_start,
    two_target_toy,
)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_mirror_step_is_the_regularised_argmax(beta):
    """pi_{t+1} maximises <fv, pi> - beta KL(pi || pi_ref) - (1/eta) KL(pi || pi_t) over the simplex."""
    rng = np.random.default_rng(0)
    k, eta = 6, 0.7
    fv, ref, pi_t = rng.normal(size=k), rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
    new = np.exp(mirror_step(np.log(pi_t), fv, eta, beta, np.log(ref)))

    def loss(theta):
        p = softmax(theta)
        return -(fv @ p - beta * kl(p, ref) - kl(p, pi_t) / eta)

    best = softmax(minimize(loss, np.zeros(k), method="BFGS", options={"gtol": 1e-10}).x)
    np.testing.assert_allclose(new, best, atol=1e-5)
    # KKT: the gradient of the objective, fv - beta log(pi/ref) - (1/eta) log(pi/pi_t), is constant
    grad = fv - beta * np.log(new / ref) - np.log(new / pi_t) / eta
    assert np.ptp(grad) < 1e-10
    assert np.abs(new - pi_t).max() > 0.05  # the step moved: the check above is not trivial


def test_first_variation_is_the_directional_derivative():
    """<dJ/dpi, q - pi> = d/de g(R[pi + e (q - pi)]): checks the chain rule with a value-dependent dg/dR."""
    rng = np.random.default_rng(1)
    k = 7
    r = rng.uniform(size=(k, 2))
    obj = Objective([Criterion("a", BestOfN(3), 0.4), Criterion("b", WorstOfN(2), 0.6)], aggregator="smoothmin",
                    gamma=3.0)
    pi, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
    e = 1e-6
    numeric = (objective_value(obj, pi + e * (q - pi), r) - objective_value(obj, pi - e * (q - pi), r)) / (2 * e)
    assert first_variation(obj, pi, r) @ (q - pi) == pytest.approx(numeric, abs=1e-8)


def test_toy_n4_matches_the_closed_form_cdf():
    """IAMA Prop. 3.1: exact mirror descent reaches F(y) = y^a / (y^a + (1-y)^a), a = 1/3, within 0.02.
    (From uniform in 10^4 steps at eta = 10/L; the experiment starts from a bump and runs 2 10^4 steps.)"""
    _, edges, _ = two_target_toy(200)
    start = sup_cdf_distance(toy_start((edges[:-1] + edges[1:]) / 2, "uniform"), edges, 4)
    pi, history = toy_optimum(4, 10_000, start="uniform", checkpoints=(1_000,))
    assert start > 0.1 and history[1_000] > 0.05  # far from the optimum at first
    assert history[10_000] < 0.02
    assert sup_cdf_distance(pi, edges, 4) == history[10_000]


def test_toy_n2_is_uniform():
    pi, history = toy_optimum(2, 3_000)  # from the bump y(1-y)
    assert history[0] > 0.09 and history[3_000] < 0.003
    assert np.all(np.abs(pi[10:-10] * len(pi) - 1) < 0.25)  # nearly uniform (the outermost cells lag)


def test_linear_objective_collapses_to_one_half_and_iama_does_not():
    y, _, r = two_target_toy(200)
    lin = mirror_descent(toy_objective(Sampling()), r, eta=100.0, steps=1_000, pi0=toy_start(y)).pi
    assert lin[np.abs(y - 0.5) < 0.01].sum() > 0.99
    assert lin @ y == pytest.approx(0.5, abs=1e-9)
    pi, _ = toy_optimum(4, 2_000)
    assert pi[np.abs(y - 0.5) < 0.01].sum() < 0.05
    assert pi[(y < 0.1) | (y > 0.9)].sum() > 0.4  # mass moved towards the two targets


@pytest.mark.parametrize("n", [2, 4, 8])
def test_convergence_bound_holds_on_every_step(n):
    rng = np.random.default_rng(10 + n)
    for _ in range(2):
        inst = convergence_instance(rng, n, steps=80)
        assert inst["kkt_spread"] < 1e-10  # pi* is the optimum
        assert len(inst["t"]) >= 5
        assert np.all(np.diff(inst["excess"]) < 0)  # J increases at every step
        ratio = inst["excess"] / inst["bound"]
        assert np.all(ratio <= 1.0)
        assert ratio.max() > 1e-3  # the comparison is not vacuous


def test_plugin_expectation_matches_iama_monte_carlo():
    """The exact conditional expectation of the plugin estimate agrees with iama's estimator (and the unbiased
    estimator's conditional expectation is the exact first variation)."""
    rng = np.random.default_rng(2)
    r, pi, n, m, reps = np.array([0.1, 0.4, 0.5, 0.9]), np.array([0.4, 0.3, 0.2, 0.1]), 3, 6, 40_000
    for alg, sign in [(BestOfN(n), 1.0), (WorstOfN(n), -1.0)]:
        groups = r[sample(pi, (len(r), reps, m), rng)]
        groups[:, :, 0] = r[:, None]
        exact_fv = alg.first_variation(pi, r)
        for estimator, expect in [("plugin", plugin_expectation(pi, r, n, m, sign)), ("unbiased", exact_fv)]:
            s = alg.estimate_first_variation(groups, estimator)[..., 0]
            se = np.maximum(s.std(1) / np.sqrt(reps), 1e-12)
            assert np.all(np.abs(s.mean(1) - expect) < 5 * se)
        assert np.abs(plugin_expectation(pi, r, n, m, sign) - exact_fv).max() > 0.02  # the plugin is biased


def test_importance_weighted_estimate_is_unbiased_and_average_is_exact_for_sampling():
    rng = np.random.default_rng(3)
    k = 5
    r = rng.uniform(size=(k, 1))
    pi = rng.dirichlet(np.ones(k) * 3)
    obj = Objective([Criterion("r", BestOfN(3))], scale_rewards="none")
    est = estimate_first_variation(obj, pi, r, group_size=6, groups=100_000, weighting="importance", rng=rng)
    exact = first_variation(obj, pi, r)
    # only defined up to a constant: compare centred under pi
    np.testing.assert_allclose(est - pi @ est, exact - pi @ exact, atol=0.03)
    # Sampling: each s_j is r(y_j) itself, so the per-response average is exact where drawn, and responses
    # not drawn get the mean of the draws
    lin = Objective([Criterion("r", Sampling())], scale_rewards="none")
    avg = estimate_first_variation(lin, pi, r, group_size=4, groups=1, rng=7)
    idx = sample(pi, (1, 4), np.random.default_rng(7))  # the same draws
    drawn = np.isin(np.arange(k), idx)
    assert 0 < drawn.sum() < k
    np.testing.assert_allclose(avg[drawn], r[drawn, 0])
    np.testing.assert_allclose(avg[~drawn], r[idx, 0].mean())


def test_group_mean_baseline_shrinks_the_policy_gradient_by_1_minus_n_over_m():
    rng = np.random.default_rng(4)
    r, pi, n = np.array([0.0, 0.3, 0.6, 1.0]), np.array([0.4, 0.3, 0.2, 0.1]), 4
    fv = BestOfN(n).first_variation(pi, r)
    g = pi * (fv - pi @ fv)
    for m in (4, 8):
        for baseline, shrink in [("group_mean", 1 - n / m), ("loo", 1.0)]:
            obj = Objective([Criterion("r", BestOfN(n))], baseline=baseline, scale_rewards="none")
            est = _policy_gradients(obj, pi, r, m, 20_000, rng)
            assert est.mean(0) @ g / (g @ g) == pytest.approx(shrink, abs=0.03)


def test_estimated_descent_approaches_the_exact_one():
    y, _, r = two_target_toy(50)
    obj, pi_ref = toy_objective(BestOfN(4)), np.full(50, 1 / 50)
    exact = mirror_descent(obj, r, 0.3, 300, beta=0.01, pi_ref=pi_ref, record=[0, 300])
    est = mirror_descent(obj, r, 0.3, 300, beta=0.01, pi_ref=pi_ref, record=[0, 300], group_size=16, groups=8, rng=0)
    assert est.J[-1] > est.J[0] + 0.5 * (exact.J[-1] - exact.J[0])
    assert est.J[-1] <= exact.J[-1] + 1e-9


@pytest.mark.parametrize("experiment", ["toy", "convergence", "estimators", "gap", "beyond", "voting"])
def test_run_lab_quick_writes_a_png_and_json(experiment, tmp_path):
    result = run_lab(experiment, tmp_path, quick=True)
    png, data = tmp_path / f"{experiment}.png", tmp_path / f"{experiment}.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = json.loads(data.read_text())
    assert saved["experiment"] == experiment and saved["quick"] is True
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left nothing behind
    if experiment == "toy":
        assert saved["linear"]["mass_within_0.01_of_0.5"] > 0.9
        assert saved["sup_cdf_distance"]["2"] < saved["sup_cdf_distance_history"]["2"]["0"]
    if experiment == "convergence":
        assert saved["bound_holds"] and 0 < saved["max_ratio"] <= 1 and saved["pairs"] > 100
    if experiment == "estimators":
        assert saved["policy_gradient"]["group_mean"]["shrink"][0] == 0.0  # M = N: nothing is learned
    if experiment == "gap":
        assert saved["gap_exact"] > 0.05 and saved["gap_estimated"] > 0
    if experiment == "beyond":  # biased low, more so as N / M grows on the geometric tail
        rows = [row for row in saved["rows"] if row["law"].startswith("geometric") and row["M"] == 8]
        assert all(row["relative_value_bias"] < 0 for row in saved["rows"])
        assert [row["N_over_M"] for row in rows] == [1, 2, 4]
        assert rows[0]["relative_value_bias"] > rows[1]["relative_value_bias"] > rows[2]["relative_value_bias"]
    if experiment == "voting":  # exact with one wrong answer; maj:8's estimate is silent more often than dense's
        for row in saved["rows"]:
            one = row["wrong_answers"] == 1
            assert (abs(row["gradient_cosine"] - 1) < 1e-12) if one else (0.9 < row["gradient_cosine"] <= 1 + 1e-12)
            assert not one or abs(row["gradient_length_ratio"] - 1) < 1e-12 and row["response_error"] < 1e-12
            assert row["silent_group_chance_maj"] > row["silent_group_chance_dense"]
        assert 0.5 < saved["stacked_cosine"]["8"]["surrogate"] < 1
    assert result["figure"] == f"{experiment}.png"


def test_run_lab_rejects_unknown_experiments(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        run_lab("nope", tmp_path)


def test_plugin_value_expectation_matches_enumeration_beyond_the_group():
    """E over all groups of m (enumerated with their multinomial probabilities) of the plugin best-of-n value,
    for n > m, against the binomial-moment formula."""
    from itertools import product

    from iama.lab import plugin_value_expectation

    r, pi = np.array([0.1, 0.4, 0.5, 1.0]), np.array([0.4, 0.3, 0.2, 0.1])
    for n, m in [(6, 3), (12, 3), (3, 3), (2, 4)]:
        total = 0.0
        for idx in product(range(len(r)), repeat=m):
            g = np.sort(r[list(idx)])
            c = np.arange(1, m + 1) / m
            total += np.prod(pi[list(idx)]) * np.sum(g * (c**n - (c - 1 / m) ** n))
        assert plugin_value_expectation(pi, r, n, m) == pytest.approx(total, rel=1e-12)


def test_the_voting_experiments_exact_expectations_against_every_group():
    """dense_factor_expectation and silent_group_chance against every ordered group of m draws from an answer law,
    each with its probability, run through the estimators themselves."""
    from itertools import product

    from iama.algorithms import MajorityVote, MajorityVoteDense, threshold_vote_slope
    from iama.lab import dense_factor_expectation, silent_group_chance

    probs, answers = np.array([0.35, 0.4, 0.25]), ["0", "1", "2"]  # answer 0 is the right one
    for n, m in [(4, 4), (3, 5), (5, 5)]:
        given, silent = {0: 0.0, 1: 0.0}, 0.0
        for draw in product(range(3), repeat=m):
            prob = np.prod(probs[list(draw)])
            r = (np.array(draw) == 0).astype(float)
            a = [answers[i] for i in draw]
            s, b = MajorityVoteDense(n).estimate(r, answers=a)
            given[int(r[0])] += prob * (s - b)[0]  # E[A_1 ; r_1]
            s, b = MajorityVote(n).estimate(r, answers=a)
            silent += prob * (np.abs(s - b).max() < 1e-9)
        kappa = given[1] / probs[0] - given[0] / (1 - probs[0])
        assert dense_factor_expectation(probs[0], n, m) == pytest.approx(kappa, rel=1e-12)
        assert silent_group_chance(probs, n, m) == pytest.approx(silent, abs=1e-12)
    # a large group recovers the population factor: the plug-in is consistent
    assert dense_factor_expectation(0.3, 8, 4000) == pytest.approx(threshold_vote_slope(0.3, 8), rel=1e-2)

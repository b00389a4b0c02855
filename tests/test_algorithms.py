"""The algorithms' math pinned against brute force: enumeration of every draw, finite differences, definitions."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iama.algorithms import (ALGORITHMS, BestOfN, MajorityVote, MajorityVoteDense, Sampling, SoftBestOfN, Tilted,
                             WorstOfN, _generic_estimates, parse_algorithm)

N_SAMPLE = [Sampling(), BestOfN(2), BestOfN(3), WorstOfN(2), WorstOfN(4), SoftBestOfN(3, 0.4), SoftBestOfN(2, 2.0)]
ALL = N_SAMPLE + [Tilted(0.5), Tilted(3.0)]
ANSWER_BASED = [MajorityVote(3), MajorityVoteDense(4)]  # by answers too: tests/test_majority*.py


def problem(seed, k=4, ties=True):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k))
    r = rng.normal(size=k)
    if ties:
        r[1] = r[2]  # a tie between two distinct responses
    return p, r


def brute_value(alg, p, r):
    if isinstance(alg, Tilted):
        w = p * np.exp(r / alg.temperature)
        return float(w @ r / w.sum())
    return sum(np.prod(p[list(t)]) * alg.kernel(r[list(t)]) for t in itertools.product(range(len(p)), repeat=alg.n))


@pytest.mark.parametrize("alg", ALL, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_matches_enumeration(alg, seed):
    p, r = problem(seed)
    assert alg.value(p, r) == pytest.approx(brute_value(alg, p, r), abs=1e-12)


@pytest.mark.parametrize("alg", ALL, ids=repr)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_variation_matches_finite_differences(alg, seed):
    p, r = problem(seed)
    q = np.random.default_rng(seed + 10).dirichlet(np.ones(len(p)))
    eps = 1e-6
    fd = (alg.value(p + eps * (q - p), r) - alg.value(p - eps * (q - p), r)) / (2 * eps)
    assert fd == pytest.approx(np.dot(q - p, alg.first_variation(p, r)), abs=1e-8)


@pytest.mark.parametrize("alg", N_SAMPLE, ids=repr)
def test_first_variation_is_the_canonical_form(alg):
    """N * E f(r(y), Y_2..Y_N): the constant the estimators target."""
    p, r = problem(3)
    k = len(p)
    for y in range(k):
        brute = alg.n * sum(np.prod(p[list(t)]) * alg.kernel(np.r_[r[y], r[list(t)]])
                            for t in itertools.product(range(k), repeat=alg.n - 1))
        assert alg.first_variation(p, r)[y] == pytest.approx(brute, abs=1e-12)


def conditional_expectation(alg, p, r, m, estimator, which=0):
    """E[estimate of sample 0 | y_0 = y] for each y, enumerating all draws of the other m-1 samples."""
    k = len(p)
    out = np.zeros(k)
    others = np.array(list(itertools.product(range(k), repeat=m - 1)))
    weights = np.prod(p[others], axis=1)
    for y in range(k):
        groups = np.concatenate([np.full((len(others), 1), y), others], axis=1)
        est = alg.estimate(r[groups], estimator)[which]  # every group at once: (G, m)
        out[y] = weights @ est[:, 0]
    return out


@pytest.mark.parametrize("alg", N_SAMPLE, ids=repr)
@pytest.mark.parametrize("m", [4, 5])
def test_unbiased_estimator_conditional_expectation_is_exact(alg, m):
    p, r = problem(4, k=3)
    exact = alg.first_variation(p, r)
    cond = conditional_expectation(alg, p, r, m, "unbiased")
    np.testing.assert_allclose(cond, exact, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_unbiased_with_n_equal_m(n):
    p, r = problem(5, k=3)
    for alg in [BestOfN(n), WorstOfN(n), SoftBestOfN(n, 0.7)]:
        np.testing.assert_allclose(conditional_expectation(alg, p, r, n, "unbiased"), alg.first_variation(p, r),
                                   atol=1e-9)


def test_plugin_is_biased_but_unbiased_is_not():
    p, r = problem(6, k=3)
    alg = BestOfN(3)
    gap = np.abs(conditional_expectation(alg, p, r, 4, "plugin") - alg.first_variation(p, r))
    assert gap.max() > 1e-3


@pytest.mark.parametrize("alg", N_SAMPLE, ids=repr)
def test_loo_baseline_depends_only_on_the_others(alg):
    rng = np.random.default_rng(7)
    g = rng.normal(size=6)
    for est in alg.estimators:
        b = alg.loo_baseline(g, est)
        for new in [-3.0, 0.1, 5.0]:
            h = g.copy()
            h[2] = new
            assert alg.loo_baseline(h, est)[2] == pytest.approx(b[2], abs=1e-12)


@pytest.mark.parametrize("alg", [BestOfN(3), WorstOfN(3), SoftBestOfN(3, 0.5)], ids=repr)
def test_loo_baseline_definition(alg):
    """unbiased: N * mean over (N-1)-subsets of the others of f_{N-1}; plugin: N * E f_{N-1} with replacement."""
    g = np.array([0.3, -1.0, 0.3, 2.0, 0.7])
    m, n = len(g), alg.n
    b_u, b_p = alg.loo_baseline(g, "unbiased"), alg.loo_baseline(g, "plugin")
    for j in range(m):
        o = np.delete(g, j)
        subsets = [alg.kernel(o[list(s)]) for s in itertools.combinations(range(m - 1), n - 1)]
        tuples = [alg.kernel(o[list(t)]) for t in itertools.product(range(m - 1), repeat=n - 1)]
        assert b_u[j] == pytest.approx(n * np.mean(subsets), abs=1e-12)
        assert b_p[j] == pytest.approx(n * np.mean(tuples), abs=1e-12)


@pytest.mark.parametrize("alg", N_SAMPLE, ids=repr)
def test_plugin_equals_its_definition(alg):
    """N * E f(r_j, Z_2..Z_N), Z drawn with replacement from the whole group."""
    g = np.array([0.5, -0.2, 0.5, 1.3])
    s = alg.estimate_first_variation(g, "plugin")
    for j in range(len(g)):
        tuples = itertools.product(range(len(g)), repeat=alg.n - 1)
        brute = alg.n * np.mean([alg.kernel(np.r_[g[j], g[list(t)]]) for t in tuples])
        assert s[j] == pytest.approx(brute, abs=1e-12)


def test_tilted_estimators_equal_their_definitions():
    g = np.array([0.5, -0.2, 0.9, 1.3, 0.1])
    tau = 0.6
    alg = Tilted(tau)
    e = np.exp(g / tau)
    z, value = e.mean(), (e * g).sum() / e.sum()
    np.testing.assert_allclose(alg.estimate_first_variation(g, "plugin"), e / z * (g - value), atol=1e-12)
    loo = alg.estimate_first_variation(g, "loo")
    for j in range(len(g)):
        eo, go = np.delete(e, j), np.delete(g, j)
        assert loo[j] == pytest.approx(e[j] / eo.mean() * (g[j] - (eo * go).sum() / eo.sum()), abs=1e-12)
    # the plugin estimate is the exact first variation at the group's empirical distribution
    np.testing.assert_allclose(alg.estimate_first_variation(g, "plugin"),
                               alg.first_variation(np.full(5, 0.2), g), atol=1e-12)


def test_tilted_is_numerically_stable_at_small_temperature():
    g = np.array([0.0, 10.0, 20.0, 30.0])
    for est in ("plugin", "loo"):  # weights up to e^100
        assert np.all(np.isfinite(Tilted(0.1).estimate_first_variation(g, est)))
    assert np.all(np.isfinite(Tilted(0.001).estimate_first_variation(g, "plugin")))  # bounded by M * spread
    with pytest.raises(ValueError, match="overflow"):  # e^10000 is not a float: say so, never return inf
        Tilted(0.001).estimate_first_variation(g, "loo")


@pytest.mark.parametrize("alg", N_SAMPLE, ids=repr)
def test_estimate_value_is_unbiased(alg):
    p, r = problem(8, k=3)
    m = 4
    total = 0.0
    for t in itertools.product(range(3), repeat=m):
        total += np.prod(p[list(t)]) * alg.estimate_value(r[list(t)])
    assert total == pytest.approx(alg.value(p, r), abs=1e-12)


def test_value_estimates_for_every_n_from_one_pool():
    """E[max of N] from one pool of M: exact on the pool itself when N = M, the mean when N = 1."""
    g = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    assert BestOfN(1).estimate_value(g) == pytest.approx(3.0)
    assert BestOfN(5).estimate_value(g) == pytest.approx(5.0)
    assert WorstOfN(5).estimate_value(g) == pytest.approx(1.0)
    brute = np.mean([max(s) for s in itertools.combinations(g, 3)])
    assert BestOfN(3).estimate_value(g) == pytest.approx(brute)


@pytest.mark.parametrize("alg", ALL, ids=repr)
def test_estimate_values_at_every_n_are_the_estimates_at_each_n(alg):
    """One pool, several N at once (evaluation), equals the algorithm at each N (training)."""
    g = np.random.default_rng(4).normal(size=(3, 6))
    ns = [1, 2, 4, 6] if alg.increasing is not None else [alg.n or 6]
    expected = np.stack([alg.at(n).estimate_value(g, rng=0) for n in ns], axis=-1)
    np.testing.assert_allclose(alg.estimate_values(g, ns, rng=0), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [BestOfN, WorstOfN, Sampling])
def test_pool_weights_by_enumeration(cls):
    """pool_weights[k, i]: the share of the N-subsets of M distinct samples in which the algorithm at ns[k]
    selects the i-th smallest."""
    m, ns = 6, ([1] if cls is Sampling else [1, 2, 3, 6])
    alg = cls() if cls is Sampling else cls(2)
    brute = np.zeros((len(ns), m))
    for k, n in enumerate(ns):
        subsets = list(itertools.combinations(range(m), n))  # indices into the sorted pool
        for sub in subsets:  # the rewards are the ranks, so select returns the selected one's place in sub
            brute[k, sub[alg.at(n).select(np.array(sub, dtype=float))]] += 1 / len(subsets)
    np.testing.assert_allclose(alg.pool_weights(m, ns), brute, atol=1e-12)


def test_the_table_reads_back_family_spec_and_n():
    assert {type(alg) for alg in ALL + ANSWER_BASED} == set(ALGORITHMS.values())  # so every algorithm is pinned
    for alg in ALL + ANSWER_BASED:
        assert ALGORITHMS[alg.name] is type(alg)
        assert parse_algorithm(alg.spec) == alg
        if alg.increasing is None:  # N is not in the spec
            assert alg.family == alg.spec and alg.at(alg.n or 5) is alg
        else:
            assert parse_algorithm(alg.family, n=alg.n) == alg
            assert alg.at(5) == parse_algorithm(alg.family, n=5) and alg.at(5).spec.startswith(f"{alg.name}:5")
    assert [BestOfN(2).increasing, WorstOfN(2).increasing, SoftBestOfN(2, 1.0).increasing] == [True, False, True]
    assert parse_algorithm("soft_bon:4:0.1", n=2) == SoftBestOfN(4, 0.1)  # n only fills in a missing N
    with pytest.raises(ValueError, match="N = 1"):
        Sampling().at(2)


@pytest.mark.parametrize("estimator", ["unbiased", "plugin"])
@pytest.mark.parametrize("cls", [BestOfN, WorstOfN])
def test_closed_form_agrees_with_generic_kernel(cls, estimator):
    rng = np.random.default_rng(9)
    g = np.round(rng.normal(size=(3, 7)), 1)  # rounding makes ties
    alg = cls(3)
    s, b = alg.estimate(g, estimator)
    s2, b2 = _generic_estimates(g, 3, alg.kernel, estimator, None)
    np.testing.assert_allclose(s, s2, atol=1e-12)
    np.testing.assert_allclose(b, b2, atol=1e-12)


def test_sampled_subsets_are_unbiased(monkeypatch):
    """Beyond the enumeration limit, subsets are sampled: the estimate's mean over draws is the enumerated one."""
    import iama.algorithms as A

    g = np.array([0.1, 0.5, -0.3, 0.9, 0.2, 0.4, -0.8])
    alg = SoftBestOfN(3, 0.3)
    exact = alg.estimate_first_variation(g)
    monkeypatch.setattr(A, "MAX_SUBSETS", 5)  # C(6, 2) = 15 > 5: sample 5 subsets per sample
    draws = np.array([alg.estimate_first_variation(g, rng=seed) for seed in range(3000)])
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - exact) < 5 * se + 1e-12)
    assert draws.std(0).max() > 0  # it really sampled


@pytest.mark.parametrize("alg", [Sampling(), BestOfN(1), WorstOfN(1), SoftBestOfN(1, 0.3)], ids=repr)
def test_n_one_is_plain_sampling(alg):
    g = np.array([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0]])
    for est in alg.estimators:
        np.testing.assert_allclose(alg.estimate_first_variation(g, est), g)
    np.testing.assert_allclose(alg.estimate_value(g), g.mean(-1))
    np.testing.assert_allclose(alg.loo_baseline(g), (g.sum(-1, keepdims=True) - g) / 2)


def test_n_equal_m_loo_advantage_is_the_marginal_contribution():
    g = np.array([1.0, 4.0, 2.0, 3.0])
    s, b = BestOfN(4).estimate(g)
    np.testing.assert_allclose(s, 4 * 4.0)  # every sample: N * max of the group
    np.testing.assert_allclose(s - b, [0, 4 * (4.0 - 3.0), 0, 0])


reward_lists = st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.5]) | st.floats(-5, 5), min_size=4, max_size=8)


@settings(max_examples=60, deadline=None)
@given(reward_lists, st.randoms(use_true_random=False), st.sampled_from(N_SAMPLE[:6] + [Tilted(0.7)]))
def test_permutation_equivariance(values, rnd, alg):
    g = np.array(values)
    perm = np.array(rnd.sample(range(len(g)), len(g)))
    for est in alg.estimators:
        s, b = alg.estimate(g, est)
        sp, bp = alg.estimate(g[perm], est)
        np.testing.assert_allclose(sp, s[perm], atol=1e-9)
        np.testing.assert_allclose(bp, b[perm], atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(reward_lists, st.sampled_from(N_SAMPLE[:6] + [Tilted(0.7)]))
def test_tied_samples_get_equal_estimates(values, alg):
    g = np.array(values)
    for est in alg.estimators:
        s, b = alg.estimate(g, est)
        for i, j in itertools.combinations(range(len(g)), 2):
            if g[i] == g[j]:
                assert s[i] == pytest.approx(s[j], abs=1e-9)
                assert b[i] == pytest.approx(b[j], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.floats(-10, 10), st.integers(4, 8), st.sampled_from(N_SAMPLE[:6]))
def test_constant_group(c, m, alg):
    g = np.full(m, c)
    for est in alg.estimators:
        s, b = alg.estimate(g, est)
        np.testing.assert_allclose(s, alg.n * c, atol=1e-9)
        np.testing.assert_allclose(s - b, 0.0, atol=1e-9)
    assert alg.estimate_value(g) == pytest.approx(c)


def test_torch_in_torch_out_and_batches():
    g = torch.randn(2, 3, 6, dtype=torch.float32)
    for alg in [BestOfN(3), SoftBestOfN(2, 0.5), Tilted(0.5)]:
        s = alg.estimate_first_variation(g)
        assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.shape == g.shape
        flat = alg.estimate_first_variation(g.reshape(6, 6).numpy().astype(np.float64))
        np.testing.assert_allclose(s.reshape(6, 6).numpy(), flat, atol=1e-5)
        v = alg.estimate_value(g)
        assert isinstance(v, torch.Tensor) and v.shape == (2, 3)


def test_select():
    r = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, -1.0, 2.0, 0.0]])
    assert BestOfN(4).select(r).tolist() == [1, 0]
    assert WorstOfN(4).select(r).tolist() == [0, 1]
    assert Sampling().select(np.array([7.0])) == 0
    rewards = np.array([0.0, 1.0, 2.0])
    picks = SoftBestOfN(3, 1.0).select(np.tile(rewards, (20000, 1)), generator=0)
    freq = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(freq, np.exp(rewards) / np.exp(rewards).sum(), atol=0.015)
    assert Tilted(1.0).select(rewards, generator=0) in (0, 1, 2)


def test_soft_best_of_n_limits():
    p, r = problem(11)
    assert SoftBestOfN(3, 1e-4).value(p, r) == pytest.approx(BestOfN(3).value(p, r), abs=1e-6)
    assert SoftBestOfN(3, 1e6).value(p, r) == pytest.approx(Sampling().value(p, r), abs=1e-5)
    assert Tilted(1e6).value(p, r) == pytest.approx(Sampling().value(p, r), abs=1e-5)


def test_parse_algorithm_round_trip():
    for spec in ["sampling", "bon:4", "won:2", "soft_bon:4:0.1", "tilted:0.09"]:
        assert parse_algorithm(spec).spec == spec
        assert parse_algorithm(parse_algorithm(spec).spec) == parse_algorithm(spec)
    assert parse_algorithm("BoN:8") == BestOfN(8)


@pytest.mark.parametrize("call, match", [
    (lambda: BestOfN(5).estimate_first_variation(np.zeros(4)), "at least N=5"),
    (lambda: BestOfN(5).estimate_value(np.zeros((2, 4))), "at least N=5"),
    (lambda: BestOfN(2).estimate_first_variation([0.0, np.nan, 1.0]), "NaN"),
    (lambda: BestOfN(2).estimate_first_variation(np.float64(1.0)), "at least one axis"),
    (lambda: BestOfN(2).estimate_first_variation(np.zeros(4), "bogus"), "unknown estimator"),
    (lambda: Tilted(0.1).estimate_first_variation(np.zeros(4), "unbiased"), "unknown estimator"),
    (lambda: BestOfN(2).value([0.5, 0.5], [1.0]), "equal"),
    (lambda: BestOfN(2).value([0.5, 0.6], [1.0, 2.0]), "sum to 1"),
    (lambda: BestOfN(0), "positive integer"),
    (lambda: SoftBestOfN(2, 0.0), "temperature"),
    (lambda: BestOfN(3).select([1.0, 2.0]), "exactly 3"),
    (lambda: parse_algorithm("best:4"), "unknown algorithm"),
    (lambda: parse_algorithm("bon"), "argument"),
    (lambda: parse_algorithm("bon:x"), "arguments"),
    (lambda: SoftBestOfN(8, 0.1).value(np.full(200, 1 / 200), np.arange(200.0)), "multisets"),
])
def test_bad_input_raises_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("spec", ["sampling", "bon:2", "won:2", "soft_bon:2:0.5", "tilted:0.5", "maj:2", "maj_dense:3"])
def test_every_algorithm_takes_a_groups_answers_through_one_signature(spec):
    """The group data is rewards and, optionally, answers: every algorithm accepts both everywhere; one that
    selects by rewards alone gives the same with or without them, one that votes refuses a call without them."""
    from iama.algorithms import parse_algorithm

    alg = parse_algorithm(spec)
    rng = np.random.default_rng(0)
    r = (rng.random((3, 6)) < 0.5).astype(float)
    answers = [[str(int(x)) for x in row] for row in r]
    probs, values, keys = np.full(4, 0.25), np.array([0.0, 1.0, 1.0, 0.0]), ["a", "b", "b", "c"]
    with_answers = [alg.estimate(r, answers=answers, rng=0), alg.estimate_value(r, answers=answers, rng=0),
                    alg.value(probs, values, answers=keys), alg.first_variation(probs, values, answers=keys)]
    if alg.needs_answers:
        for call in (lambda: alg.estimate(r), lambda: alg.estimate_value(r), lambda: alg.value(probs, values)):
            with pytest.raises(ValueError, match=f"{alg.family} votes on answers: pass answers=, one per sample"):
                call()
    else:
        without = [alg.estimate(r, rng=0), alg.estimate_value(r, rng=0), alg.value(probs, values),
                   alg.first_variation(probs, values)]
        for a, b in zip(with_answers, without):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if alg.n is not None:
            pick = r[:, : alg.n]
            assert np.array_equal(alg.select(pick, generator=1, answers=[row[: alg.n] for row in answers]),
                                  alg.select(pick, generator=1))

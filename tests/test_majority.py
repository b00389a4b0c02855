"""Majority voting (maj:N) pinned against brute force: every draw, every subset, every pool, finite differences."""

import itertools
import math

import numpy as np
import pytest

from iama.algorithms import BestOfN, MajorityVote, parse_algorithm


def vote(answers, rewards):
    """The selected sample's expected reward, by the definition: most votes wins, ties uniformly, None abstains;
    all abstaining, a uniformly drawn sample."""
    votes = {}
    for a, r in zip(answers, rewards):
        if a is not None:
            votes.setdefault(a, []).append(r)
    if not votes:
        return float(np.mean(rewards))
    top = max(map(len, votes.values()))
    return float(np.mean([np.mean(v) for v in votes.values() if len(v) == top]))


# answers and rewards (a function of the answer): a frequent wrong answer, ties, abstentions, one answer only
CASES = [
    (["a", "b", "b", "c", None], [1, 0, 0, 0, 0]),
    (["a", "a", "b", "b", "c", "d"], [1, 1, 0, 0, 0.5, 0.2]),
    ([None, None, "x"], [0.1, 0.1, 1]),
    (["q"] * 4, [1, 1, 1, 1]),
    ([("tuple", 1), 7, 7, None, ("tuple", 1), 2.5], [0.3, 1, 1, 0, 0.3, 0]),
]


def brute_value(p, answers, rewards, n):
    return sum(np.prod(p[list(d)]) * vote([answers[i] for i in d], [rewards[i] for i in d])
               for d in itertools.product(range(len(p)), repeat=n))


@pytest.mark.parametrize("answers,rewards", CASES)
def test_exact_value_and_first_variation_against_every_draw(answers, rewards):
    rng = np.random.default_rng(len(answers))
    for n in range(1, 5):
        alg, p = MajorityVote(n), rng.dirichlet(np.ones(len(answers)))
        value = alg.value(p, rewards, answers=answers)
        assert value == pytest.approx(brute_value(p, answers, rewards, n), abs=1e-12)
        fv = alg.first_variation(p, rewards, answers=answers)
        for y in range(len(p)):  # canonical form: N E f(y, Y_2..Y_N)
            brute = n * sum(np.prod(p[list(d)]) * vote([answers[y]] + [answers[i] for i in d],
                                                       [rewards[y]] + [rewards[i] for i in d])
                            for d in itertools.product(range(len(p)), repeat=n - 1))
            assert fv[y] == pytest.approx(brute, abs=1e-12)
            # finite differences: d/de R[p + e (delta_y - p)] = fv(y) - E_p fv = fv(y) - N R
            d, e = np.eye(len(p))[y] - p, 1e-6
            fd = (alg.value(p + e * d, rewards, answers=answers) - alg.value(p - e * d, rewards, answers=answers)) / (2 * e)
            assert fd == pytest.approx(fv[y] - n * value, abs=1e-6)


@pytest.mark.parametrize("answers,rewards", CASES)
def test_group_estimates_against_every_subset(answers, rewards):
    m, r = len(answers), np.array(rewards, dtype=float)
    for n in range(1, m + 1):
        alg = parse_algorithm(f"maj:{n}")
        subsets = list(itertools.combinations(range(m), n))
        assert alg.estimate_value(r, answers=answers) == pytest.approx(
            np.mean([vote([answers[i] for i in s], r[list(s)]) for s in subsets]), abs=1e-12)
        s, b = alg.estimate(r, answers=answers)
        for j in range(m):
            others = list(itertools.combinations([i for i in range(m) if i != j], n - 1))
            sj = n * np.mean([vote([answers[j]] + [answers[i] for i in o], [r[j]] + [r[i] for i in o]) for o in others])
            bj = (np.mean(np.delete(r, j)) if n == 1 else  # N = 1: RLOO's mean of the others
                  n * np.mean([vote([answers[i] for i in o], r[list(o)]) for o in others]))
            assert s[j] == pytest.approx(sj, abs=1e-12) and b[j] == pytest.approx(bj, abs=1e-12)


def test_unbiased_over_every_pool_of_a_categorical():
    """E[value estimate] = R exactly and E[s_j - b_j | y_j] = dR/dpi(y_j) + a constant, over all 4^5 pools."""
    answers, rewards, p, m = ["a", "b", None, "c"], [1.0, 0.0, 0.0, 0.0], np.array([0.3, 0.35, 0.15, 0.2]), 5
    for n in (1, 2, 3, 5):
        alg = MajorityVote(n)
        pools = np.array(list(itertools.product(range(4), repeat=m)))
        prob = np.prod(p[pools], axis=1)
        r = np.array(rewards)[pools]
        a = np.array(answers, dtype=object)[pools]
        assert prob @ alg.estimate_value(r, answers=a) == pytest.approx(alg.value(p, rewards, answers=answers), abs=1e-12)
        s, b = alg.estimate(r, answers=a)
        given = np.array([prob[pools[:, 0] == y] @ (s - b)[pools[:, 0] == y, 0] / p[y] for y in range(4)])
        assert np.ptp(given - alg.first_variation(p, rewards, answers=answers)) < 1e-12


def test_counting_handles_groups_too_large_to_enumerate():
    """M = 32, N = 16: C(32, 16) = 6e8 subsets. Against the law of the vote under a hypergeometric draw."""
    rng = np.random.default_rng(0)
    answers = list(rng.choice(["7", "8", "9"], size=32, p=[0.5, 0.3, 0.2]))
    rewards = np.array([a == "7" for a in answers], dtype=float)
    counts = {x: answers.count(x) for x in ("7", "8", "9")}
    n, total = 16, 0.0
    for k7 in range(n + 1):  # enumerate vote counts for three answers instead of subsets
        for k8 in range(n + 1 - k7):
            k9 = n - k7 - k8
            ways = math.comb(counts["7"], k7) * math.comb(counts["8"], k8) * math.comb(counts["9"], k9)
            top = max(k7, k8, k9)
            total += ways * (k7 == top) / [k7, k8, k9].count(top)
    assert MajorityVote(n).estimate_value(rewards, answers=answers) == pytest.approx(total / math.comb(32, n), abs=1e-12)


def test_one_answer_per_sample_is_best_of_n_on_unique_answers():
    """All answers distinct: every vote ties, so maj@N is the mean reward (sampling)."""
    r = np.array([0.2, 0.9, 0.4, 0.7])
    assert MajorityVote(3).estimate_value(r, answers=["a", "b", "c", "d"]) == pytest.approx(r.mean())
    assert BestOfN(1).estimate_value(r) == pytest.approx(r.mean())


def test_select_picks_the_most_frequent_answer_and_breaks_ties_uniformly():
    alg = MajorityVote(5)
    assert alg.select([0, 1, 1, 0, 0], 0, answers=["x", "y", "y", None, "z"]) in (1, 2)
    picks = [alg.select([1, 0, 1, 0, 0], seed, answers=["x", "y", "x", "y", None]) for seed in range(400)]
    share_x = np.mean([p in (0, 2) for p in picks])
    assert 0.4 < share_x < 0.6  # a two-way tie, each side about half the time
    assert alg.select([0] * 5, 0, answers=[None] * 5) in range(5)
    batch = alg.select(np.zeros((2, 5)), 0, answers=[["a", "a", "b", "c", "d"], ["b", "c", "c", "c", None]])
    assert batch[0] in (0, 1) and batch[1] in (1, 2, 3)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="at least N=4"):
        MajorityVote(4).estimate(np.zeros(3), answers=["a", "b", "c"])
    with pytest.raises(ValueError, match="hashable"):
        MajorityVote(2).estimate(np.zeros(3), answers=[["a"], "b", "c"])
    with pytest.raises(ValueError, match="shape"):
        MajorityVote(2).estimate(np.zeros(3), answers=["a", "b"])
    with pytest.raises(ValueError, match="positive integer"):
        parse_algorithm("maj:0")
    with pytest.raises(ValueError, match="unknown estimator"):
        MajorityVote(2).estimate(np.zeros(3), "plugin", answers=["a", "b", "c"])


def test_pass_at_k_is_best_of_k_on_a_zero_one_reward():
    """Chen et al. (2021): pass@k = 1 - C(M - c, k) / C(M, k) for c correct of M; bon's pool value equals it."""
    rng = np.random.default_rng(3)
    for m in (1, 5, 16, 40):
        for c in sorted({0, 1, m // 3, m - 1, m} - {-1}):
            r = rng.permutation(np.r_[np.ones(c), np.zeros(m - c)])
            for k in range(1, m + 1):
                chen = 1 - math.comb(m - c, k) / math.comb(m, k)
                assert abs(BestOfN(k).estimate_value(r) - chen) < 1e-12


def test_the_objective_passes_answers_to_voting_criteria_only():
    from iama.objective import Criterion, Objective

    obj = Objective([Criterion("vote", "maj:3"), Criterion("pass", "bon:2")], baseline="loo", scale_rewards="none")
    r = np.array([[[1, 1], [0, 0], [0, 0], [1, 1]], [[0, 0], [1, 1], [1, 1], [0, 0]]], dtype=float)  # (G, M, m)
    answers = [["7", "8", "8", "7"], ["9", "3", "3", None]]
    est = obj(r, answers=answers)
    s, b = MajorityVote(3).estimate(r[..., 0], answers=answers)
    s2, b2 = BestOfN(2).estimate(r[..., 1])
    np.testing.assert_allclose(est.advantages, (s - b) + (s2 - b2), atol=1e-12)
    np.testing.assert_allclose(est.values[:, 0], MajorityVote(3).estimate_value(r[..., 0], answers=answers))
    with pytest.raises(ValueError, match="'vote' uses maj:3, which needs each sample's answer"):
        obj(r)
    # a sample dropped for a NaN reward is dropped from the vote too
    r[1, 3, 1] = np.nan
    est = obj(r, answers=answers)
    s, b = MajorityVote(3).estimate(r[1, :3, 0], answers=answers[1][:3])
    s2, b2 = BestOfN(2).estimate(r[1, :3, 1])
    np.testing.assert_allclose(est.advantages[1], np.r_[(s - b) + (s2 - b2), 0.0], atol=1e-12)

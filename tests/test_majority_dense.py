"""The dense surrogate for majority voting (maj_dense:N) pinned against brute force, closed forms and finite
differences; where it equals maj@N (one wrong answer) and where it does not; that it is dense."""

import itertools
import math

import numpy as np
import pytest

from iama.algorithms import (MajorityVote, MajorityVoteDense, parse_algorithm, threshold_vote_slope,
                             threshold_vote_value)
from iama.objective import Criterion, Objective


from test_majority import vote  # noqa: E402  (the vote by its definition)


def brute_vote_value(probs, answers, rewards, n):
    """maj@n by every ordered draw of n responses."""
    return sum(np.prod([probs[i] for i in d]) * vote([answers[i] for i in d], [rewards[i] for i in d])
               for d in itertools.product(range(len(probs)), repeat=n))


@pytest.mark.parametrize("n", range(1, 10))
def test_the_surrogate_is_the_vote_of_a_two_answer_law(n):
    """V_n(p) against every draw of n from {right: p, wrong: 1 - p}, and against MajorityVote's exact value: with one
    wrong answer the surrogate is maj@n exactly, first variation included."""
    for p in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
        probs = [p, 1 - p]
        brute = brute_vote_value(probs, ["right", "wrong"], [1.0, 0.0], n)
        assert threshold_vote_value(p, n) == pytest.approx(brute, abs=1e-12)
        alg = MajorityVoteDense(n)
        assert alg.surrogate_value(probs, [1.0, 0.0]) == pytest.approx(brute, abs=1e-12)
        assert alg.value(probs, [1.0, 0.0], answers=["right", "wrong"]) == pytest.approx(brute, abs=1e-12)
        np.testing.assert_allclose(alg.surrogate_first_variation(probs, [1.0, 0.0]),
                                   MajorityVote(n).first_variation(probs, [1.0, 0.0], answers=["right", "wrong"]),
                                   atol=1e-12)
        # several responses with the same answer are still one wrong answer
        probs4, rewards4, answers4 = [p / 2, p / 2, (1 - p) / 3, 2 * (1 - p) / 3], [1, 1, 0, 0], ["r", "r", "w", "w"]
        np.testing.assert_allclose(alg.surrogate_first_variation(probs4, rewards4),
                                   MajorityVote(n).first_variation(probs4, rewards4, answers=answers4), atol=1e-12)


def test_the_surrogate_is_not_the_vote_when_wrong_answers_split_or_abstain():
    """Wrong votes split over five answers let the right one win far more often than V_n says; abstentions do
    not vote, so a single right vote can win."""
    p, n = 0.3, 8
    probs, rewards, answers = [p] + [(1 - p) / 5] * 5, [1.0] + [0.0] * 5, ["r", "a", "b", "c", "d", "e"]
    assert MajorityVote(4).value(probs, rewards, answers=answers) == pytest.approx(
        brute_vote_value(probs, answers, rewards, 4), abs=1e-12)
    assert MajorityVote(n).value(probs, rewards, answers=answers) > threshold_vote_value(p, n) + 0.3  # 0.46, 0.13
    abstain = MajorityVote(n).value([p, 1 - p], [1.0, 0.0], answers=["r", None])
    assert abstain == pytest.approx(1 - (1 - p) ** n) and abstain > threshold_vote_value(p, n) + 0.5


@pytest.mark.parametrize("n", range(1, 12))
def test_the_slope_against_its_closed_form_and_finite_differences(n):
    """dV_n/dp: n C(n-1, (n-1)/2) (p(1-p))^((n-1)/2) for odd n; a coin-flipped tie makes V_n = V_{n-1} for even n."""
    p = np.linspace(0.01, 0.99, 23)
    odd = n if n % 2 else n - 1
    closed = odd * math.comb(odd - 1, (odd - 1) // 2) * (p * (1 - p)) ** ((odd - 1) // 2)
    np.testing.assert_allclose(threshold_vote_slope(p, n), closed, rtol=1e-12)
    e = 1e-6
    fd = (threshold_vote_value(p + e, n) - threshold_vote_value(p - e, n)) / (2 * e)
    np.testing.assert_allclose(threshold_vote_slope(p, n), fd, rtol=1e-6, atol=1e-8)
    if n % 2 == 0:
        np.testing.assert_allclose(threshold_vote_value(p, n), threshold_vote_value(p, n - 1), atol=1e-12)


def test_the_surrogates_first_variation_against_every_draw_and_finite_differences():
    """Canonical form N E f(r(y), Y_2..Y_N) with f the right-against-wrong vote, by every draw; and its centred form
    is the derivative of V_N(p[pi]) along pi + e (delta_y - pi)."""
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    probs = np.array([0.15, 0.3, 0.2, 0.25, 0.1])
    right_wrong = ["r" if x else "w" for x in rewards]  # the vote counted as right against wrong
    for n in (1, 2, 3, 4, 5):
        alg = MajorityVoteDense(n)
        fv = alg.surrogate_first_variation(probs, rewards)
        for y in range(len(probs)):
            brute = n * sum(np.prod(probs[list(d)]) * vote([right_wrong[y]] + [right_wrong[i] for i in d],
                                                           [rewards[y]] + [rewards[i] for i in d])
                            for d in itertools.product(range(len(probs)), repeat=n - 1))
            assert fv[y] == pytest.approx(brute, abs=1e-12)
            d, e = np.eye(len(probs))[y] - probs, 1e-6
            fd = (alg.surrogate_value(probs + e * d, rewards) - alg.surrogate_value(probs - e * d, rewards)) / (2 * e)
            assert fd == pytest.approx(fv[y] - probs @ fv, abs=1e-6)
        assert fv[0] - fv[1] == pytest.approx(threshold_vote_slope(probs @ rewards, n), abs=1e-12)


def test_the_estimate_is_the_surrogate_at_the_groups_success_rate():
    """s_j: the surrogate's first variation at the group's empirical law; s_j - b_j = V_N'(p̂) (r_j - the others'
    mean), for every group of 8 with 0..8 right answers."""
    alg = MajorityVoteDense(8)
    for right in range(9):
        r = np.r_[np.ones(right), np.zeros(8 - right)]
        s, b = alg.estimate(r, answers=[str(int(x)) for x in r])
        np.testing.assert_allclose(s, alg.surrogate_first_variation(np.full(8, 1 / 8), r), atol=1e-12)
        others = (r.sum() - r) / 7
        np.testing.assert_allclose(s - b, threshold_vote_slope(right / 8, 8) * (r - others), atol=1e-12)
    batch = np.array([[1, 0, 0, 1], [0, 0, 0, 1.0]])  # groups on the last axis, M < N allowed
    s, b = alg.estimate(batch, answers=[["a", "b", "b", "a"], ["b", "c", None, "a"]])
    np.testing.assert_allclose((s - b)[1], threshold_vote_slope(0.25, 8) * (batch[1] - (1 - batch[1]) / 3), atol=1e-12)


def test_it_is_dense_where_the_exact_vote_is_silent():
    """M = N = 8, two right answers against six of one wrong answer: no single sample can swing maj@8's vote, so its
    exact leave-one-out advantages are all zero; the surrogate moves every sample, right ones up."""
    r = np.array([1, 1, 0, 0, 0, 0, 0, 0.0])
    answers = ["12", "12", "9", "9", "9", "9", "9", "9"]
    s, b = MajorityVote(8).estimate(r, answers=answers)
    np.testing.assert_allclose(s - b, 0.0, atol=1e-12)
    s, b = MajorityVoteDense(8).estimate(r, answers=answers)
    assert np.all((s - b)[:2] > 0.1) and np.all((s - b)[2:] < -0.1)
    # silent only where every sample agrees on right or wrong
    s, b = MajorityVoteDense(8).estimate(np.stack([np.ones(8), np.zeros(8)]), answers=[["7"] * 8, ["9"] * 8])
    np.testing.assert_allclose(s - b, 0.0, atol=1e-12)


def test_it_is_maj_at_n_for_values_and_selection():
    """Only the training estimate differs: values, value estimates and selection are maj@N's."""
    alg = parse_algorithm("maj_dense:4")
    assert isinstance(alg, MajorityVoteDense) and alg.spec == "maj_dense:4" and alg.family == "maj_dense"
    assert parse_algorithm("maj_dense", n=3) == MajorityVoteDense(3) and alg.at(2) == MajorityVoteDense(2)
    r, answers = np.array([1, 0, 0, 1, 0, 0.0]), ["a", "b", "c", "a", "b", None]
    assert alg.estimate_value(r, answers=answers) == pytest.approx(MajorityVote(4).estimate_value(r, answers=answers))
    probs = np.full(6, 1 / 6)
    assert alg.value(probs, r, answers=answers) == pytest.approx(MajorityVote(4).value(probs, r, answers=answers))
    assert [alg.select(r[:4], s, answers=answers[:4]) for s in range(20)] == \
        [MajorityVote(4).select(r[:4], s, answers=answers[:4]) for s in range(20)]


def test_it_needs_a_zero_one_reward():
    alg = MajorityVoteDense(4)
    with pytest.raises(ValueError, match=r"maj_dense:4 needs a 0/1 reward .* got 0.5"):
        alg.estimate(np.array([1, 0.5, 0, 0]), answers=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="0/1 reward"):
        alg.surrogate_value([0.5, 0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match="unknown estimator 'unbiased'"):
        alg.estimate(np.ones(4), "unbiased", answers=["a"] * 4)


def test_the_objective_uses_the_dense_estimate_under_either_setting_and_keeps_its_factor():
    r = np.array([[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0.0]])[..., None]  # (G, M, 1)
    answers = [["5", "5", "6", "6", "6", "6", "6", "6"], ["5", "6", "7", "8", "9", "1", "2", "3"]]
    for estimator in ("unbiased", "plugin"):
        for baseline, centre in (("loo", lambda x: (x.sum(-1, keepdims=True) - x) / 7),
                                 ("group_mean", lambda x: x.mean(-1, keepdims=True))):
            obj = Objective([Criterion("c", "maj_dense:8")], estimator=estimator, baseline=baseline,
                            scale_rewards="batch")
            adv = obj(r, answers=answers).advantages
            raw = threshold_vote_slope(r[..., 0].mean(-1, keepdims=True), 8) * (r[..., 0] - centre(r[..., 0]))
            # one divisor for the batch keeps each prompt's factor: the two groups' advantages keep raw's ratio
            np.testing.assert_allclose(adv / np.sqrt((adv**2).sum() / 15), raw / np.sqrt((raw**2).sum() / 15),
                                       atol=1e-12)
            np.testing.assert_allclose(adv[0, 0] / adv[1, 0], raw[0, 0] / raw[1, 0], rtol=1e-12)


def test_the_objective_refuses_what_would_silently_train_something_else():
    with pytest.raises(ValueError, match="cancels under scale_rewards 'group', which would train exactly as GRPO"):
        Objective([Criterion("c", "maj_dense:8")], scale_rewards="group")
    Objective([Criterion("c", "maj_dense:8"), Criterion("d", "bon:2")], scale_rewards="group")  # a trade-off: kept
    with pytest.raises(ValueError, match="criterion 'c': maj:8 has no 'plugin' estimator; use estimator 'unbiased'"):
        Objective([Criterion("c", "maj:8")], estimator="plugin")


def test_evaluation_reports_maj_at_n_under_its_family():
    """A maj_dense criterion is evaluated as what it trains for: its family's values are maj's, for every N <= M."""
    from iama.algorithms import answer_array
    from iama.estimate import estimate
    from iama.pools import Pool

    rng = np.random.default_rng(0)
    keys = rng.choice(["7", "8", "9", None], size=(6, 5), p=[0.4, 0.3, 0.2, 0.1])
    rewards = (keys == "7").astype(float)
    answers = answer_array(keys.tolist(), keys.shape)
    pools = [Pool(label, [f"q{i}" for i in range(6)], rewards[..., None], None, ["correct"],
                  answers={"correct": answers}) for label in ("a", "b")]
    report = estimate(pools, [Criterion("correct", "maj_dense:3", reward="answer")], bootstrap=0)
    values = report["models"]["a"]["values"]["correct"]
    assert values["maj_dense"]["mean"] == values["maj"]["mean"]
    assert values["maj"]["mean"] == pytest.approx(MajorityVote(5).estimate_values(rewards, range(1, 6),
                                                                                  answers=answers).mean(0).tolist())

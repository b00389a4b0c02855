"""The objective: chain rule, baselines, GRPO as a special case, and the unbiased policy gradient."""

import itertools

import numpy as np
import pytest
import torch

from iama import BestOfN, Criterion, Objective, Sampling, SoftBestOfN, Tilted, WorstOfN


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_all_sampling_with_group_mean_is_grpo():
    """sum of Sampling criteria + group_mean baseline = GRPO's centred weighted reward (TRL's formula)."""
    w = torch.tensor([0.3, 0.7])
    obj = Objective([Criterion("a", "sampling", 0.3), Criterion("b", "sampling", 0.7)], baseline="group_mean",
                    scale_rewards="none")
    r = torch.randn(5, 6, 2)
    weighted = (r * w).sum(-1)
    centred = weighted - weighted.mean(1, keepdim=True)
    out = obj(r)
    torch.testing.assert_close(out.advantages, centred, atol=1e-6, rtol=0)
    scaled = Objective(obj.criteria, baseline="group_mean", scale_rewards="group")(r).advantages
    torch.testing.assert_close(scaled, centred / weighted.std(1, keepdim=True), atol=1e-5, rtol=1e-5)
    batch = Objective(obj.criteria, baseline="group_mean", scale_rewards="batch")(r).advantages
    pooled = (centred.square().sum() / (centred.numel() - 1)).sqrt()  # the within-group spread, pooled
    torch.testing.assert_close(batch, centred / pooled, atol=1e-5, rtol=1e-5)


def test_n_equal_m_still_learns_with_loo_but_not_with_group_mean():
    r = np.array([[[1.0], [4.0], [2.0], [3.0]]])
    loo = Objective([Criterion("x", "bon:4")], scale_rewards="none")(r).advantages
    mean = Objective([Criterion("x", "bon:4")], baseline="group_mean", scale_rewards="none")(r).advantages
    np.testing.assert_allclose(loo, [[0, 4.0, 0, 0]])
    np.testing.assert_allclose(mean, 0.0)  # every s_j = N max: the group mean cancels the signal


def expected_gradient(obj, theta, rewards, m):
    """E over all K^m groups of (1/m) sum_j A_j grad log pi(y_j), for pi = softmax(theta)."""
    k = len(theta)
    pi = softmax(theta)
    groups = np.array(list(itertools.product(range(k), repeat=m)))
    adv = obj(rewards[groups]).advantages  # (G, m)
    probs = np.prod(pi[groups], axis=1)
    grad_log = np.eye(k)[groups] - pi  # (G, m, k)
    return np.einsum("g,gm,gmk->k", probs, adv, grad_log) / m


def exact_gradient(value, theta, eps=1e-6):
    return np.array([(value(theta + eps * e) - value(theta - eps * e)) / (2 * eps) for e in np.eye(len(theta))])


@pytest.mark.parametrize("alg", [BestOfN(2), BestOfN(3), WorstOfN(3), SoftBestOfN(2, 0.5), Sampling()], ids=repr)
@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_policy_gradient_is_unbiased(alg, baseline):
    theta = np.array([0.3, -0.5, 0.1])
    rewards = np.array([[0.2], [1.0], [-0.4]])
    m = 4
    obj = Objective([Criterion("x", alg)], baseline=baseline, scale_rewards="none")
    g = expected_gradient(obj, theta, rewards, m)
    truth = exact_gradient(lambda t: alg.value(softmax(t), rewards[:, 0]), theta)
    np.testing.assert_allclose(g, truth, atol=1e-8)


def test_group_mean_baseline_biases_the_gradient():
    theta = np.array([0.3, -0.5, 0.1])
    rewards = np.array([[0.2], [1.0], [-0.4]])
    alg = BestOfN(3)
    obj = Objective([Criterion("x", alg)], baseline="group_mean", scale_rewards="none")
    g = expected_gradient(obj, theta, rewards, 4)
    truth = exact_gradient(lambda t: alg.value(softmax(t), rewards[:, 0]), theta)
    assert np.abs(g - truth).max() > 1e-3


def test_weighted_sum_gradient_over_two_criteria():
    theta = np.array([0.3, -0.5, 0.1, 0.8])
    rewards = np.array([[0.2, 1.0], [1.0, -1.0], [-0.4, 0.3], [0.0, 0.5]])
    crit = [Criterion("a", "bon:2", 0.25), Criterion("b", "won:3", 0.75)]
    obj = Objective(crit, scale_rewards="none")

    def value(t):
        pi = softmax(t)
        return 0.25 * BestOfN(2).value(pi, rewards[:, 0]) + 0.75 * WorstOfN(3).value(pi, rewards[:, 1])

    np.testing.assert_allclose(expected_gradient(obj, theta, rewards, 3), exact_gradient(value, theta), atol=1e-8)


@pytest.mark.parametrize("aggregator", ["sum", "min", "smoothmin"])
def test_aggregator_gradient_matches_finite_differences(aggregator):
    obj = Objective([Criterion("a", "bon:2", 0.3), Criterion("b", "sampling", 0.5), Criterion("c", "won:2", 0.2)],
                    aggregator=aggregator, gamma=3.0)
    v = np.array([0.4, -0.2, 0.9])
    eps = 1e-6
    fd = [(obj.aggregate(v + eps * e) - obj.aggregate(v - eps * e)) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(obj.grad(v), fd, atol=1e-7)


def test_smoothmin_tends_to_min():
    crit = [Criterion("a", "sampling", 0.5), Criterion("b", "sampling", 0.5)]
    v = np.array([0.4, -0.2])
    assert Objective(crit, aggregator="smoothmin", gamma=1e4).aggregate(v) == pytest.approx(-0.2, abs=1e-3)


def test_chain_rule_uses_the_batch_values():
    """min: only the criterion whose batch value is lowest moves the policy."""
    rng = np.random.default_rng(0)
    r = np.stack([rng.normal(1.0, 1, (4, 6)), rng.normal(-1.0, 1, (4, 6))], axis=-1)
    out = Objective([Criterion("a", "bon:2"), Criterion("b", "bon:2")], aggregator="min")(r)
    np.testing.assert_allclose(out.grad_weights, [0, 1])
    only_b = Objective([Criterion("b", "bon:2")])(r[..., 1:])
    np.testing.assert_allclose(out.advantages, only_b.advantages)
    assert out.objective == pytest.approx(np.mean(out.values, axis=0).min())


def test_values_are_per_group_estimates():
    r = np.random.default_rng(1).normal(size=(3, 8, 2))
    out = Objective([Criterion("a", "bon:4"), Criterion("b", "tilted:0.5")])(r)
    np.testing.assert_allclose(out.values[:, 0], BestOfN(4).estimate_value(r[..., 0]))
    np.testing.assert_allclose(out.values[:, 1], Tilted(0.5).estimate_value(r[..., 1]))


def test_nan_samples_are_dropped_and_counted():
    r = np.random.default_rng(2).normal(size=(2, 6, 2))
    r[0, 3, 1] = np.nan
    obj = Objective([Criterion("a", "bon:2"), Criterion("b", "won:2")], scale_rewards="none")
    out = obj(r)
    assert out.dropped == 1 and out.skipped_groups == 0
    assert out.advantages[0, 3] == 0
    alone = obj(np.delete(r[0], 3, axis=0)[None])
    c = out.grad_weights
    np.testing.assert_allclose(out.per_criterion[0, [0, 1, 2, 4, 5]], alone.per_criterion[0])
    np.testing.assert_allclose(out.advantages[0, [0, 1, 2, 4, 5]], (alone.per_criterion[0] - alone.baselines[0]) @ c)


def test_group_too_small_after_dropping_is_skipped():
    r = np.random.default_rng(3).normal(size=(2, 4, 1))
    r[1, :3, 0] = np.nan
    out = Objective([Criterion("a", "bon:2")])(r)
    assert out.skipped_groups == 1 and out.dropped == 3
    np.testing.assert_allclose(out.advantages[1], 0.0)
    assert np.all(np.isfinite(out.advantages))


def test_torch_float32_in_and_out():
    r = torch.randn(4, 8, 2)
    out = Objective([Criterion("a", "bon:4"), Criterion("b", "soft_bon:2:0.3")])(r)
    assert isinstance(out.advantages, torch.Tensor) and out.advantages.dtype == torch.float32
    assert out.advantages.shape == (4, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(aggregator="max"), "unknown aggregator"),
    (dict(baseline="mean"), "unknown baseline"),
    (dict(estimator="loo"), "unknown estimator"),
    (dict(scale_rewards="yes"), "unknown scale_rewards"),
    (dict(aggregator="smoothmin", gamma=0.0), "gamma"),
])
def test_bad_objective_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Objective([Criterion("a", "bon:2")], **kwargs)


def test_bad_criteria_and_inputs():
    with pytest.raises(ValueError, match="weight"):
        Criterion("a", "bon:2", -1.0)
    with pytest.raises(ValueError, match="unique"):
        Objective([Criterion("a", "bon:2"), Criterion("a", "won:2")])
    with pytest.raises(ValueError, match="at least one"):
        Objective([])
    obj = Objective([Criterion("a", "bon:4")])
    with pytest.raises(ValueError, match="shape"):
        obj(np.zeros((3, 8, 2)))
    with pytest.raises(ValueError, match="at least N=4"):
        obj(np.zeros((3, 2, 1)))
    assert Objective([Criterion("a", "bon:4")], estimator="plugin").min_group_size() == 2


# ---------------------------------------------------------------------------------------------------------------
# scale_rewards: the group's advantages divided by their root mean square (M - 1 in the denominator)


def _groups(rng, g, m, criteria, kind):
    if kind == "normal":
        return rng.normal(size=(g, m, criteria))
    if kind == "ties":  # few distinct values: tied maxima, tied seconds, 0/1 rewards
        return rng.integers(0, 3, size=(g, m, criteria)).astype(float)
    return np.broadcast_to(rng.normal(size=(g, 1, criteria)), (g, m, criteria)).copy()  # constant groups


def _specs(m):
    for n in range(1, m + 1):
        yield from (f"bon:{n}", f"won:{n}", f"soft_bon:{n}:0.5")
    yield from ("tilted:0.1", "tilted:2")


@pytest.mark.parametrize("m", [4, 7])
@pytest.mark.parametrize("baseline", ["loo", "group_mean", "none"])
def test_group_scaling_keeps_every_advantage_within_sqrt_m_minus_1(m, baseline):
    """For every algorithm and N <= M, one and two criteria, ties and constant groups: |A| <= sqrt(M - 1), and a
    constant group gets exactly 0 under a baseline. (Dividing by the std of the first-variation estimates reached 10^4 at N = M.)"""
    rng = np.random.default_rng(m)
    bound = np.sqrt(m - 1) * (1 + 1e-9)
    for spec in _specs(m):
        for criteria in ([Criterion("a", spec)], [Criterion("a", spec, 0.3), Criterion("b", "bon:2", 0.7)]):
            obj = Objective(criteria, baseline=baseline, scale_rewards="group")
            for kind in ("normal", "ties", "constant"):
                adv = obj(_groups(rng, 30, m, len(criteria), kind)).advantages
                assert np.all(np.isfinite(adv)), (spec, kind)
                assert np.abs(adv).max() <= bound, (spec, kind, np.abs(adv).max())
                if kind == "constant" and baseline != "none":  # 'none' keeps the common part on purpose
                    assert np.all(adv == 0), (spec, baseline)


def test_group_scaling_reaches_its_bound_and_is_not_a_sign_function():
    """The bound is tight (N = M: only the top sample moves), and for N < M the shape of the advantages is kept."""
    r = np.array([[[0.0], [1.0], [3.0], [2.0]]])
    np.testing.assert_allclose(Objective([Criterion("x", "bon:4")], scale_rewards="group")(r).advantages,
                               [[0, 0, np.sqrt(3), 0]])
    raw = Objective([Criterion("x", "bon:2")])(r).advantages
    scaled = Objective([Criterion("x", "bon:2")], scale_rewards="group")(r).advantages
    np.testing.assert_allclose(scaled, raw / np.sqrt((raw**2).sum() / 3))


@pytest.mark.parametrize("aggregator", ["sum", "min"])
@pytest.mark.parametrize("spec", ["sampling", "bon:3", "won:5", "bon:6"])
def test_group_scaling_is_invariant_to_an_affine_change_of_the_rewards(spec, aggregator):
    rng = np.random.default_rng(1)
    obj = Objective([Criterion("a", spec, 0.4), Criterion("b", "bon:2", 0.6)], aggregator=aggregator,
                    scale_rewards="group")
    r = rng.normal(size=(20, 6, 2))
    r[:5, :, 1] = 0.5  # a criterion constant within some groups
    np.testing.assert_allclose(obj(3.7 * r - 11.0).advantages, obj(r).advantages, atol=1e-8)


@pytest.mark.parametrize("spec", ["soft_bon:3:0.5", "tilted:0.5"])
def test_group_scaling_of_temperature_algorithms_is_invariant_to_a_shift(spec):
    """Soft best-of-N and tilting select by r / tau, so only a shift leaves them unchanged (a scale moves tau)."""
    rng = np.random.default_rng(2)
    obj = Objective([Criterion("a", spec), Criterion("b", "bon:2")], aggregator="smoothmin", scale_rewards="group")
    r = rng.normal(size=(20, 6, 2))
    np.testing.assert_allclose(obj(r + 5.0).advantages, obj(r).advantages, atol=1e-8)


@pytest.mark.parametrize("baseline", ["loo", "group_mean"])
def test_group_scaling_of_sampling_is_grpo_standardisation(baseline):
    r = np.random.default_rng(3).normal(size=(10, 8, 1))
    adv = Objective([Criterion("a")], baseline=baseline, scale_rewards="group")(r).advantages
    x = r[..., 0]
    np.testing.assert_allclose(adv, (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True), atol=1e-12)


def verl_grpo_passk(scores, norm_adv_by_std_in_grpo, epsilon=1e-6):
    """verl's `grpo_passk` advantage (Tang et al., arXiv 2503.19595) for groups (G, M): the best response gets
    r_max - r_second_max, divided by torch.std(group) + epsilon with norm_adv_by_std_in_grpo; the rest 0."""
    out = np.zeros_like(scores)
    for g, r in enumerate(scores):
        top, second = np.argsort(r)[::-1][:2]
        a = r[top] - r[second]
        out[g, top] = a / (r.std(ddof=1) + epsilon) if norm_adv_by_std_in_grpo else a
    return out


def test_bon_m_without_scaling_is_m_times_verl_grpo_passk_without_std():
    r = np.random.default_rng(4).normal(size=(50, 8))
    adv = Objective([Criterion("a", "bon:8")], scale_rewards="none")(r[..., None]).advantages
    np.testing.assert_allclose(adv, 8 * verl_grpo_passk(r, False), atol=1e-12)


def test_bon_m_group_scaling_is_verl_grpo_passk_with_std_at_magnitude_sqrt_m_minus_1():
    """Same support and sign as verl's normalised grpo_passk, magnitude sqrt(M - 1); on 0/1 rewards with one
    success that is sqrt((M - 1) / M) times verl's (whose std is then 1 / sqrt(M)); tied tops give 0 in both."""
    rng = np.random.default_rng(5)
    m = 8
    r = rng.normal(size=(50, m))
    adv = Objective([Criterion("a", f"bon:{m}")], scale_rewards="group")(r[..., None]).advantages
    np.testing.assert_allclose(adv, np.sqrt(m - 1) * np.sign(verl_grpo_passk(r, True)), atol=1e-12)
    binary = np.zeros((m, m))
    binary[np.arange(m), np.arange(m)] = 1.0  # group g: one success, at position g
    binary = np.concatenate([binary, np.ones((1, m)), np.eye(m)[:2].sum(0, keepdims=True)])  # all and two succeed
    adv = Objective([Criterion("a", f"bon:{m}")], scale_rewards="group")(binary[..., None]).advantages
    np.testing.assert_allclose(adv, np.sqrt((m - 1) / m) * verl_grpo_passk(binary, True), atol=1e-5)
    assert np.all(adv[m:] == 0)


def test_group_scaling_with_dropped_samples_uses_the_samples_left():
    r = np.random.default_rng(6).normal(size=(3, 6, 1))
    r[0, 2, 0] = np.nan
    adv = Objective([Criterion("a", "bon:3")], scale_rewards="group")(r).advantages
    assert adv[0, 2] == 0 and np.all(np.isfinite(adv))
    assert np.sqrt((adv[0] ** 2).sum() / 4) == pytest.approx(1.0)  # 5 samples left: M - 1 = 4

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
    obj = Objective([Criterion("a", "sampling", 0.3), Criterion("b", "sampling", 0.7)], baseline="group_mean")
    r = torch.randn(5, 6, 2)
    weighted = (r * w).sum(-1)
    centred = weighted - weighted.mean(1, keepdim=True)
    out = obj(r)
    torch.testing.assert_close(out.advantages, centred, atol=1e-6, rtol=0)
    scaled = Objective(obj.criteria, baseline="group_mean", scale_rewards="group")(r).advantages
    torch.testing.assert_close(scaled, centred / (weighted.std(1, keepdim=True) + 1e-4), atol=1e-5, rtol=0)
    batch = Objective(obj.criteria, baseline="group_mean", scale_rewards="batch")(r).advantages
    torch.testing.assert_close(batch, centred / (weighted.std() + 1e-4), atol=1e-5, rtol=0)


def test_n_equal_m_still_learns_with_loo_but_not_with_group_mean():
    r = np.array([[[1.0], [4.0], [2.0], [3.0]]])
    loo = Objective([Criterion("x", "bon:4")])(r).advantages
    mean = Objective([Criterion("x", "bon:4")], baseline="group_mean")(r).advantages
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
    obj = Objective([Criterion("x", alg)], baseline=baseline)
    g = expected_gradient(obj, theta, rewards, m)
    truth = exact_gradient(lambda t: alg.value(softmax(t), rewards[:, 0]), theta)
    np.testing.assert_allclose(g, truth, atol=1e-8)


def test_group_mean_baseline_biases_the_gradient():
    theta = np.array([0.3, -0.5, 0.1])
    rewards = np.array([[0.2], [1.0], [-0.4]])
    alg = BestOfN(3)
    obj = Objective([Criterion("x", alg)], baseline="group_mean")
    g = expected_gradient(obj, theta, rewards, 4)
    truth = exact_gradient(lambda t: alg.value(softmax(t), rewards[:, 0]), theta)
    assert np.abs(g - truth).max() > 1e-3


def test_weighted_sum_gradient_over_two_criteria():
    theta = np.array([0.3, -0.5, 0.1, 0.8])
    rewards = np.array([[0.2, 1.0], [1.0, -1.0], [-0.4, 0.3], [0.0, 0.5]])
    crit = [Criterion("a", "bon:2", 0.25), Criterion("b", "won:3", 0.75)]
    obj = Objective(crit)

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
    obj = Objective([Criterion("a", "bon:2"), Criterion("b", "won:2")])
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

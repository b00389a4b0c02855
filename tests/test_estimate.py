"""Estimation: the pooled estimators pinned against brute-force enumeration of subsets, effective N, Pareto
fronts, intervals, the report, bad input, and agreement of pooled with naive per-N sampling on the tiny model."""

import itertools
import json
import math

import numpy as np
import pytest

from iama.algorithms import SoftBestOfN
from iama.estimate import cross_estimates, effective_n, estimate, family_of, value_estimates, win_rate_estimates
from iama.pools import Pool
from iama.stats import mean_ci


@pytest.fixture(scope="module")
def tiny_backend():
    torch = pytest.importorskip("torch")
    from iama.backends import HFBackend

    torch.set_num_threads(1)
    return HFBackend("tiny-gpt2", batch_size=128)


def pool_rewards(seed, p=3, m=6, ties=True):
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(0, 4, size=(p, m)).astype(float)  # many ties
    return rng.normal(size=(p, m))


def subsets(m, n):
    return list(itertools.combinations(range(m), n))


# ---------------------------------------------------------------------------------------------------------------
# estimators against brute force


@pytest.mark.parametrize("family,kernel", [("bon", np.max), ("won", np.min)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_for_every_n_equals_the_mean_over_all_subsets(family, kernel, seed):
    r = pool_rewards(seed)
    m = r.shape[1]
    est = value_estimates(r, family)  # N = 1..M
    brute = np.array([[np.mean([kernel(row[list(s)]) for s in subsets(m, n)]) for n in range(1, m + 1)] for row in r])
    np.testing.assert_allclose(est, brute, atol=1e-12)
    np.testing.assert_allclose(est[:, 0], r.mean(1))  # N = 1 is the pool mean
    np.testing.assert_allclose(est[:, -1], kernel(r, axis=1))  # N = M is the pool's max / min


def test_soft_best_of_n_family_matches_enumeration():
    r = pool_rewards(3, ties=False, m=5)
    alg = lambda n: SoftBestOfN(n, 0.5)  # noqa: E731
    est = value_estimates(r, "soft_bon:0.5")
    brute = np.array([[np.mean([alg(n).kernel(row[list(s)]) for s in subsets(5, n)]) for n in range(1, 6)]
                      for row in r])
    np.testing.assert_allclose(est, brute, atol=1e-12)


def brute_cross(a, b, n, worst):
    """Enumerate the N-subsets; select argmax (argmin) of a, ties broken uniformly: average b over tied ones."""
    out = []
    for s in subsets(len(a), n):
        s = list(s)
        target = a[s].min() if worst else a[s].max()
        tied = [i for i in s if a[i] == target]
        out.append(np.mean(b[tied]))
    return np.mean(out)


@pytest.mark.parametrize("family", ["bon", "won"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cross_effects_equal_uniform_tie_breaking_over_all_subsets(family, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, size=(4, 6)).astype(float)  # selection criterion, heavily tied
    b = rng.normal(size=(4, 6))
    est = cross_estimates(a, b, family)
    brute = np.array([[brute_cross(a[p], b[p], n, family == "won") for n in range(1, 7)] for p in range(4)])
    np.testing.assert_allclose(est, brute, atol=1e-12)
    # selecting by b itself is the plain value
    np.testing.assert_allclose(cross_estimates(b, b, family), value_estimates(b, family), atol=1e-12)


def test_cross_effects_without_tie_averaging_would_differ():
    """The test above can fail: breaking ties by position instead of uniformly gives another number."""
    a = np.array([[1.0, 1.0, 0.0, 0.0]])
    b = np.array([[10.0, 0.0, 0.0, 0.0]])
    # bon:1 -> mean(b) = 2.5; bon:4 -> a tie between candidates 0 and 1, uniformly: 5.0
    np.testing.assert_allclose(cross_estimates(a, b, "bon", [1, 4]), [[2.5, 5.0]])


@pytest.mark.parametrize("family", ["bon", "won"])
@pytest.mark.parametrize("seed", [0, 1])
def test_win_rate_equals_enumeration_over_both_pools(family, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(3, 5)).astype(float)
    y = rng.integers(0, 4, size=(3, 4)).astype(float)  # different M, ties across pools
    k = np.min if family == "won" else np.max
    est = win_rate_estimates(x, y, family)
    assert est.shape == (3, 4)
    for p in range(3):
        for n in range(1, 5):
            h = [float(k(x[p, list(s)]) > k(y[p, list(t)])) + 0.5 * float(k(x[p, list(s)]) == k(y[p, list(t)]))
                 for s in subsets(5, n) for t in subsets(4, n)]
            assert est[p, n - 1] == pytest.approx(np.mean(h), abs=1e-12)


def test_win_rate_of_a_model_against_itself_is_one_half():
    x = pool_rewards(5, p=4, m=6)
    np.testing.assert_allclose(win_rate_estimates(x, x, "bon"), 0.5, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# effective N, Pareto, intervals


def test_effective_n_interpolates_in_log_n():
    curve = np.log2(np.arange(1, 17, dtype=float))  # f(N) = log2 N: linear in log N, so exact inversion
    targets = np.array([0.0, 1.0, 1.5, np.log2(11), 4.0, 4.5, -1.0])
    eff = effective_n(curve[None].repeat(len(targets), 0), targets)
    np.testing.assert_allclose(eff[:5], [1.0, 2.0, 2 ** 1.5, 11.0, 16.0], rtol=1e-12)
    assert math.isinf(eff[5])  # never reached within M = 16: 'more than 16'
    assert eff[6] == 1.0  # already met at N = 1
    # between integers, linear in log N (not in N): f(2) = 0, f(3) = 1 -> target 0.5 at sqrt(6)
    assert effective_n(np.array([-5.0, 0.0, 1.0, 7.0]), np.array(0.5)) == pytest.approx(math.sqrt(6))


def test_effective_n_takes_the_first_crossing_and_handles_decreasing_curves():
    bumpy = np.array([0.0, 2.0, 1.0, 3.0])
    assert effective_n(bumpy, np.array(1.5)) == pytest.approx(math.exp(0.75 * math.log(2)))  # first: 1 -> 2
    down = -np.log2(np.arange(1, 9, dtype=float))  # worst-of-N: value falls with N
    assert effective_n(down, np.array(-2.0), increasing=False) == pytest.approx(4.0)
    assert math.isinf(effective_n(down, np.array(-3.5), increasing=False))


def test_mean_ci_is_a_normal_interval():
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    out = mean_ci(x)
    se = np.std(x[:, 0], ddof=1) / 2
    assert out["mean"][0] == 3.0
    assert out["ci_high"][0] - out["mean"][0] == pytest.approx(1.959964 * se, rel=1e-5)


def test_family_of():
    assert [family_of(a) for a in ["bon:4", "won:2", "sampling", "soft_bon:4:0.1", "tilted:0.5", "bon"]] == \
        ["bon", "won", "sampling", "soft_bon:0.1", "tilted:0.5", "bon"]
    with pytest.raises(ValueError, match="unknown algorithm"):
        family_of("bestof:4")


# ---------------------------------------------------------------------------------------------------------------
# the report from synthetic pools


def synthetic_pool(label, rewards, tokens=None):
    p, m, k = rewards.shape
    tokens = np.full((p, m), 5) if tokens is None else tokens
    return Pool(label, [f"prompt {i}" for i in range(p)], rewards, tokens, [f"c{j}" for j in range(k)])


CRITERIA = [{"name": "c0", "reward": "x", "algorithm": "bon:4", "weight": 0.5},
            {"name": "c1", "reward": "y", "algorithm": "bon:4", "weight": 0.5}]


def test_estimate_builds_a_consistent_report(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8, 2))
    better = base + 0.5  # strictly better on both criteria, every sample
    report = estimate([synthetic_pool("base", base), synthetic_pool("better", better)], CRITERIA,
                      reference="base", bootstrap=200)
    obj = report["models"]["better"]["objective"]
    assert obj["n"] == list(range(1, 9))
    np.testing.assert_allclose(np.array(obj["mean"]) - np.array(report["models"]["base"]["objective"]["mean"]), 0.5)
    assert all(lo <= m <= hi for lo, m, hi in zip(obj["ci_low"], obj["mean"], obj["ci_high"]))
    # better reaches at N = 1 more than base at N = 1 -> effective N > 1 and increasing in N
    eff = report["effective_n"]["better"]["objective"]["effective_n"]
    assert eff[0] > 1 and all(isinstance(e, str) or e > 1 for e in eff)
    assert eff[-1] == "more than 8"
    assert report["win_rates"]["better"]["c0"]["bon"]["mean"][0] > 0.5
    flipped = estimate([synthetic_pool("base", base), synthetic_pool("better", better)], CRITERIA,
                       reference="better", bootstrap=0)
    assert flipped["effective_n"]["base"]["objective"]["effective_n"][0] == "at most 1"
    assert "ci_low" not in flipped["effective_n"]["base"]["objective"]  # no bootstrap, no interval
    assert report["pareto"]["fronts"]["4"]["front"] == ["better"]
    # paired difference: every sample shifted by 0.5 -> exactly +0.5 in every bootstrap resample, while the
    # unpaired intervals are wide (prompts differ)
    diff = report["models"]["better"]["objective_configured"]["minus_reference"]
    assert diff["mean"] == pytest.approx(0.5) and diff["ci_low"] == pytest.approx(0.5)
    assert diff["ci_high"] == pytest.approx(0.5)
    conf = report["models"]["better"]["objective_configured"]
    assert conf["ci_high"] - conf["ci_low"] > 0.1
    assert "minus_reference" not in report["models"]["base"]["objective_configured"]
    # cross-effects: selecting c0 by itself is c0's own value
    assert report["models"]["base"]["cross_effects"]["c0"]["bon"]["c0"]["mean"] == \
        report["models"]["base"]["values"]["c0"]["bon"]["mean"]
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere

    from iama.report import write_report

    files = write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "better with N = 4 matches base with N = " in md
    for name in ("values", "objective", "pareto", "lengths", "win_rates"):
        assert (tmp_path / files[name]).stat().st_size > 1000


def test_objective_mixes_n_free_and_n_dependent_criteria():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(10, 5, 3))
    crit = [{"name": "c0", "reward": "x", "algorithm": "tilted:0.5", "weight": 1.0},
            {"name": "c1", "reward": "y", "algorithm": "soft_bon:3:0.5", "weight": 2.0},
            {"name": "c2", "reward": "z", "algorithm": "sampling", "weight": 0.5}]
    report = estimate([synthetic_pool("a", r)], crit, bootstrap=0)
    v = report["models"]["a"]["values"]
    assert v["c0"]["tilted:0.5"]["n"] == [5] and "soft_bon:0.5" in v["c0"]  # tilted also as soft_bon's curve
    assert v["c2"]["sampling"]["n"] == [1] and list(v["c2"]) == ["sampling"]
    expected = (v["c0"]["tilted:0.5"]["mean"][0] + 2 * np.array(v["c1"]["soft_bon:0.5"]["mean"])
                + 0.5 * v["c2"]["sampling"]["mean"][0])
    np.testing.assert_allclose(report["models"]["a"]["objective"]["mean"], expected)
    assert report["models"]["a"]["objective_configured"]["mean"] == pytest.approx(expected[2])  # N = 3
    assert set(report["effective_n"]) == set() and report["criteria"][0]["n"] is None


def test_estimate_refuses_n_above_m_and_unknown_algorithms():
    pool = synthetic_pool("a", np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="only M=2") as e:
        estimate([pool], CRITERIA)
    assert "\n" not in str(e.value)
    crit = [dict(c, algorithm="bon:2") for c in CRITERIA]
    with pytest.raises(ValueError, match="N=3 > M=2"):
        estimate([pool], crit, algorithms=["won:3"])
    with pytest.raises(ValueError, match="unknown algorithm"):
        estimate([pool], crit, algorithms=["best:2"])
    with pytest.raises(ValueError, match="1 <= N <= M"):
        value_estimates(np.zeros((2, 3)), "bon", [4])


# ---------------------------------------------------------------------------------------------------------------
# pooled estimates against naive per-N sampling, on the tiny model


def test_pooled_estimates_agree_with_naive_sampling_on_the_tiny_model(tiny_backend):
    from iama.backends import GenerationSettings
    from iama.pools import build_rewards, sample_pool

    criteria = [{"name": "short", "reward": "length:8:32", "algorithm": "bon:4", "weight": 1.0}]
    rewards = build_rewards(criteria, tiny_backend.tokenizer)
    from iama.data import load_prompts

    prompts = load_prompts(limit=24)
    settings = GenerationSettings(max_new_tokens=32)
    pooled = sample_pool(tiny_backend, prompts, criteria, rewards, m=16, settings=settings, seed=1, label="pool",
                         progress=False)
    r = np.array([[c["scores"]["short"] for c in rec["candidates"]] for rec in pooled])
    ns = [1, 2, 4, 8]
    pooled_ci = mean_ci(value_estimates(r, "bon", ns))
    for j, n in enumerate(ns):  # naive: fresh independent draws of N per prompt, select the best, average
        fresh = sample_pool(tiny_backend, prompts, criteria, rewards, m=n, settings=settings, seed=100 + n,
                            label=f"naive{n}", progress=False)
        best = np.array([max(c["scores"]["short"] for c in rec["candidates"]) for rec in fresh])
        naive = mean_ci(best[:, None])
        tol = 3 * math.hypot(pooled_ci["se"][j], naive["se"][0])
        assert abs(pooled_ci["mean"][j] - naive["mean"][0]) < tol, (n, pooled_ci["mean"][j], naive["mean"][0], tol)
        if n == 8:  # the check has power: N = 8 is far from what N = 1 gives
            assert abs(pooled_ci["mean"][0] - naive["mean"][0]) > tol



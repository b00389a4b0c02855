"""InfAlign-CTRL pinned down: transforms, calibration, the resumable store, and the 1-D planner against closed
forms, independent fine-grid integration, brute-force searches and its own optimality."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.integrate import cumulative_simpson, simpson
from scipy.special import beta as beta_fn
from scipy.special import comb

from iama.algorithms import BestOfN, Sampling, SoftBestOfN, Tilted, WorstOfN
from iama.ctrl import (_WEIGHTS, U, CalibrationStore, OptimalTransform, _density, _first_variation, _win_rate,
                       beta_for_kl, calibrated_reward, calibrated_transformed_reward, ctrl_plan, fill,
                       optimal_tradeoff, optimal_transform, parse_transform, plan, tradeoff)

ALGS = [Sampling(), BestOfN(2), BestOfN(4), BestOfN(8), WorstOfN(2), WorstOfN(4)]


# ---------------------------------------------------------------------------------------------------------------
# transforms


def test_transforms_mean_what_they_say():
    u = np.array([0.1, 0.5, 0.9])
    assert np.allclose(parse_transform("identity")(u), u)
    assert np.allclose(parse_transform("log")(u), np.log(u))
    assert np.allclose(parse_transform("exp:3")(u), np.exp(3 * u))  # no rescaling
    assert np.allclose(parse_transform(" NegExp:2.5 ")(u), -np.exp(-2.5 * u))
    assert np.allclose(parse_transform("power:0.5")(u), np.sqrt(u))
    fn = lambda u: u**2  # noqa: E731
    assert parse_transform(fn) is fn


@pytest.mark.parametrize("spec", ["", "foo", "exp", "exp:", "exp:-1", "exp:0", "exp:abc", "power:nan", "negexp:inf",
                                  "identity:2", "log:1", "exp:1:2", None, 3])
def test_bad_transform_specs(spec):
    with pytest.raises(ValueError, match=r"bad transform .*allowed: identity, log, exp:T, negexp:T, power:P"):
        parse_transform(spec)


# ---------------------------------------------------------------------------------------------------------------
# calibration


def test_calibrated_reward_small_cases_by_hand():
    ref = [1.0, 2.0, 2.0, 3.0]
    # r=1: 0 below, 1 equal -> 0.5/4; r=2: 1 below, 2 equal -> 2/4; r=3: 3 below, 1 equal -> 3.5/4
    expect = [0.0, 0.125, 0.5, 0.75, 0.875, 1.0]
    assert np.allclose(calibrated_reward(ref, [0.0, 1.0, 2.0, 2.5, 3.0, 4.0]), expect)
    assert np.allclose(calibrated_reward([5.0, 5.0], [5.0, 4.0, 6.0]), [0.5, 0.0, 1.0])  # all tied
    # batched rows, each its own prompt, and one reference row broadcast over three prompts
    refs = np.array([[1.0, 2.0, 2.0, 3.0], [0.0, 0.0, 0.0, 10.0]])
    out = calibrated_reward(refs, [[2.0, 3.0], [0.0, 5.0]])
    assert np.allclose(out, [[0.5, 0.875], [0.375, 0.75]])
    assert calibrated_reward(ref, np.zeros((3, 2))).shape == (3, 2)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=12), st.lists(st.integers(-1, 5), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_calibrated_reward_matches_the_definition(ref, new):
    ref, new = np.array(ref, float), np.array(new, float)
    brute = [(np.sum(ref < r) + 0.5 * np.sum(ref == r)) / len(ref) for r in new]
    assert np.allclose(calibrated_reward(ref, new), brute)
    # a sample calibrated against itself has mean exactly 1/2, ties or not (mid-ranks sum to K^2 / 2)
    assert calibrated_reward(ref, ref).mean() == pytest.approx(0.5, abs=1e-12)


def test_calibrated_reward_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one reference"):
        calibrated_reward([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        calibrated_reward([1.0, np.nan], [1.0])


def _reference_and_fresh(rng, draw, prompts=300, k=64, m=32):
    """Per prompt a different reward distribution; reference and fresh samples both from the reference model."""
    loc, scale = rng.normal(0, 5, (prompts, 1)), rng.uniform(0.1, 10, (prompts, 1))
    return loc + scale * draw((prompts, k)), loc + scale * draw((prompts, m))


def test_reference_samples_calibrate_to_uniform_continuous():
    rng = np.random.default_rng(0)
    ref, new = _reference_and_fresh(rng, lambda s: rng.standard_t(3, s))
    c = calibrated_reward(ref, new).ravel()
    assert abs(c.mean() - 0.5) < 4 * np.sqrt(1 / 12 / 300)  # prompts are the independent units
    assert stats.kstest(c, "uniform").statistic < 0.02  # C is uniform on {0, 1/K, ..., 1}: step 1/64
    # and not uniform for a better policy (a shifted distribution): the test can fail
    assert calibrated_reward(ref, new + 0.5 * ref.std(-1, keepdims=True)).mean() > 0.6


def test_reference_samples_calibrate_to_uniform_with_ties():
    rng = np.random.default_rng(1)
    ref, new = _reference_and_fresh(rng, lambda s: np.round(rng.normal(size=s), 1))  # many exact ties
    assert np.mean(ref[:, :, None] == ref[:, None, :]) > 0.02
    c = calibrated_reward(ref, new).ravel()
    assert abs(c.mean() - 0.5) < 4 * np.sqrt(1 / 12 / 300)
    assert stats.kstest(c, "uniform").statistic < 0.04  # atoms of at most ~4% mass
    # coarse rewards: C is no longer uniform, but the mid-rank convention keeps E[C] = 1/2
    ref, new = _reference_and_fresh(rng, lambda s: rng.choice([0.0, 1.0, 2.0], size=s, p=[0.6, 0.3, 0.1]))
    assert abs(calibrated_reward(ref, new).mean() - 0.5) < 4 * np.sqrt(1 / 12 / 300)


# ---------------------------------------------------------------------------------------------------------------
# the store and the resumable fill loop

CHAT = [{"role": "user", "content": "hi"}]


def test_store_round_trips_and_looks_up(tmp_path):
    path = tmp_path / "cal" / "store.json"
    store = CalibrationStore(path)
    assert store.missing(["a", "b", "a"]) == ["a", "b"]
    store.add("a", "len", [1, 2, 2, 3])
    store.add(CHAT, "len", [0.0, 10.0])
    store.add("a", "sent", [0.5])
    store.save()
    again = CalibrationStore(path)
    assert again.rewards == store.rewards
    assert again.missing(["a", "b", CHAT]) == ["b", CHAT]  # CHAT has 'len' but not 'sent'
    assert again.missing(["a", "b", CHAT], ["len"]) == ["b"]
    got = again.lookup(["a", CHAT, "a"], "len", [2.0, 5.0, 3.0])
    assert np.allclose(got, [0.5, 0.5, 0.875])
    got = again.lookup(["a", CHAT], "len", [[1.0, 4.0], [-1.0, 10.0]])  # (B, M)
    assert np.allclose(got, [[0.125, 1.0], [0.0, 0.75]])
    with pytest.raises(KeyError, match="never calibrated for reward 'len'.*'b'"):
        again.lookup(["a", "b"], "len", [1.0, 1.0])
    with pytest.raises(KeyError, match="no calibration for reward 'nope'"):
        again.lookup(["a"], "nope", [1.0])
    with pytest.raises(ValueError, match="len\\(prompts\\)"):
        again.lookup(["a"], "len", [1.0, 2.0])


def test_calibrated_transformed_reward(tmp_path):
    store = CalibrationStore(tmp_path / "s.json")
    store.add("a", "len", [1, 2, 2, 3])
    store.add(CHAT, "len", [0.0, 10.0])
    store.save()
    with pytest.raises(FileNotFoundError, match="calibrate"):
        CalibrationStore.load(tmp_path / "missing.json")
    store = CalibrationStore.load(tmp_path / "s.json")
    seen = {}

    def raw(prompts, completions, **kw):
        seen.update(kw)
        return [None if c == "skip" else float(len(c)) for c in completions]

    fn = calibrated_transformed_reward(raw, store, "len", "log")
    got = fn(prompts=["a", "a", "a", CHAT, "a"], completions=["", "xx", "xxxx", "x" * 5, "skip"], completion_ids=[])
    # C = 0 -> 1/(2K) = 1/8 (a tie with the lowest sample, like len 1); C = 0.5, 1; CHAT: 0.5 -> 0.5
    assert got[:4] == pytest.approx(np.log([0.125, 0.5, 1.0, 0.5]))
    assert got[4] is None and "completion_ids" in seen and fn.__name__ == "len"
    with pytest.raises(KeyError, match="never calibrated"):
        fn(prompts=["zzz"], completions=["x"])
    with pytest.raises(KeyError, match="no calibration for reward 'other'"):
        calibrated_transformed_reward(raw, store, "other")


def _sampler(calls, fail_after=None):
    def sample_fn(prompts, k):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("killed")
        calls.append(list(prompts))
        return [[f"{p}|{'x' * (len(p) + i)}" for i in range(k)] for p in prompts]
    return sample_fn


REWARDS = {"length": lambda prompts, completions, **kw: [float(len(c)) for c in completions],
           "vowels": lambda prompts, completions, **kw: [float(sum(ch in "aeiou" for ch in c)) for c in completions]}


def test_fill_resumes_after_a_crash(tmp_path):
    prompts = [f"prompt {i} {'a' * i}" for i in range(10)]
    path = tmp_path / "store.json"
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        fill(path, prompts, _sampler(calls, fail_after=2), REWARDS, k=3, batch_size=3, progress=False)
    assert CalibrationStore(path).missing(prompts, REWARDS) == prompts[6:]  # two batches were saved
    calls2 = []
    store = fill(path, prompts + prompts[:2], _sampler(calls2), REWARDS, k=3, batch_size=3, progress=True)
    assert calls2 == [prompts[6:9], prompts[9:]]  # only what was missing
    assert store.missing(prompts, REWARDS) == []
    fresh = fill(tmp_path / "other.json", prompts, _sampler([]), REWARDS, k=3, batch_size=4, progress=False)
    assert CalibrationStore(path).rewards == fresh.rewards  # same as an uninterrupted run
    assert store.rewards["length"][prompts[2]] == [2 * len(prompts[2]) + 1 + i for i in range(3)]
    # a reward added later is filled alone, and nothing is sampled when nothing is missing
    calls3 = []
    more = {**REWARDS, "one": lambda prompts, completions: [1.0] * len(completions)}
    fill(path, prompts, _sampler(calls3), more, k=2, batch_size=5, progress=False)
    assert len(calls3) == 2 and CalibrationStore(path).rewards["one"][prompts[0]] == [1.0, 1.0]
    assert CalibrationStore(path).rewards["length"] == store.rewards["length"]  # kept, not re-scored
    fill(path, prompts, _sampler(calls3), more, k=2, batch_size=5, progress=False)
    assert len(calls3) == 2


def test_fill_checks_what_it_is_given(tmp_path):
    bad_sampler = lambda prompts, k: [["only one"] for _ in prompts]  # noqa: E731
    with pytest.raises(ValueError, match="3 completions"):
        fill(tmp_path / "s.json", ["a"], bad_sampler, REWARDS, k=3, progress=False)
    with pytest.raises(ValueError, match="one number per completion"):
        fill(tmp_path / "s.json", ["a"], _sampler([]), {"r": lambda prompts, completions: [None] * 3}, k=3,
             progress=False)
    with pytest.raises(ValueError, match="at least one reward"):
        fill(tmp_path / "s.json", ["a"], _sampler([]), {}, k=3)


# ---------------------------------------------------------------------------------------------------------------
# the 1-D model: closed forms


@pytest.mark.parametrize("lam", [1e-3, 0.3, 1.0, 4.0, 20.0, 300.0, 1e4])
def test_identity_closed_form(lam):
    """p(u) = lam e^{lam u} / (e^lam - 1): W = 1/(1 - e^-lam) - 1/lam, KL = lam W + log(lam / (e^lam - 1))."""
    w = 1 / -math.expm1(-lam) - 1 / lam
    kl = lam * w + math.log(lam) - lam - math.log(-math.expm1(-lam))  # log(e^lam - 1) without overflow
    got = tradeoff("identity", 1 / lam)
    assert got["win_rate"] == pytest.approx(w, abs=1e-9)
    assert got["kl"] == pytest.approx(kl, abs=1e-9)


@pytest.mark.parametrize("beta", [1e-3, 0.01, 1 / 7, 1.0, 5.0, 100.0])
def test_log_transform_closed_form(beta):
    """Phi = log u gives p(u) = (k+1) u^k with k = 1/beta, F = u^{k+1}: the max of N = k+1 uniforms when k is an
    integer (beta = 1/(N-1): best-of-N distillation). Standard W = E u = (k+1)/(k+2) = N/(N+1);
    KL = log(k+1) + k E log u = log(k+1) - k/(k+1) = log N - (N-1)/N.
    Best-of-M of that policy: W = 1 - M ∫ u^{M-1} F^M du = 1 - M / (M + (k+1) M) = (k+1)/(k+2), the same for
    every M: best-of-M of a best-of-N policy is a max over NM uniforms against a max over M, and the overall max
    of the (N+1)M draws lies in the policy's group with probability NM / ((N+1)M)."""
    k = 1 / beta
    assert tradeoff("log", beta)["win_rate"] == pytest.approx((k + 1) / (k + 2), abs=1e-9)
    assert tradeoff("log", beta)["kl"] == pytest.approx(math.log(k + 1) - k / (k + 1), abs=1e-9)
    for m in (2, 4, 8, 32):
        assert tradeoff("log", beta, BestOfN(m))["win_rate"] == pytest.approx((k + 1) / (k + 2), abs=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_log_transform_is_best_of_n_distillation(n):
    got = tradeoff("log", 1 / (n - 1), BestOfN(n))
    assert got["win_rate"] == pytest.approx(n / (n + 1), abs=1e-9)
    assert got["kl"] == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-9)
    # worst-of-M of the same policy: W = M ∫ (1-u)^{M-1} (1 - u^N)^M du
    #   = M sum_j C(M, j) (-1)^j B(Nj + 1, M), by expanding (1 - u^N)^M
    for m in (2, 3, 5):
        exact = m * sum(comb(m, j) * (-1) ** j * beta_fn(n * j + 1, m) for j in range(m + 1))
        assert tradeoff("log", 1 / (n - 1), WorstOfN(m))["win_rate"] == pytest.approx(exact, abs=1e-9)


def test_worst_of_two_of_best_of_two_by_hand():
    # 2 ∫ (1-u)(1-u^2)^2 du = 2 (1 - 1/2 - 2/3 + 1/2 + 1/5 - 1/6) = 11/15
    assert tradeoff("log", 1.0, WorstOfN(2))["win_rate"] == pytest.approx(11 / 15, abs=1e-12)


@pytest.mark.parametrize("spec", ["identity", "log", "exp:5", "exp:30", "negexp:3", "power:2", "power:0.3"])
def test_no_regularisation_left_means_no_gain(spec):
    for alg in ALGS:
        got = tradeoff(spec, 1e12 if spec != "exp:30" else 1e25, alg)
        assert got["kl"] < 1e-12
        assert got["win_rate"] == pytest.approx(0.5, abs=1e-6)


def _fine_grid_reference(phi_over_beta, n_points=400_001):
    """KL and the three win rates by Simpson's rule on a uniform grid: independent of the Gauss panels."""
    u = np.linspace(0, 1, n_points)
    g = phi_over_beta(u)
    p = np.exp(g - g.max())
    p /= simpson(p, x=u)
    F = np.concatenate([[0.0], cumulative_simpson(p, x=u)])
    F /= F[-1]
    kl = simpson(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), x=u)
    out = {"kl": kl, Sampling(): simpson(u * p, x=u)}
    for n in (2, 4, 8):
        out[BestOfN(n)] = 1 - n * simpson(u ** (n - 1) * F**n, x=u)
        out[WorstOfN(n)] = 1 - n * simpson((1 - u) ** (n - 1) * (1 - (1 - F) ** n), x=u)
    return out


@pytest.mark.parametrize("t", [5.0, 25.0, 40.0])
def test_large_t_exp_matches_fine_grid_integration(t):
    beta = 0.3 * math.exp(t)  # the range METHOD §6 uses: KL around 0.3-0.6
    ref = _fine_grid_reference(lambda u: np.exp(t * u - math.log(beta)))
    for alg in [Sampling(), BestOfN(2), BestOfN(4), BestOfN(8), WorstOfN(2), WorstOfN(4), WorstOfN(8)]:
        got = tradeoff(f"exp:{t}", beta, alg)
        assert got["kl"] == pytest.approx(ref["kl"], abs=1e-7)
        assert got["win_rate"] == pytest.approx(ref[alg], abs=1e-7)
    assert 0.25 < got["kl"] < 0.65


def test_negexp_and_power_match_fine_grid_integration():
    for spec, fn, beta in [("negexp:20", lambda u: -np.exp(-20 * u), 0.05), ("power:0.3", lambda u: u**0.3, 0.1)]:
        ref = _fine_grid_reference(lambda u: fn(u) / beta)
        for alg in [Sampling(), BestOfN(4), WorstOfN(4)]:
            got = tradeoff(spec, beta, alg)
            assert got["kl"] == pytest.approx(ref["kl"], abs=1e-6)
            assert got["win_rate"] == pytest.approx(ref[alg], abs=1e-6)


def test_tradeoff_rejects_what_it_cannot_model():
    for alg in [Tilted(0.1), SoftBestOfN(4, 0.1), "tilted:0.1"]:
        with pytest.raises(ValueError, match="Sampling, BestOfN and WorstOfN"):
            tradeoff("identity", 1.0, alg)
    with pytest.raises(ValueError, match="beta must be a positive"):
        tradeoff("identity", 0.0)
    with pytest.raises(ValueError, match="NaN"):
        tradeoff(lambda u: np.full_like(u, np.nan), 1.0)
    assert tradeoff("identity", 1.0, "bon:4") == tradeoff("identity", 1.0, BestOfN(4))


# ---------------------------------------------------------------------------------------------------------------
# beta for a KL budget, and the planner


@pytest.mark.parametrize("spec", ["identity", "log", "exp:3", "exp:40", "negexp:10", "power:4", "power:0.2"])
@pytest.mark.parametrize("kl", [0.01, 0.5, 3.0])
def test_beta_for_kl_inverts_tradeoff(spec, kl):
    beta = beta_for_kl(spec, kl)
    assert tradeoff(spec, beta)["kl"] == pytest.approx(kl, rel=1e-9)
    assert beta_for_kl(spec, tradeoff(spec, 2 * beta)["kl"], "bon:4") == pytest.approx(2 * beta, rel=1e-7)


def test_beta_for_kl_errors():
    with pytest.raises(ValueError, match="positive"):
        beta_for_kl("identity", 0.0)
    with pytest.raises(ValueError, match="constant"):
        beta_for_kl(lambda u: np.ones_like(u), 0.5)
    # a transform flat on [1/2, 1] concentrates at most on that half: KL <= log 2
    flat_top = lambda u: np.minimum(u, 0.5)  # noqa: E731
    assert tradeoff(flat_top, beta_for_kl(flat_top, 0.6))["kl"] == pytest.approx(0.6, rel=1e-9)
    with pytest.raises(ValueError, match="out of reach"):
        beta_for_kl(flat_top, 0.8)


def test_exp_beta_scale_from_method():
    for t in (5, 12, 25):
        assert 0.35 < tradeoff(f"exp:{t}", 0.3 * math.exp(t))["kl"] < 0.65


@pytest.mark.parametrize("alg, family", [("bon:2", "exp"), ("bon:4", "exp"), ("won:4", "negexp"),
                                         ("bon:4", "power")])
def test_plan_matches_brute_force(alg, family):
    got = plan(alg, 0.5, family)
    ts = np.linspace(0.5, 40, 791)  # every 0.05
    wins = [tradeoff(f"{family}:{t}", beta_for_kl(f"{family}:{t}", 0.5), alg)["win_rate"] for t in ts]
    i = int(np.argmax(wins))
    assert 0 < i < len(ts) - 1
    assert abs(got["best_t"] - ts[i]) < 0.05
    assert wins[i] - 1e-9 <= got["best_win_rate"] < wins[i] + 1e-5
    assert not got["at_grid_edge"]
    spec = got["best_transform"]
    assert tradeoff(spec, got["best_beta"], alg)["kl"] == pytest.approx(0.5, rel=1e-4)


def test_plan_best_t_grows_with_n():
    best = {n: plan(f"bon:{n}", 0.5)["best_t"] for n in (2, 4, 8)}
    assert 3.5 < best[2] < 6 and 10 < best[4] < 15 and 25 < best[8] < 40  # METHOD §6: ~5, ~12, ~25-30
    assert plan("bon:4", 0.2)["best_t"] < best[4] < plan("bon:4", 1.0)["best_t"]


def test_plan_finds_the_identity_for_sampling():
    got = plan("sampling", 0.5, "power")  # u^p with p = 1 is the identity, optimal for the standard win rate
    assert got["best_t"] == pytest.approx(1.0, abs=1e-3)
    assert got["best_win_rate"] == pytest.approx(tradeoff("identity", beta_for_kl("identity", 0.5))["win_rate"],
                                                 abs=1e-9)
    with pytest.raises(ValueError, match="unknown family"):
        plan("bon:2", 0.5, "log")


# ---------------------------------------------------------------------------------------------------------------
# the optimal transform


@pytest.mark.parametrize("alg", [BestOfN(2), BestOfN(5), WorstOfN(2), WorstOfN(5)], ids=repr)
def test_first_variation_matches_finite_differences(alg):
    p, _ = _density(np.exp(3 * U) / 8)
    for g in (np.sin(7 * U), U**3, np.log(U)):
        q = p * (g - np.sum(p * g * _WEIGHTS))  # integrates to 0; p ± eps q stays a density
        eps = 1e-5
        fd = (_win_rate(p + eps * q, alg) - _win_rate(p - eps * q, alg)) / (2 * eps)
        assert fd == pytest.approx(np.sum(_WEIGHTS * q * _first_variation(p, alg)), abs=1e-8)


def test_optimal_transform_for_sampling_is_the_identity():
    for beta in (0.05, 0.5, 3.0):
        opt = optimal_transform(Sampling(), beta)
        assert opt.converged
        assert np.ptp(opt.phi - U) < 1e-12
        assert opt.win_rate == pytest.approx(tradeoff("identity", beta)["win_rate"], abs=1e-12)
        assert opt(np.array([0.2, 0.7])) - opt(np.array([0.0, 0.5])) == pytest.approx(0.2, abs=1e-3)


FAMILY_GRID = (["identity", "log"] + [f"exp:{t}" for t in np.geomspace(0.3, 80, 25)]
               + [f"negexp:{t}" for t in np.geomspace(0.3, 80, 25)] + [f"power:{t}" for t in np.geomspace(0.1, 50, 20)])


@pytest.mark.parametrize("alg, beta", [(BestOfN(4), 0.2), (BestOfN(8), 0.05), (WorstOfN(4), 0.2),
                                       (WorstOfN(3), 0.02)], ids=repr)
def test_optimal_transform_beats_every_family(alg, beta):
    opt = optimal_transform(alg, beta)
    assert opt.converged and opt.iterations < 2000
    p, kl = _density(opt.phi / beta)
    assert np.max(np.abs(_first_variation(p, alg) - opt.phi)) < 1e-9  # it is a fixed point
    # same point when passed back as a callable transform
    assert tradeoff(opt, beta, alg) == pytest.approx({"kl": opt.kl, "win_rate": opt.win_rate}, abs=1e-12)
    margins = []
    for spec in FAMILY_GRID:
        try:
            b = beta_for_kl(spec, opt.kl)
        except ValueError:
            continue
        margins.append(opt.win_rate - tradeoff(spec, b, alg)["win_rate"])
    assert min(margins) > -1e-9 and len(margins) > 60
    # it maximises W - beta KL locally too (W is convex for worst-of-N, so this is not automatic)
    j = opt.win_rate - beta * opt.kl
    rng = np.random.default_rng(0)
    for _ in range(20):
        bump = 0.05 * beta * np.polynomial.legendre.legval(2 * U - 1, rng.normal(size=6))
        p2, kl2 = _density(opt.phi / beta + bump / beta)
        assert _win_rate(p2, alg) - beta * kl2 <= j + 1e-12


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.05])
def test_optimal_win_rate_boundary_identities(n, beta):
    """At the optimum beta p' = p Phi' (p ∝ exp(Phi/beta)), with Phi' = N^2 u^{N-1} F^{N-1} for best-of-N.
    Integrating 1 - W = N ∫ u^{N-1} F^N by parts against d(u^N), and using F' = p:
        1 - W = 1 - N ∫ u (u^{N-1} F^{N-1} p) du = 1 - (beta/N) ∫ u p' du = 1 - (beta/N) (p(1) - 1),
    so W* = (beta/N)(p*(1) - 1). Worst-of-N likewise (Phi' = N^2 (1-u)^{N-1} S^{N-1}, S = 1 - F):
        1 - W = N ∫ (1-u)^N S^{N-1} p du = (beta/N) ∫ (1-u) p' du = (beta/N)(1 - p(0)).
    For N = 1 and p(u) = lam e^{lam u}/(e^lam - 1) both give the identity's closed form."""
    for alg in (BestOfN(n), WorstOfN(n)):
        opt = optimal_transform(alg, beta)
        p, _ = _density(opt.phi / beta)  # the outermost nodes lie within 1e-11 of 0 and 1
        expect = beta / n * (p[-1] - 1) if isinstance(alg, BestOfN) else 1 - beta / n * (1 - p[0])
        assert opt.win_rate == pytest.approx(expect, abs=1e-8)


def test_optimal_tradeoff_at_a_budget():
    got = optimal_tradeoff("bon:4", 0.5)
    assert got["kl"] == pytest.approx(0.5, abs=1e-8)
    assert isinstance(got["transform"], OptimalTransform)
    planned = plan("bon:4", 0.5)
    assert planned["best_win_rate"] < got["win_rate"] < planned["best_win_rate"] + 0.01  # exp is nearly optimal
    sampling = optimal_tradeoff("sampling", 0.5)
    assert sampling["win_rate"] == pytest.approx(tradeoff("identity", beta_for_kl("identity", 0.5))["win_rate"],
                                                 abs=1e-8)
    # the optimal curve is increasing and concave in the budget
    w = [optimal_tradeoff("won:2", k)["win_rate"] for k in (0.1, 0.3, 0.5)]
    assert w[0] < w[1] < w[2] and w[1] - w[0] > w[2] - w[1]


def test_optimal_transform_arguments():
    with pytest.raises(ValueError, match="damping"):
        optimal_transform("bon:2", 0.1, damping=1.0)
    fixed = optimal_transform("bon:2", 0.1, damping=0.5)
    assert fixed.converged
    assert fixed.win_rate == pytest.approx(optimal_transform("bon:2", 0.1).win_rate, abs=1e-10)
    assert not optimal_transform("bon:8", 0.01, iters=3, damping=0.99).converged


# ---------------------------------------------------------------------------------------------------------------
# the plot and the CLI's entry point


def test_ctrl_plan_writes_plot_and_numbers(tmp_path):
    got = ctrl_plan("bon:2", 0.5, tmp_path / "out")
    assert (tmp_path / "out" / "ctrl_plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "ctrl_plan.json").read_text())
    assert saved["best_t"] == pytest.approx(got["best_t"]) == pytest.approx(plan("bon:2", 0.5)["best_t"])
    assert saved["algorithm"] == "bon:2" and saved["family"] == "exp"
    assert saved["optimal"]["win_rate"] >= saved["best_win_rate"]
    assert {"identity", "log", "optimal", saved["best_transform"]} <= set(saved["curves"])
    opt = saved["curves"]["optimal"]["win_rate"]
    for name, curve in saved["curves"].items():  # nothing beats the optimal curve
        assert all(w is None or w <= o + 1e-9 for w, o in zip(curve["win_rate"], opt)), name
    assert ctrl_plan("won:2", 0.3, tmp_path / "won")["family"] == "negexp"


def test_ctrl_plan_prints_the_plan_and_warns_at_the_grids_edge(tmp_path, capsys):
    from iama.cli import main

    assert main(["ctrl-plan", "--algorithm", "bon:4", "--kl", "0.5", "--out", str(tmp_path / "bon")]) == 0
    saved = json.loads((tmp_path / "bon" / "ctrl_plan.json").read_text())
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [
        f"InfAlign-CTRL plan for bon:4 at KL 0.5: transform {saved['best_transform']}, beta "
        f"{saved['best_beta']:.4g} (KL reached 0.5)",
        f"win rate over the reference under bon:4: {saved['best_win_rate']:.4f} (the optimal transform's: "
        f"{saved['optimal']['win_rate']:.4f})",
        f"plan: {tmp_path / 'bon'}/ctrl_plan.json, plot: {tmp_path / 'bon'}/ctrl_plan.png"]
    assert printed.err == "" and not saved["at_grid_edge"]
    assert main(["ctrl-plan", "--algorithm", "sampling", "--kl", "0.3", "--out", str(tmp_path / "sampling")]) == 0
    assert capsys.readouterr().err == ("iama: warning: the best exp:t is at the edge of its grid (0.1 to 500): a t "
                                       "beyond it, or another --family, may win more\n")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_take_the_umasks_mode(tmp_path, umask, mode):
    """Written atomically, yet readable as an ordinary write would leave them (not a temporary file's 0600)."""
    import os

    from iama.cli import main

    old = os.umask(umask)
    try:
        assert main(["ctrl-plan", "--algorithm", "bon:2", "--out", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"ctrl_plan.json": mode,
                                                                               "ctrl_plan.png": mode}

"""The exact lab: categorical policies over a finite set of K responses and exact mirror descent (METHOD §5).

Everything here is exact up to floating point, so the theory can be checked without a language model:

    pi_{t+1} ∝ exp( (dJ/dpi[pi_t] + beta log pi_ref + (1/eta) log pi_t) / (beta + 1/eta) )

is the maximiser of <dJ/dpi[pi_t], pi> - beta KL(pi || pi_ref) - (1/eta) KL(pi || pi_t), the step that
non-linear GRPO approximates. dJ/dpi = sum_i dg/dR_i dR_i/dpi comes from an iama Objective, either exactly
or estimated from groups of samples the way the trainer estimates it.

Rewards are a (K, m) array: one row per response, one column per criterion of the objective.

Four experiments, each writing NAME.png and NAME.json into an output directory:
  toy          the two-target toy (IAMA Prop. 3.1): the optimum's CDF against the closed form; the linear collapse
  convergence  linear convergence of exact mirror descent against the theorem's bound (BestOfN)
  estimators   bias and variance of the plugin and unbiased first-variation estimates and of the policy
               gradient under each baseline, against the group size M
  gap          descent on the IAMA objective beats descent on the mean reward, measured by the IAMA objective
  beyond       the plugin estimator's bias when N exceeds the group size M (N = 2M, 4M) on a few reward laws
  voting       the dense surrogate for majority voting (maj_dense:N) against maj@N's exact first variation, on
               answer laws with one right answer and 1, 2 or 5 wrong ones

Over 500 lines because each experiment is a function with its figure, all on the same exact policies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import binom, multinomial
from tqdm.auto import tqdm

from .algorithms import BestOfN, MajorityVote, MajorityVoteDense, Sampling, WorstOfN, threshold_vote_slope
from .objective import Criterion, Objective
from .utils import atomic_write_json, check_output_dir, save_figure

# ---------------------------------------------------------------------------------------------------------------
# exact quantities on a finite response set


def _normalise(z) -> np.ndarray:
    """z - logsumexp(z), in plain numpy (scipy's logsumexp costs more than a whole step on small K)."""
    top = np.max(z)
    return z - top - np.log(np.sum(np.exp(z - top)))


def _rewards(objective: Objective, rewards) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    r = r[:, None] if r.ndim == 1 else r
    if r.ndim != 2 or r.shape[1] != len(objective.criteria):
        raise ValueError(f"rewards must be (K, {len(objective.criteria)}): one column per criterion; got {r.shape}")
    return r


def kl(p, q) -> float:
    """KL(p || q) for distributions on the same finite set (0 log 0 = 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    on = p > 0
    return float(np.sum(p[on] * (np.log(p[on]) - np.log(q[on]))))


def values(objective: Objective, pi, rewards) -> np.ndarray:
    """R_i[pi] for every criterion, shape (m,)."""
    r = _rewards(objective, rewards)
    return np.array([c.algorithm.value(pi, r[:, i]) for i, c in enumerate(objective.criteria)])


def first_variation(objective: Objective, pi, rewards) -> np.ndarray:
    """dg(R)/dpi = sum_i dg/dR_i(R[pi]) dR_i/dpi on the K responses (canonical form of each dR_i/dpi).
    The KL term is not included: mirror_step handles it exactly."""
    r = _rewards(objective, rewards)
    c = objective.weights if objective.aggregator == "sum" else objective.grad(values(objective, pi, r))
    fvs = [crit.algorithm.first_variation(pi, r[:, i]) for i, crit in enumerate(objective.criteria)]
    return np.asarray(c) @ np.stack(fvs)


def objective_value(objective: Objective, pi, rewards, beta=0.0, pi_ref=None) -> float:
    """J[pi] = g(R_1[pi], ..., R_m[pi]) - beta KL(pi || pi_ref)."""
    j = float(objective.aggregate(values(objective, pi, rewards)))
    return j - beta * kl(pi, pi_ref) if beta else j


def smoothness(n: int, rewards) -> float:
    """L = N(N-1)(r_max - r_min)/4: the bound on best-of-N's smoothness relative to KL (METHOD §5)."""
    r = np.asarray(rewards, dtype=np.float64)
    return n * (n - 1) * float(r.max() - r.min()) / 4


def mirror_step(log_pi, fv, eta, beta=0.0, log_ref=None) -> np.ndarray:
    """One exact mirror-descent step in log space; returns normalised log pi_{t+1}.
    Multiplying through by eta keeps it finite for large eta: (eta fv + eta beta log_ref + log pi) / (1 + eta beta)."""
    z = eta * np.asarray(fv) + np.asarray(log_pi)
    if beta:
        z = (z + eta * beta * np.asarray(log_ref)) / (1 + eta * beta)
    return _normalise(z)


def sample(pi, shape, rng) -> np.ndarray:
    """Indices of responses drawn iid from pi (inverse CDF; responses with pi = 0 are never drawn)."""
    return np.minimum(np.searchsorted(np.cumsum(pi), rng.random(shape), side="right"), len(pi) - 1)


def estimate_first_variation(objective: Objective, pi, rewards, group_size, groups=1, weighting="average",
                             rng=None) -> np.ndarray:
    """A stochastic dJ/dpi on the K responses, from `groups` groups of `group_size` samples drawn from pi and the
    objective's per-sample estimates (what non-linear GRPO computes; dg/dR at the groups' value estimates).

    weighting='average': fv(y) = mean of the samples' first-variation estimates s_j = sum_i dg/dR_i s_ij over the
        samples that landed on y. A response not drawn gets the mean of all s_j, so the step leaves it where it
        was (up to normalisation). Bounded, so any step size is stable; unseen responses make it biased, which
        the theorem's "error floor" covers.
    weighting='importance': fv(y) = sum_{j: y_j = y} A_j / (groups * group_size * pi(y)), A_j the objective's
        advantages (s_j minus its baseline). With baseline 'loo' or 'none' its expectation is dJ/dpi + a constant
        (for the 'sum' aggregator exactly): the natural policy gradient of a tabular softmax policy. Unbiased but
        heavy-tailed (a rare response drawn once moves by A / (M pi)), so it needs small steps.
    """
    rng = np.random.default_rng(rng)
    pi = np.asarray(pi, dtype=np.float64)
    r = _rewards(objective, rewards)
    idx = sample(pi, (groups, group_size), rng)
    est = objective(r[idx], rng=rng)  # (groups, M, m) rewards -> per-sample estimates
    k = len(pi)
    if weighting == "average":
        s = est.first_variation
        n = np.bincount(idx.ravel(), minlength=k)
        total = np.bincount(idx.ravel(), weights=s.ravel(), minlength=k)
        return np.where(n > 0, total / np.maximum(n, 1), s.mean())
    if weighting == "importance":
        total = np.bincount(idx.ravel(), weights=np.asarray(est.advantages).ravel(), minlength=k)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pi > 0, total / (idx.size * pi), 0.0)
    raise ValueError(f"unknown weighting {weighting!r}; choose 'average' or 'importance'")


@dataclass
class Run:
    """A mirror-descent run: the final log pi and J recorded at `steps`."""

    log_pi: np.ndarray
    steps: list = field(default_factory=list)
    J: list = field(default_factory=list)
    converged_at: int | None = None

    @property
    def pi(self) -> np.ndarray:
        return np.exp(self.log_pi)


def mirror_descent(objective: Objective, rewards, eta, steps, beta=0.0, pi_ref=None, pi0=None, group_size=None,
                   groups=1, weighting="average", record=None, score=None, tol=None, rng=None, desc=None) -> Run:
    """`steps` mirror-descent steps from pi0 (default pi_ref, default uniform).

    group_size=None uses the exact first variation; an integer uses estimate_first_variation with that M.
    record: the steps at which to record J (0 is the start; the last step is added), e.g. range(steps + 1);
    score(pi) records another measure instead of J.
    tol: stop once max |Δ log pi| < tol.
    """
    r = _rewards(objective, rewards)
    k = len(r)
    pi_ref = np.full(k, 1.0 / k) if pi_ref is None else np.asarray(pi_ref, dtype=np.float64)
    log_ref = np.log(pi_ref) if beta else None
    log_pi = np.log(pi_ref if pi0 is None else np.asarray(pi0, dtype=np.float64))
    log_pi = _normalise(log_pi)
    rng = np.random.default_rng(rng)
    run = Run(log_pi)

    at = None if record is None else {int(t) for t in record}

    def keep(t):
        run.steps.append(t)
        pi = np.exp(log_pi)
        run.J.append(score(pi) if score else objective_value(objective, pi, r, beta, pi_ref))

    if at is not None and 0 in at:
        keep(0)
    for t in tqdm(range(1, steps + 1), desc=desc, disable=desc is None, leave=False, mininterval=1.0):
        pi = np.exp(log_pi)
        if group_size is None:
            fv = first_variation(objective, pi, r)
        else:
            fv = estimate_first_variation(objective, pi, r, group_size, groups, weighting, rng)
        new = mirror_step(log_pi, fv, eta, beta, log_ref)
        done = tol is not None and np.max(np.abs(new - log_pi)) < tol
        log_pi = new
        if at is not None and (t in at or t == steps or done):
            keep(t)
        if done:
            run.converged_at = t
            break
    run.log_pi = log_pi
    return run


def _slope(x, y) -> float:
    """Slope of log y against log x (least squares)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _figure(nrows, ncols, width=4.6, height=3.8):
    from matplotlib.figure import Figure  # rendered by Agg when saved: no global backend switch

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(nrows, ncols)).ravel()


def _write(out_dir, name, fig, result) -> dict:
    out_dir = Path(out_dir)
    result["figure"], result["data"] = f"{name}.png", f"{name}.json"
    save_figure(fig, out_dir / f"{name}.png")
    atomic_write_json(out_dir / f"{name}.json", result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# 1. the two-target toy (IAMA Prop. 3.1)

# eta = TOY_ETA_SCALE[N] / L at beta = 0. L is only a bound: on the toy, descent stays stable up to about 4/L
# (N = 2), 12/L (N = 4) and 160/L (N = 8), so we take a safe margin below each. N = 4 uses METHOD's 10/L.
TOY_ETA_SCALE = {2: 2.0, 4: 10.0, 8: 100.0}


def two_target_toy(cells=200):
    """Cell centres y in [0, 1], cell edges, and rewards (K, 2): r1 = 1 - y^2, r2 = 1 - (1-y)^2."""
    edges = np.linspace(0.0, 1.0, cells + 1)
    y = (edges[:-1] + edges[1:]) / 2
    return y, edges, np.stack([1 - y**2, 1 - (1 - y) ** 2], axis=1)


def toy_cdf(y, n):
    """The IAMA optimum's CDF for BestOfN(n) on both targets: F(y) = y^a / (y^a + (1-y)^a), a = 1/(n-1)."""
    a = 1.0 / (n - 1)
    return y**a / (y**a + (1 - y) ** a)


def toy_objective(algorithm) -> Objective:
    # the lab compares estimates with exact gradients: advantages unscaled
    return Objective([Criterion("near0", algorithm, 0.5), Criterion("near1", algorithm, 0.5)], scale_rewards="none")


def toy_start(y, kind="bump"):
    """pi_0: 'bump' ∝ y(1-y), a unimodal compromise like a model trained on the mean reward; or 'uniform'."""
    p = y * (1 - y) if kind == "bump" else np.ones_like(y)
    return p / p.sum()


def sup_cdf_distance(pi, edges, n) -> float:
    """sup over cell edges of |discrete CDF - closed form|: at the edges the discrete CDF is exact, without the
    error of placing each cell's mass at its centre."""
    cdf = np.concatenate([[0.0], np.cumsum(pi)])
    return float(np.max(np.abs(cdf - toy_cdf(edges, n))))


def toy_optimum(n, steps, cells=200, start="bump", checkpoints=(), desc=None):
    """Exact mirror descent (beta = 0) on the toy with BestOfN(n): (pi, {step: sup CDF distance} at checkpoints)."""
    y, edges, r = two_target_toy(cells)
    eta = TOY_ETA_SCALE.get(n, 1.0) / smoothness(n, r)
    run = mirror_descent(toy_objective(BestOfN(n)), r, eta, steps, pi0=toy_start(y, start),
                         record={0, *checkpoints}, score=lambda pi: sup_cdf_distance(pi, edges, n), desc=desc)
    return run.pi, dict(zip(run.steps, run.J))


def run_toy(out_dir, quick=False) -> dict:
    t0 = time.time()
    cells, ns = 200, (2, 4, 8)
    steps = 1_000 if quick else 20_000
    checkpoints = [s for s in (10, 30, 100, 300, 1_000, 3_000, 10_000) if s < steps]
    y, edges, r = two_target_toy(cells)
    optima, histories, sup = {}, {}, {}
    for n in ns:
        optima[n], histories[n] = toy_optimum(n, steps, cells, checkpoints=checkpoints, desc=f"toy N={n}")
        sup[n] = histories[n][steps]
    # the linear objective (Sampling for both): L = 0, so any step is allowed; at beta = 0 its iterates are
    # pi_0 exp(t eta fv) exactly, so only t * eta matters: the mass near 0.5 narrows like 1/sqrt(t eta)
    lin_eta = 100.0
    lin = mirror_descent(toy_objective(Sampling()), r, lin_eta, steps, pi0=toy_start(y), desc="toy linear").pi
    lin_mean = float(lin @ y)
    lin_sd = float(np.sqrt(lin @ (y - lin_mean) ** 2))
    lin_mass = float(lin[np.abs(y - 0.5) < 0.01].sum())

    fig, ax = _figure(1, 3)
    colors = {2: "tab:blue", 4: "tab:orange", 8: "tab:green"}
    fine = np.linspace(0, 1, 1001)
    width = edges[1] - edges[0]
    for n in ns:
        ax[0].plot(edges, np.concatenate([[0], np.cumsum(optima[n])]), color=colors[n], lw=2.5, alpha=0.6,
                   label=f"mirror descent, N={n} (sup dist {sup[n]:.1e})")
        ax[0].plot(fine, toy_cdf(fine, n), "k--", lw=0.9)
        ax[1].semilogy(y, optima[n] / width, color=colors[n], lw=2.5, alpha=0.6, label=f"N={n}")
        dens = np.gradient(toy_cdf(fine, n), fine)
        ax[1].semilogy(fine[1:-1], dens[1:-1], "k--", lw=0.9)
        hs = sorted(s for s in histories[n] if s > 0)
        ax[2].loglog(hs, [histories[n][s] for s in hs], "o-", color=colors[n], label=f"N={n}")
    ax[0].plot(edges, np.concatenate([[0], np.cumsum(lin)]), color="tab:red", lw=1.5, label="linear (mean reward)")
    ax[0].plot([], [], "k--", lw=0.9, label="closed form y^a/(y^a+(1-y)^a)")
    ax[0].set(title="CDF of the optimum (beta = 0)", xlabel="y", ylabel="CDF")
    ax[0].legend(fontsize=7, loc="upper left")
    ax[1].semilogy(y, np.maximum(lin / width, 1e-3), color="tab:red", lw=1.5,
                   label=f"linear: sd {lin_sd:.4f}, {lin_mass:.3f} of mass within 0.01 of 0.5")
    ax[1].plot([], [], "k--", lw=0.9, label="closed form")
    ax[1].set(title="density (log scale)", xlabel="y", ylabel="density", ylim=(1e-2, 1e3))
    ax[1].legend(fontsize=7, loc="upper center")
    ax[2].axhline(0.02, color="gray", ls=":", lw=1, label="0.02 (required for N=4)")
    ax[2].set(title="sup |CDF - closed form| along the descent", xlabel="mirror-descent step",
              ylabel="sup distance at cell edges")
    ax[2].legend(fontsize=8)
    fig.suptitle(f"Two-target toy: r1 = 1 - y^2, r2 = 1 - (1-y)^2, BestOfN(N) for both, {cells} cells, "
                 f"{steps} steps, eta = c_N / L")

    result = {
        "experiment": "toy", "quick": quick,
        "config": {"cells": cells, "steps": steps, "beta": 0.0, "weights": [0.5, 0.5], "start": "bump y(1-y)",
                   "eta": {str(n): TOY_ETA_SCALE[n] / smoothness(n, r) for n in ns},
                   "eta_times_L": {str(n): TOY_ETA_SCALE[n] for n in ns}, "linear_eta": lin_eta},
        "sup_cdf_distance": {str(n): sup[n] for n in ns},
        "sup_cdf_distance_history": {str(n): {str(s): d for s, d in histories[n].items()} for n in ns},
        "n4_within_0.02": sup[4] < 0.02,
        "linear": {"mean": lin_mean, "sd": lin_sd, "mass_within_0.01_of_0.5": lin_mass},
        "seconds": time.time() - t0,
    }
    return _write(out_dir, "toy", fig, result)


# ---------------------------------------------------------------------------------------------------------------
# 2. linear convergence against the theorem's bound


def convergence_instance(rng, n, steps, k_range=(5, 40), beta_range=(0.05, 1.0), floor=1e-12) -> dict:
    """A random finite problem with one BestOfN(n) criterion, beta > 0, pi_0 = pi_ref, eta = 1/L.
    pi* by iterating to a fixed point; the excess J(pi*) - J(pi_t) and the bound at every step t = 1..steps
    whose excess is above the floor of double precision."""
    k = int(rng.integers(*k_range, endpoint=True))
    r = rng.uniform(0.0, 1.0, k)
    pi_ref = rng.dirichlet(np.ones(k))
    beta = float(np.exp(rng.uniform(*np.log(beta_range))))
    objective = Objective([Criterion("r", BestOfN(n))], scale_rewards="none")
    L = smoothness(n, r)
    eta = 1.0 / L
    star = mirror_descent(objective, r, eta, 1_000_000, beta, pi_ref, tol=1e-13)
    pi_star = star.pi
    # optimality of pi*: fv(pi*) - beta log(pi*/pi_ref) is constant on the support (KKT)
    kkt = first_variation(objective, pi_star, r) - beta * (star.log_pi - np.log(pi_ref))
    j_star = objective_value(objective, pi_star, r, beta, pi_ref)
    run = mirror_descent(objective, r, eta, steps, beta, pi_ref, record=range(steps + 1))
    t = np.array(run.steps[1:])
    excess = j_star - np.array(run.J[1:])
    bound = beta * kl(pi_star, pi_ref) / (((L + beta) / L) ** t - 1)
    below = excess <= floor
    shown = slice(0, int(np.argmax(below)) if below.any() else len(t))  # the steps before reaching the floor
    return {"n": n, "k": k, "beta": beta, "L": L, "eta": eta, "fixed_point_steps": star.converged_at,
            "kkt_spread": float(np.ptp(kkt)), "t": t[shown], "excess": excess[shown], "bound": bound[shown]}


def run_convergence(out_dir, quick=False) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(0)
    ns, per_n, steps = (2, 4, 8), (2 if quick else 8), (60 if quick else 300)
    instances = [convergence_instance(rng, n, steps) for n in ns for _ in tqdm(range(per_n), desc=f"convergence N={n}",
                                                                                 leave=False)]
    ratios = np.concatenate([i["excess"] / i["bound"] for i in instances])
    worst_kkt = max(i["kkt_spread"] for i in instances)

    import matplotlib

    fig, ax = _figure(1, 4, width=4.2)
    cmap = {2: "Blues", 4: "Oranges", 8: "Greens"}
    for j, n in enumerate(ns):
        mine = [i for i in instances if i["n"] == n]
        shades = matplotlib.colormaps[cmap[n]](np.linspace(0.45, 0.95, len(mine)))
        for i, c in zip(mine, shades):
            ax[j].semilogy(i["t"], i["excess"], color=c, lw=1.5)
            ax[j].semilogy(i["t"], i["bound"], color=c, lw=1, ls="--")
            ax[3].semilogy(i["t"], i["excess"] / i["bound"], color=c, lw=1)
        ax[j].plot([], [], "k-", label="excess J(pi*) - J(pi_t)")
        ax[j].plot([], [], "k--", label="bound beta KL(pi*||pi_0) / (((L+beta)/L)^t - 1)")
        ax[j].set(title=f"BestOfN({n}), eta = 1/L, {len(mine)} instances", xlabel="step t")
        ax[j].legend(fontsize=7)
    ax[3].axhline(1.0, color="k", lw=1)
    ax[3].set(title=f"excess / bound: max {ratios.max():.3f} over {ratios.size} (instance, step) pairs",
              xlabel="step t", ylabel="excess / bound (must stay below 1)", ylim=(1e-8, 2))
    fig.suptitle("Exact non-linear mirror descent converges linearly, inside the theorem's bound "
                 "(L = N(N-1)(r_max - r_min)/4)")

    result = {
        "experiment": "convergence", "quick": quick,
        "config": {"n": list(ns), "instances_per_n": per_n, "steps": steps, "k_range": [5, 40],
                   "rewards": "uniform [0, 1]", "pi_ref": "Dirichlet(1)", "pi0": "pi_ref",
                   "beta": "log-uniform [0.05, 1]", "eta": "1/L", "excess_floor": 1e-12},
        "pairs": int(ratios.size), "max_ratio": float(ratios.max()), "bound_holds": bool(np.all(ratios <= 1.0)),
        "max_kkt_spread_at_pi_star": worst_kkt,
        "instances": [{"n": i["n"], "k": i["k"], "beta": i["beta"], "L": i["L"],
                       "fixed_point_steps": i["fixed_point_steps"], "kkt_spread": i["kkt_spread"],
                       "steps_shown": len(i["t"]), "max_ratio": float(np.max(i["excess"] / i["bound"]))}
                      for i in instances],
        "seconds": time.time() - t0,
    }
    return _write(out_dir, "convergence", fig, result)


# ---------------------------------------------------------------------------------------------------------------
# 3. estimators: first-variation estimates and the policy gradient against the group size M


def plugin_expectation(pi, r, n, m, sign=1.0) -> np.ndarray:
    """E[s_1 | y_1 = y] for the plugin best-of-n estimate (sign -1: worst-of-n) from a group of m, exactly.

    The plugin is n E_emp[max(r(y), Z)], Z the max of n-1 draws from the group's empirical CDF C^: it is
    n [r(y) C^(r(y))^(n-1) + sum_{v > r(y)} v (C^(v)^(n-1) - C^(v-)^(n-1))], linear in the powers of C^, and
    at every v >= r(y), C^(v) = (1 + Binomial(m-1, C(v))) / m. So only binomial moments are needed.
    Needs distinct rewards."""
    v = sign * np.asarray(r, dtype=np.float64)
    order = np.argsort(v)
    vs, cs = v[order], np.cumsum(np.asarray(pi)[order])
    b = np.arange(m)
    moments = binom.pmf(b[None, :], m - 1, np.minimum(cs, 1.0)[:, None]) @ (((1 + b) / m) ** (n - 1))
    jumps = vs[1:] * np.diff(moments)  # v_k (m_k - m_{k-1}) for k >= 1
    above = np.concatenate([np.cumsum(jumps[::-1])[::-1], [0.0]])  # sum over k > p
    out = np.empty_like(vs)
    out[order] = n * (vs * moments + above)
    return sign * out


def _conditional_estimates(alg, estimator, pi, r, m, reps, rng):
    """Monte Carlo of iama's estimate for a sample at each response y: groups whose first member is y and
    whose m-1 others are drawn from pi. Returns (K, reps) estimates s_1."""
    k = len(pi)
    groups = r[sample(pi, (k, reps, m), rng)]
    groups[:, :, 0] = r[:, None]
    return alg.estimate_first_variation(groups, estimator)[..., 0]


def _policy_gradients(objective, pi, r, m, reps, rng):
    """reps estimates of grad_theta R for the softmax policy pi = softmax(theta) from groups of m:
    g = (1/m) sum_j A_j (e_{y_j} - pi), A_j the objective's advantages. (reps, K)"""
    k = len(pi)
    idx = sample(pi, (reps, m), rng)
    a = np.asarray(objective(r[idx][..., None]).advantages)
    flat = (idx + k * np.arange(reps)[:, None]).ravel()
    counts = np.bincount(flat, weights=a.ravel(), minlength=reps * k).reshape(reps, k)
    return counts / m - pi * a.mean(1, keepdims=True)


def run_estimators(out_dir, quick=False) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(0)
    r = np.array([0.0, 0.2, 0.35, 0.5, 0.7, 1.0])
    pi = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])  # most mass on low rewards, like an untrained model
    n = 4
    ms = np.array([4, 8, 16, 32] if quick else [4, 8, 16, 32, 64, 128])
    reps_fv, reps_pg = (400, 1_000) if quick else (4_000, 20_000)
    fit = ms >= 4 * n  # fit slopes in the asymptotic regime, M >= 4N

    # --- first-variation estimates: bias E[s | y] - fv(y) and conditional variance, pi-weighted over y
    fv_rows = {}
    for alg, sign in [(BestOfN(n), 1.0), (WorstOfN(n), -1.0)]:
        exact = alg.first_variation(pi, r)
        for estimator in ("plugin", "unbiased"):
            row = {"bias_rms_mc": [], "noise_rms": [], "bias_rms_exact": [], "variance": [], "max_z": []}
            for m in tqdm(ms, desc=f"{alg.spec} {estimator}", leave=False):
                s = _conditional_estimates(alg, estimator, pi, r, int(m), reps_fv, rng)
                mean, var = s.mean(1), s.var(1, ddof=1)
                se = np.sqrt(var / reps_fv)
                # exact conditional expectation: the U-statistic's is fv itself; the plugin's by binomial moments
                expect = exact if estimator == "unbiased" else plugin_expectation(pi, r, n, int(m), sign)
                row["bias_rms_mc"].append(float(np.sqrt(pi @ (mean - exact) ** 2)))
                row["noise_rms"].append(float(np.sqrt(pi @ se**2)))
                row["bias_rms_exact"].append(float(np.sqrt(pi @ (expect - exact) ** 2)))
                row["variance"].append(float(pi @ var))
                # (a response whose s never varies, e.g. the top one under best-of-N, has se 0: floor it)
                row["max_z"].append(float(np.max(np.abs(mean - expect) / np.maximum(se, 1e-12))))
            row["variance_slope"] = _slope(ms[fit], np.array(row["variance"])[fit])
            if estimator == "plugin":
                row["bias_slope_exact"] = _slope(ms[fit], np.array(row["bias_rms_exact"])[fit])
            fv_rows[f"{alg.spec}/{estimator}"] = row

    # --- policy gradient of a softmax policy, theta = log pi: exact grad_theta R = pi (fv - E_pi fv)
    fv = BestOfN(n).first_variation(pi, r)
    g = pi * (fv - pi @ fv)
    pg_rows = {}
    for baseline in ("loo", "group_mean", "none"):
        objective = Objective([Criterion("r", BestOfN(n))], estimator="unbiased", baseline=baseline,
                              scale_rewards="none")  # the policy gradient itself, to compare with the exact one
        row = {"relative_bias": [], "relative_noise": [], "shrink": [], "variance": [], "relative_mse": []}
        for m in tqdm(ms, desc=f"policy gradient, {baseline}", leave=False):
            est = _policy_gradients(objective, pi, r, int(m), reps_pg, rng)
            mean = est.mean(0)
            row["relative_bias"].append(float(np.linalg.norm(mean - g) / np.linalg.norm(g)))
            row["relative_noise"].append(float(np.sqrt(est.var(0, ddof=1).sum() / reps_pg) / np.linalg.norm(g)))
            row["shrink"].append(float(mean @ g / (g @ g)))  # E ĝ = shrink * g + noise
            row["variance"].append(float(est.var(0, ddof=1).sum()))  # trace of the covariance
            row["relative_mse"].append(float(np.mean(np.sum((est - g) ** 2, axis=1)) / (g @ g)))
        ok = fit & (np.array(row["variance"]) > 0)
        row["variance_slope"] = _slope(ms[ok], np.array(row["variance"])[ok])
        pg_rows[baseline] = row
    pg_rows["group_mean"]["predicted_shrink"] = (1 - n / ms).tolist()  # derived: E ĝ = (1 - N/M) g
    pg_rows["group_mean"]["bias_slope"] = _slope(ms[fit], np.array(pg_rows["group_mean"]["relative_bias"])[fit])
    at_largest = {b: row["variance"][-1] for b, row in pg_rows.items()}

    fig, ax = _figure(2, 2, width=5.4, height=4.2)
    styles = {"plugin": "o", "unbiased": "s"}
    colors = {f"bon:{n}": "tab:blue", f"won:{n}": "tab:purple"}
    for key, row in fv_rows.items():
        spec, estimator = key.split("/")
        c, mk = colors[spec], styles[estimator]
        if estimator == "plugin":
            ax[0].loglog(ms, row["bias_rms_exact"], "-", color=c,
                         label=f"{spec} plugin, exact (slope {row['bias_slope_exact']:.2f})")
            ax[0].loglog(ms, row["bias_rms_mc"], mk, color=c, mfc="none", label=f"{spec} plugin, Monte Carlo")
        else:
            ax[0].loglog(ms, row["bias_rms_mc"], mk, color=c, label=f"{spec} unbiased, Monte Carlo (exact: 0)")
            ax[0].loglog(ms, row["noise_rms"], ":", color=c, label=f"{spec} Monte Carlo noise level")
        ax[1].loglog(ms, row["variance"], mk + ("-" if estimator == "plugin" else "--"), color=c,
                     label=f"{spec} {estimator} (slope {row['variance_slope']:.2f})")
    ax[0].set(title=f"first-variation estimate: bias, rms over y ~ pi (N={n})", xlabel="group size M",
              ylabel="sqrt E_y (E[s|y] - fv(y))^2")
    ax[0].legend(fontsize=7)
    ax[1].set(title="first-variation estimate: E_y Var(s | y)", xlabel="group size M", ylabel="variance")
    ax[1].legend(fontsize=7)
    pcol = {"loo": "tab:green", "group_mean": "tab:red", "none": "tab:gray"}
    for baseline, row in pg_rows.items():
        ax[2].loglog(ms, row["relative_bias"], "o-", color=pcol[baseline], label=baseline)
        noise = np.array(row["relative_noise"])
        ax[2].loglog(ms[noise > 0], noise[noise > 0], ":", color=pcol[baseline], lw=1)
        v = np.array(row["variance"])
        ax[3].loglog(ms[v > 0], v[v > 0], "o-", color=pcol[baseline],
                     label=f"{baseline} (slope {row['variance_slope']:.2f})")
    ax[2].loglog(ms, n / ms, "k--", lw=1, label="N/M: group_mean's derived bias, E ĝ = (1 - N/M) g")
    ax[2].plot([], [], "k:", lw=1, label="Monte Carlo noise level")
    ax[2].set(title="policy gradient, softmax policy: |E ĝ - g| / |g|",
              xlabel="group size M", ylabel="relative bias")
    ax[2].legend(fontsize=7)
    ax[3].set(title="policy gradient: trace Cov(ĝ)" + (" (group_mean at M=N: ĝ = 0, not shown)" if n in ms else ""),
              xlabel="group size M", ylabel="variance")
    ax[3].legend(fontsize=7)
    fig.suptitle(f"Estimators on a fixed problem (K={len(r)}, N={n}, unbiased s for ĝ): {reps_fv} groups per (y, M) "
                 f"for s, {reps_pg} groups per M for ĝ; slopes fitted on M >= {ms[fit].min()}")

    result = {
        "experiment": "estimators", "quick": quick,
        "config": {"rewards": r, "pi": pi, "n": n, "group_sizes": ms, "reps_first_variation": reps_fv,
                   "reps_policy_gradient": reps_pg, "slopes_fitted_on_M": ms[fit]},
        "notes": ("bias of s: E[s|y] - fv(y), fv the canonical N E f(r(y), Y_2..Y_N), pi-weighted rms over y. "
                  "The unbiased estimator's exact conditional expectation is fv (U-statistic), so its Monte Carlo "
                  "bias is at the Monte Carlo noise level (noise_rms); the plugin's is computed exactly from "
                  "binomial moments. max_z: largest |MC mean - exact expectation| / standard error over y, a check "
                  "of iama's estimators against the exact expectations. Policy gradient: the exact "
                  "grad_theta R = sum_y pi(y) fv(y) grad log pi(y); relative_noise is the MC noise level of "
                  "relative_bias."),
        "first_variation": fv_rows,
        "policy_gradient": pg_rows,
        "lowest_variance_baseline_at_largest_M": min(at_largest, key=at_largest.get),
        "lowest_variance_unbiased_baseline_at_largest_M": min(("loo", "none"), key=at_largest.get),
        "seconds": time.time() - t0,
    }
    return _write(out_dir, "estimators", fig, result)


# ---------------------------------------------------------------------------------------------------------------
# 4. the gap: descent on the IAMA objective vs descent on the mean reward, both scored by the IAMA objective


def run_gap(out_dir, quick=False) -> dict:
    t0 = time.time()
    n, beta, cells = 4, 0.01, 200
    steps = 200 if quick else 3_000
    at = {0, *np.geomspace(1, steps, 80).astype(int)}  # log-spaced: the plot's x axis is logarithmic
    group_size, groups = 16, 8
    y, _, r = two_target_toy(cells)
    pi_ref = np.full(cells, 1.0 / cells)  # = pi_0
    iama, linear = toy_objective(BestOfN(n)), toy_objective(Sampling())
    eta = 1.0 / smoothness(n, r)
    score_iama = lambda pi: objective_value(iama, pi, r, beta, pi_ref)  # noqa: E731
    score_linear = lambda pi: objective_value(linear, pi, r, beta, pi_ref)  # noqa: E731
    est = f"estimated (M={group_size}, {groups} groups)"
    runs = {}
    for name, objective, m in [("IAMA, exact", iama, None), ("mean reward, exact", linear, None),
                               (f"IAMA, {est}", iama, group_size), (f"mean reward, {est}", linear, group_size)]:
        runs[name] = mirror_descent(objective, r, eta, steps, beta, pi_ref, group_size=m, groups=groups,
                                    record=at, score=score_iama, rng=1, desc=f"gap: {name}")
    final = {name: run.J[-1] for name, run in runs.items()}
    gap_exact = final["IAMA, exact"] - final["mean reward, exact"]
    gap_est = final[f"IAMA, {est}"] - final[f"mean reward, {est}"]

    fig, ax = _figure(1, 2, width=5.6)
    colors = ["tab:blue", "tab:red", "tab:cyan", "tab:pink"]
    for (name, run), c in zip(runs.items(), colors):
        ls = "-" if "exact" in name else "--"
        ax[0].semilogx(np.maximum(run.steps, 0.5), run.J, ls, color=c, label=f"{name}: {run.J[-1]:.4f}")
        ax[1].plot(y, run.pi * cells, ls, color=c, label=name)
    ax[0].set(title=f"IAMA objective J along each run (gap {gap_exact:.4f} exact, {gap_est:.4f} estimated)",
              xlabel="mirror-descent step (step 0 at 0.5)", ylabel="J = g(R_bo4) - beta KL")
    ax[0].legend(fontsize=8)
    ax[1].set(title="final policies", xlabel="y", ylabel="density")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"Two-target toy, BestOfN({n}) for both, beta = {beta}, pi_ref = pi_0 uniform on {cells} cells, "
                 f"eta = 1/L, {steps} steps: optimising the mean reward loses under best-of-{n}")

    result = {
        "experiment": "gap", "quick": quick,
        "config": {"n": n, "beta": beta, "cells": cells, "steps": steps, "eta": eta, "group_size": group_size,
                   "groups": groups, "weighting": "average", "estimator": iama.estimator, "baseline": iama.baseline},
        "final_iama_objective": final,
        "final_mean_reward_objective": {name: score_linear(run.pi) for name, run in runs.items()},
        "gap_exact": gap_exact, "gap_estimated": gap_est,
        "seconds": time.time() - t0,
    }
    return _write(out_dir, "gap", fig, result)


# ---------------------------------------------------------------------------------------------------------------
# 5. beyond the group: the plugin estimator for N > M


def plugin_value_expectation(pi, r, n, m) -> float:
    """E over groups of m of the plugin best-of-n value sum_v v (C^(v)^n - C^(v-)^n), exactly: m C^(v) is
    Binomial(m, C(v)) at every reward v, so E C^(v)^n is a binomial moment. Needs distinct rewards."""
    order = np.argsort(r)
    vs, cs = np.asarray(r, dtype=np.float64)[order], np.minimum(np.cumsum(np.asarray(pi)[order]), 1.0)
    b = np.arange(m + 1)
    moments = binom.pmf(b[None, :], m, cs[:, None]) @ ((b / m) ** n)
    return float(vs @ np.diff(np.concatenate([[0.0], moments])))


def beyond_laws() -> dict:
    """Finite reward laws (rewards, probabilities) from easy to hard for an estimate that extrapolates the top."""
    k = 10
    tail = 0.6 ** np.arange(20)
    return {
        "uniform (K=10)": (np.linspace(0, 1, k), np.full(k, 1 / k)),
        "skewed low (K=6)": (np.array([0.0, 0.2, 0.35, 0.5, 0.7, 1.0]), np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])),
        "geometric tail (K=20)": (np.linspace(0, 1, 20), tail / tail.sum()),
        "pass/fail, p=0.1": (np.array([0.0, 1.0]), np.array([0.9, 0.1])),
    }


def run_beyond(out_dir, quick=False) -> dict:
    """How biased is the plugin (the empirical CDF to the N-th power) when N exceeds the group size M? For each
    law: the relative bias of its value, (E[plugin] - R) / (R - E r), R = E[max of N], and how well the expected
    plugin policy gradient of a softmax policy points along the exact one (cosine; and its length ratio)."""
    t0 = time.time()
    ms = [4, 8] if quick else [4, 8, 16, 32]
    factors = [1, 2, 4]  # N = M, 2M, 4M
    rows = []
    for law, (r, pi) in beyond_laws().items():
        for m in ms:
            for f in factors:
                n = f * m
                alg = BestOfN(n)
                true_value, mean = alg.value(pi, r), float(pi @ r)
                fv = alg.first_variation(pi, r)
                g = pi * (fv - pi @ fv)  # exact grad_theta R_N for pi = softmax(theta)
                s = plugin_expectation(pi, r, n, m)  # E[plugin s | y]
                gp = pi * (s - pi @ s)
                rows.append({
                    "law": law, "M": m, "N": n, "N_over_M": f, "value": true_value,
                    "plugin_value": plugin_value_expectation(pi, r, n, m),
                    "relative_value_bias": (plugin_value_expectation(pi, r, n, m) - true_value) / (true_value - mean),
                    "gradient_cosine": float(gp @ g / (np.linalg.norm(gp) * np.linalg.norm(g))),
                    "gradient_length_ratio": float(np.linalg.norm(gp) / np.linalg.norm(g)),
                })

    fig, ax = _figure(1, 2, width=5.4, height=4.2)
    colors = dict(zip(beyond_laws(), ["tab:blue", "tab:green", "tab:orange", "tab:red"]))
    markers = dict(zip([4, 8, 16, 32], ["o", "s", "^", "D"]))
    for law in beyond_laws():
        for m in ms:
            pts = [row for row in rows if row["law"] == law and row["M"] == m]
            x = [row["N_over_M"] for row in pts]
            kw = dict(color=colors[law], marker=markers[m], label=f"{law}, M={m}")
            ax[0].plot(x, [row["relative_value_bias"] for row in pts], "-", **kw)
            ax[1].plot(x, [row["gradient_length_ratio"] for row in pts], "-", **kw)
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set(title="plugin value: (E[estimate] - R_N) / (R_N - E r)", xlabel="N / M", ylabel="relative bias",
              xscale="log", xticks=factors, xticklabels=[str(f) for f in factors])
    ax[1].axhline(1, color="k", lw=0.8)
    ax[1].set(title="plugin policy gradient: |E ĝ| / |g| (softmax policy)", xlabel="N / M", ylabel="length ratio",
              xscale="log", xticks=factors, xticklabels=[str(f) for f in factors])
    ax[0].legend(fontsize=6, ncol=2)
    fig.suptitle("The plugin estimator beyond the group: exact expectations over groups of M (binomial moments)")
    result = {"experiment": "beyond", "quick": quick, "group_sizes": ms, "n_over_m": factors,
              "laws": {k: {"rewards": r, "pi": p} for k, (r, p) in beyond_laws().items()}, "rows": rows,
              "notes": "relative_value_bias < 0: the plugin under-estimates best-of-N's gain over sampling. "
                       "gradient_cosine: direction of the expected plugin policy gradient against the exact one.",
              "seconds": time.time() - t0}
    return _write(out_dir, "beyond", fig, result)



# ---------------------------------------------------------------------------------------------------------------
# 6. majority voting: the dense surrogate against the exact first variation


def voting_laws(quick=False) -> dict:
    """Answer laws {name: (chance of the right answer, shares of the wrong answers)}: the right answer at p, the
    rest split among 1, 2 or 5 wrong answers, evenly or skewed (3:1; halving)."""
    splits = {"1 wrong": [1.0], "2 wrong, even": [0.5, 0.5], "2 wrong, 3:1": [0.75, 0.25],
              "5 wrong, even": [0.2] * 5, "5 wrong, halving": list(np.array([16, 8, 4, 2, 1]) / 31)}
    ps = (0.3, 0.5) if quick else (0.15, 0.3, 0.5, 0.7)
    return {f"p={p:g}, {name}": (p, shares) for p in ps for name, shares in splits.items()}


def dense_factor_expectation(p, n, m) -> float:
    """kappa with E[w(p̂) (r_j - mean of the others) | r_j] = const + kappa r_j, exactly over the other m - 1
    samples' right count C ~ Binomial(m - 1, p), p̂ = (r_j + C) / m: the expected dense estimate (baseline 'loo',
    unscaled) is kappa pi (r - p) in the gradient, against the population's V_n'(p) pi (r - p)."""
    c = np.arange(m)
    pmf = binom.pmf(c, m - 1, p)
    right = pmf @ (threshold_vote_slope((1 + c) / m, n) * (1 - c / (m - 1)))
    wrong = pmf @ (threshold_vote_slope(c / m, n) * (-c / (m - 1)))
    return float(right - wrong)


def silent_group_chance(probs, n, m) -> float:
    """P(maj:n's exact leave-one-out advantages are all zero) for a group of m drawn from an answer law (response 0
    right, the others distinct wrong answers), exactly: over every count vector with its multinomial chance."""
    counts = _silent_counts(len(probs), n, m)
    return float(multinomial.pmf(counts, m, probs).sum()) if len(counts) else 0.0


@lru_cache(maxsize=None)
def _silent_counts(k, n, m) -> np.ndarray:
    """The count vectors (answer 0 right, k answers, m samples) on which maj:n's estimate is silent: which ones
    does not depend on the law, so each is run through the estimator once."""
    alg, silent = MajorityVote(n), []
    for cut in combinations(range(m + k - 1), k - 1):  # stars and bars: counts of each answer, summing to m
        counts = np.diff(np.r_[-1, cut, m + k - 1]) - 1
        group = np.repeat(np.arange(k), counts)
        s, b = alg.estimate((group == 0).astype(float), answers=[str(i) for i in group])
        if np.abs(s - b).max() < 1e-9:
            silent.append(counts)
    return np.array(silent).reshape(-1, k)


def run_voting(out_dir, quick=False) -> dict:
    """How far is the dense surrogate (maj_dense:N) from maj@N? For each answer law, with a softmax policy over its
    answers (one response per answer): the cosine between the surrogate's policy gradient V_N'(p) pi (r - p) and
    maj@N's exact one, their length ratio, and the largest difference of their centred first variations on a
    response relative to maj@N's largest; the length ratio of the expected dense estimate from a group of M = N;
    and the chance that such a group gives maj:N's exact estimate no signal at all, against the surrogate's
    (every sample right or every sample wrong). Over all the laws at once (one prompt each), the cosine of the
    stacked gradients: how well the surrogate weights prompts against each other."""
    t0 = time.time()
    ns = (8,) if quick else (4, 8)
    rows, stacked = [], {}
    for n in ns:
        g_all, s_all, e_all = [], [], []
        for law, (p, shares) in voting_laws(quick).items():
            probs = np.r_[p, (1 - p) * np.asarray(shares)]
            rewards = np.r_[1.0, np.zeros(len(shares))]
            answers = [str(i) for i in range(len(probs))]
            fv = MajorityVote(n).first_variation(probs, rewards, answers=answers)
            fs = MajorityVoteDense(n).surrogate_first_variation(probs, rewards)
            g = probs * (fv - probs @ fv)  # exact grad_theta of maj@N for pi = softmax(theta)
            gs = probs * (fs - probs @ fs)
            ge = dense_factor_expectation(p, n, n) * probs * (rewards - p)
            g_all.append(g), s_all.append(gs), e_all.append(ge)
            centred, centred_s = fv - probs @ fv, fs - probs @ fs
            rows.append({
                "law": law, "p": p, "wrong_answers": len(shares), "N": n,
                "maj_value": MajorityVote(n).value(probs, rewards, answers=answers),
                "surrogate_value": MajorityVoteDense(n).surrogate_value(probs, rewards),
                "gradient_cosine": float(gs @ g / (np.linalg.norm(gs) * np.linalg.norm(g))),
                "gradient_length_ratio": float(np.linalg.norm(gs) / np.linalg.norm(g)),
                "response_error": float(np.abs(centred_s - centred).max() / np.abs(centred).max()),
                "estimate_length_ratio_at_M=N": float(np.linalg.norm(ge) / np.linalg.norm(g)),
                "silent_group_chance_maj": silent_group_chance(probs, n, n),
                "silent_group_chance_dense": float(p**n + (1 - p) ** n),
            })
        cos = lambda a, b: float(np.concatenate(a) @ np.concatenate(b) / (  # noqa: E731
            np.linalg.norm(np.concatenate(a)) * np.linalg.norm(np.concatenate(b))))
        stacked[str(n)] = {"surrogate": cos(s_all, g_all), "estimate_at_M=N": cos(e_all, g_all)}

    fig, ax = _figure(1, 2, width=5.4, height=4.2)
    n = ns[-1]
    splits = list(dict.fromkeys(row["law"].split(", ", 1)[1] for row in rows))
    for split, color in zip(splits, ["k", "tab:blue", "tab:cyan", "tab:red", "tab:orange"]):
        pts = [row for row in rows if row["N"] == n and row["law"].endswith(split)]
        ax[0].plot([row["p"] for row in pts], [row["gradient_cosine"] for row in pts], "o-", color=color, label=split)
        ax[1].plot([row["p"] for row in pts], [row["gradient_length_ratio"] for row in pts], "o-", color=color,
                   label=split)
    ax[0].set(title=f"direction: cos(surrogate, maj@{n}) (softmax policy)", xlabel="p (right answer)",
              ylabel="cosine")
    ax[1].axhline(1, color="k", lw=0.8)
    ax[1].set(title=f"length: |surrogate| / |maj@{n}|", xlabel="p (right answer)", ylabel="ratio", yscale="log")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"The dense surrogate for maj@{n} (maj_dense:{n}) against its exact policy gradient, per answer law")
    result = {"experiment": "voting", "quick": quick, "ns": list(ns),
              "laws": {k: {"p": p, "wrong_shares": list(s)} for k, (p, s) in voting_laws(quick).items()},
              "rows": rows, "stacked_cosine": stacked,
              "notes": "With one wrong answer the surrogate is maj@N exactly (cosine and ratios 1). The length "
                       "ratio is the surrogate's weight for the prompt relative to maj@N's: across prompts it "
                       "decides where the update goes (stacked_cosine), unless scale_rewards: group divides it "
                       "out. silent_group_chance: P(a group of M = N gives no gradient at all).",
              "seconds": time.time() - t0}
    return _write(out_dir, "voting", fig, result)

EXPERIMENTS = {"toy": run_toy, "convergence": run_convergence, "estimators": run_estimators, "gap": run_gap,
               "beyond": run_beyond, "voting": run_voting}


def _summary(result) -> str:
    """One line of the numbers that matter, for the console."""
    name = result["experiment"]
    if name == "toy":
        text = "sup |CDF - closed form| " + ", ".join(f"N={n}: {d:.1e}" for n, d in result["sup_cdf_distance"].items())
    elif name == "convergence":
        text = (f"bound holds: {result['bound_holds']}, max excess/bound {result['max_ratio']:.3f} "
                f"over {result['pairs']} pairs")
    elif name == "estimators":
        fv, pg = result["first_variation"], result["policy_gradient"]
        text = (f"plugin bias slope {fv['bon:4/plugin']['bias_slope_exact']:.2f}, variance slopes "
                f"{fv['bon:4/plugin']['variance_slope']:.2f} (plugin) {fv['bon:4/unbiased']['variance_slope']:.2f} "
                f"(unbiased); group_mean shrink at M=N {pg['group_mean']['shrink'][0]:.2f}")
    elif name == "beyond":
        worst = min(result["rows"], key=lambda row: row["relative_value_bias"])
        text = (f"largest plugin value bias {worst['relative_value_bias']:+.2f} of the gain ({worst['law']}, "
                f"M={worst['M']}, N={worst['N']})")
    elif name == "voting":
        worst = min(result["rows"], key=lambda row: row["gradient_cosine"])
        n = str(result["ns"][-1])
        text = (f"smallest cosine {worst['gradient_cosine']:.3f} ({worst['law']}, N={worst['N']}); over all laws "
                f"at N={n}: {result['stacked_cosine'][n]['surrogate']:.3f}")
    else:
        text = f"IAMA objective gap {result['gap_exact']:.4f} (exact), {result['gap_estimated']:.4f} (estimated)"
    return f"{name}: {text} [{result['seconds']:.0f} s] -> {result['figure']}, {result['data']}"


def run_lab(experiment: str, out_dir, quick: bool = False) -> dict:
    """Run one experiment (a name in EXPERIMENTS) or 'all'; each writes NAME.png and NAME.json
    into out_dir. Returns the experiment's result dict ('all': {name: result})."""
    if experiment == "all":
        return {name: run_lab(name, out_dir, quick) for name in EXPERIMENTS}
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)} or 'all'")
    check_output_dir(out_dir, "--out")  # before the experiment runs, not when it writes
    result = EXPERIMENTS[experiment](out_dir, quick)
    tqdm.write(_summary(result))
    return result

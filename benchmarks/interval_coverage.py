"""Benchmark: coverage of nominal 95% intervals over prompts, normal (Wald) against iama.stats' bounded intervals.

For each quantity, level and number of prompts P, many simulated data sets of M = 16 samples per prompt; each gives
per-prompt values from iama's own estimators and two intervals for their mean:

- old: `mean_ci`, mean +- z SE, on the per-prompt values (or on the per-prompt differences);
- new: `bounded_mean_ci` on [0, 1] (pass@k, maj@k, win rate), `paired_difference_ci` (MOVER) on [-1, 1] (paired
  differences).

Coverage is the share of data sets whose interval contains the true value (the limits included).

Quantities (prompts heterogeneous: the per-prompt probability q_p ~ Beta(m kappa, (1 - m) kappa), concentration
kappa = 2 by default, with the Beta mean m solved so that the true value is the level):
- pass@1, pass@16: 0/1 rewards, q_p the per-prompt success probability; per-prompt values from
  `value_estimates(rewards, "bon", [k])` (c/16 for pass@1, 1[c > 0] for pass@16).
- maj@8: each sample gives the right answer (reward 1) with probability q_p, else one of three wrong answers with
  shares 0.5, 0.3, 0.2 of 1 - q_p (reward 0); per-prompt values from `value_estimates(..., "maj", [8], answers=)`.
- diff pass@1, diff pass@16: two models on the same prompts, A with q_p, B with q_p's logit lowered by `--shift`
  (0.5): per-prompt probabilities perfectly rank-correlated, samples drawn independently; the quantity is
  A - B, the level is model A's value, and the true difference is given beside it.
- win rate bon:4: model against reference, each drawing 16 continuous rewards per prompt; reference rewards
  U(0, 1), model rewards with CDF u^a_p (a Lehmann alternative), so the per-prompt bon:4 against bon:4 win rate is
  w_p = a_p / (1 + a_p); w_p ~ Beta with mean the level; per-prompt values from `win_rate_estimates(.., "bon", [4])`.

True values are exact: an expectation over the Beta by Gauss-Jacobi quadrature (exact for the polynomials pass@k and
maj@8; the difference's integrand is analytic), 128 nodes, checked against 256 (`truth_precision`); maj@8 of one
prompt is `MajorityVote(8).value` interpolated as the degree-8 polynomial in q_p it is (`maj8_fit_error`). Each
cell also checks that the per-prompt estimates average to the truth (`bias_z`, in Monte Carlo SEs).

    python benchmarks/interval_coverage.py                       # 10000 data sets per cell, under a minute
    python benchmarks/interval_coverage.py --reps 2000 --concentration 1

Results: benchmarks/results/interval_coverage.json and .csv, with the command line and the machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import roots_jacobi

HERE = Path(__file__).resolve().parent
M = 16
WRONG_SHARES = (0.5, 0.3, 0.2)  # maj@8: three wrong answers share 1 - q_p in these proportions
CONFIDENCE = 0.95


def beta_nodes(mean, kappa, nodes=128):
    """Nodes and weights (summing to 1) of Gauss-Jacobi quadrature for Beta(mean kappa, (1 - mean) kappa) on [0, 1]."""
    a, b = mean * kappa, (1 - mean) * kappa
    x, w = roots_jacobi(nodes, b - 1, a - 1)  # weight (1 - x)^(b-1) (1 + x)^(a-1), q = (1 + x) / 2
    return (1 + x) / 2, w / w.sum()


def beta_expect(f, mean, kappa, nodes=128):
    q, w = beta_nodes(mean, kappa, nodes)
    return float(w @ f(q))


def shifted(q, shift):
    """q with its logit lowered by shift, without infinities at q = 0 or 1."""
    e = math.exp(-shift)
    return q * e / (q * e + 1 - q)


def maj8_polynomial():
    """maj@8 of one prompt as a function of q_p: MajorityVote(8).value of the answer law, a polynomial of degree 8
    in q_p; interpolated at 9 Chebyshev points, the error measured at 201 others."""
    from iama.algorithms import MajorityVote

    alg = MajorityVote(8)

    def exact(q):
        return alg.value([q, *((1 - q) * s for s in WRONG_SHARES)], [1.0, 0.0, 0.0, 0.0], answers=[0, 1, 2, 3])

    nodes = (1 - np.cos(np.pi * (np.arange(9) + 0.5) / 9)) / 2
    poly = np.polynomial.Polynomial.fit(nodes, [exact(q) for q in nodes], 8)
    check = np.linspace(0, 1, 201)
    return poly, float(max(abs(poly(q) - exact(q)) for q in check))


class Estimates:
    """Per-prompt estimates by iama's estimators, looked up by the sufficient counts of a prompt's 16 samples."""

    def __init__(self):
        from iama.estimate import value_estimates

        self.value_estimates = value_estimates
        ones = (np.arange(M)[None, :] < np.arange(M + 1)[:, None]).astype(np.float64)  # row c: c successes
        self.bon = {k: value_estimates(ones, "bon", [k])[:, 0] for k in (1, 4, 16)}
        self.maj_cache: dict[int, float] = {}

    def maj8(self, right, wrong):
        """maj@8 estimates from counts: right (n,), wrong (n, 3) (wrong answers are exchangeable: sorted)."""
        w = -np.sort(-wrong, axis=1)
        key = ((right * (M + 1) + w[:, 0]) * (M + 1) + w[:, 1]) * (M + 1) + w[:, 2]
        uniq, inv = np.unique(key, return_inverse=True)
        new = [int(k) for k in uniq if int(k) not in self.maj_cache]
        if new:
            counts = np.array([[k // (M + 1) ** 3, k // (M + 1) ** 2 % (M + 1), k // (M + 1) % (M + 1), k % (M + 1)]
                               for k in new])
            answers = np.stack([np.repeat(np.arange(4), c) for c in counts])
            vals = self.value_estimates((answers == 0).astype(np.float64), "maj", [8], answers=answers)[:, 0]
            self.maj_cache.update(zip(new, vals.tolist()))
        return np.array([self.maj_cache[int(k)] for k in uniq])[inv]


def simulate(quantity, q, rng, est, shift, chunk=20000):
    """Per-prompt values (P, R), or a pair of them for a difference, from per-prompt probabilities q (P, R)."""
    shape = q.shape
    if quantity in ("pass@1", "pass@16"):
        return est.bon[int(quantity[5:])][rng.binomial(M, q)]
    if quantity in ("diff pass@1", "diff pass@16"):
        table = est.bon[int(quantity[10:])]
        return table[rng.binomial(M, q)], table[rng.binomial(M, shifted(q, shift))]
    if quantity == "maj@8":
        right = rng.binomial(M, q).ravel()
        wrong = rng.multinomial(M - right, WRONG_SHARES)
        return est.maj8(right, wrong).reshape(shape)
    if quantity == "win rate bon:4":
        from iama.estimate import win_rate_estimates

        flat = q.ravel()
        out = np.empty(flat.size)
        for s in range(0, flat.size, chunk):
            w = flat[s:s + chunk, None]
            with np.errstate(divide="ignore"):
                inv_a = (1 - w) / w  # model rewards U^(1/a): CDF u^a
                model = np.exp(np.log(rng.random((len(w), M))) * inv_a)
            ref = rng.random((len(w), M))
            out[s:s + chunk] = win_rate_estimates(model, ref, "bon", [4])[:, 0]
        return out.reshape(shape)
    raise ValueError(quantity)


def level_and_truth(quantity, maj_poly, shift):
    """(f, g): the per-prompt function of q whose Beta mean is the level, and the one whose mean is the truth."""
    bon = {"pass@1": lambda q: q, "pass@16": lambda q: 1 - (1 - q) ** M}
    if quantity in bon:
        return bon[quantity], bon[quantity]
    if quantity.startswith("diff "):
        f = bon[quantity[5:]]
        return f, lambda q: f(q) - f(shifted(q, shift))
    if quantity == "maj@8":
        return maj_poly, maj_poly
    if quantity == "win rate bon:4":
        return (lambda q: q), (lambda q: q)
    raise ValueError(quantity)


QUANTITIES = ("pass@1", "pass@16", "maj@8", "diff pass@1", "diff pass@16", "win rate bon:4")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10000, help="simulated data sets per cell")
    parser.add_argument("--prompts", default="30,60,200", help="numbers of prompts P")
    parser.add_argument("--levels", default="0.5,0.95,0.99", help="true values (model A's for a difference)")
    parser.add_argument("--quantities", default=",".join(QUANTITIES), help="a subset of: " + ", ".join(QUANTITIES))
    parser.add_argument("--concentration", type=float, default=2.0,
                        help="kappa of the per-prompt Beta(m kappa, (1 - m) kappa); 2 at m = 0.5 is uniform")
    parser.add_argument("--shift", type=float, default=0.5, help="model B's logit shift below A's (differences)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the results (default: "
                        "benchmarks/results)")
    parser.add_argument("--name", default="interval_coverage", help="result file name without extension")
    args = parser.parse_args(argv)

    from iama.stats import bounded_mean_ci, mean_ci, paired_difference_ci
    from iama.utils import atomic_write_csv, atomic_write_json, recorded_command, json_safe, machine_info

    ps = [int(p) for p in args.prompts.split(",")]
    levels = [float(v) for v in args.levels.split(",")]
    quantities = [q.strip() for q in args.quantities.split(",")]
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        parser.error(f"unknown quantities {unknown}; choose from {', '.join(QUANTITIES)}")
    kappa, reps = args.concentration, args.reps
    maj_poly, maj_fit_error = maj8_polynomial()
    est = Estimates()
    t_start = time.perf_counter()
    rows = []
    for qi, quantity in enumerate(quantities):
        f_level, f_truth = level_and_truth(quantity, maj_poly, args.shift)
        diff = quantity.startswith("diff ")
        low, high = (-1.0, 1.0) if diff else (0.0, 1.0)  # the quantity's range; each model's values lie in [0, 1]
        for li, level in enumerate(levels):
            m = brentq(lambda mu: beta_expect(f_level, mu, kappa) - level, 1e-6, 1 - 1e-9, xtol=1e-14, rtol=1e-14)
            truth = beta_expect(f_truth, m, kappa)
            precision = abs(truth - beta_expect(f_truth, m, kappa, nodes=256))
            value_b = beta_expect(lambda q: f_level(shifted(q, args.shift)), m, kappa) if diff else None
            for pi, p in enumerate(ps):
                rng = np.random.default_rng([args.seed, qi, li, pi])
                q = rng.beta(m * kappa, (1 - m) * kappa, size=(p, reps))
                sim = simulate(quantity, q, rng, est, args.shift)
                if diff:
                    a, b = sim
                    x = a - b
                    new = paired_difference_ci(a, b, 0.0, 1.0, CONFIDENCE)
                else:
                    x = sim
                    new = bounded_mean_ci(x, 0.0, 1.0, CONFIDENCE)
                old = mean_ci(x, CONFIDENCE)
                point = x.mean(axis=0)

                def covered(ci):
                    return (ci["ci_low"] <= truth) & (truth <= ci["ci_high"])

                tol = 1e-12
                rows.append({
                    "quantity": quantity, "level": level, "true_value": truth, "model_b_value": value_b,
                    "beta_mean": m, "prompts": p, "reps": reps,
                    "coverage_old": float(covered(old).mean()), "coverage_new": float(covered(new).mean()),
                    "old_outside_range": float(((old["ci_low"] < low - tol) | (old["ci_high"] > high + tol)).mean()),
                    "width_old": float((old["ci_high"] - old["ci_low"]).mean()),
                    "width_new": float((new["ci_high"] - new["ci_low"]).mean()),
                    "new_misses_below": float((new["ci_high"] < truth).mean()),  # the interval lies below the truth
                    "new_misses_above": float((new["ci_low"] > truth).mean()),
                    "old_misses_below": float((old["ci_high"] < truth).mean()),
                    "old_misses_above": float((old["ci_low"] > truth).mean()),
                    "old_zero_width": float((old["ci_high"] - old["ci_low"] <= 0).mean()),
                    "bias_z": float((point.mean() - truth) / (point.std(ddof=1) / math.sqrt(reps)))
                    if point.std() > 0 else 0.0,
                    "truth_precision": precision,
                })
                r = rows[-1]
                print(f"{quantity:<15} {level:>5} {truth:>8.4f} {p:>4}  old {r['coverage_old']:.3f}  "
                      f"new {r['coverage_new']:.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t_start

    mc_se = math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / reps)
    below = [r for r in rows if r["coverage_new"] < 0.93]
    summary = {"min_coverage_new": min(r["coverage_new"] for r in rows),
               "min_coverage_old": min(r["coverage_old"] for r in rows),
               "cells_new_below_0.93": [(r["quantity"], r["level"], r["prompts"], r["coverage_new"]) for r in below],
               "cells_old_below_0.93": sum(r["coverage_old"] < 0.93 for r in rows), "cells": len(rows),
               "monte_carlo_se_at_0.95": mc_se, "max_abs_bias_z": max(abs(r["bias_z"]) for r in rows),
               "max_truth_precision": max(r["truth_precision"] for r in rows), "maj8_fit_error": maj_fit_error,
               "seconds": seconds}

    print(f"nominal {CONFIDENCE:.0%} intervals over prompts, M = {M} samples per prompt, {reps} data sets per cell "
          f"(Monte Carlo SE of a coverage near 0.95: {mc_se:.4f}); per-prompt q ~ Beta(m kappa, (1 - m) kappa), "
          f"kappa = {kappa:g}; old: normal (Wald) mean_ci, new: bounded_mean_ci / paired_difference_ci (MOVER)")
    print(f"diff pass@k: model A - model B on the same prompts, B = A with each prompt's logit lowered by "
          f"{args.shift:g}; the level is A's value, 'true' the difference (B's value in brackets)")
    print(f"{'quantity':<15} {'level':>5} {'true':>16} {'P':>4} {'cov old':>8} {'cov new':>8} {'old outside':>11} "
          f"{'width old':>9} {'width new':>9}")
    for r in rows:
        true = f"{r['true_value']:.4f}" + (f" ({r['model_b_value']:.4f})" if r["model_b_value"] is not None else "")
        flag = " <" if r["coverage_new"] < 0.93 else ""
        print(f"{r['quantity']:<15} {r['level']:>5} {true:>16} {r['prompts']:>4} {r['coverage_old']:>8.3f} "
              f"{r['coverage_new']:>8.3f} {r['old_outside_range']:>11.3f} {r['width_old']:>9.4f} "
              f"{r['width_new']:>9.4f}{flag}")
    print(f"new method: lowest coverage {summary['min_coverage_new']:.3f}, {len(below)} of {len(rows)} cells below "
          f"0.93; old: lowest {summary['min_coverage_old']:.3f}, {summary['cells_old_below_0.93']} cells below 0.93. "
          f"Largest |bias z| of the estimates {summary['max_abs_bias_z']:.2f}; true values to "
          f"{summary['max_truth_precision']:.1e}; {seconds:.0f} s")

    result = {"benchmark": "interval_coverage",
              "command": recorded_command("benchmarks/interval_coverage.py", sys.argv[1:] if argv is None else argv),
              "settings": {"reps": reps, "prompts": ps, "levels": levels, "quantities": quantities, "m": M,
                           "concentration": kappa, "shift": args.shift, "wrong_shares": WRONG_SHARES,
                           "seed": args.seed, "confidence": CONFIDENCE,
                           "old": "normal (Wald): mean_ci", "new": "bounded_mean_ci on [0, 1]; for diff, "
                           "paired_difference_ci (MOVER) of the two models' values in [0, 1]",
                           "range": "[0, 1]; [-1, 1] for diff (old_outside_range)"},
              "machine": machine_info(), "rows": json_safe(rows), "summary": json_safe(summary)}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_csv(out / f"{args.name}.csv", rows)
    print(f"wrote {out.name}/{args.name}.json and .csv")
    return result


if __name__ == "__main__":
    main()

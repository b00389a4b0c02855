"""Benchmark: evaluating best-of-N for N in {1, 2, 4, 8, 16} from one pool against naive per-N sampling.

Pooled: one pool of M = max(N) samples per prompt, every N estimated from it (the unbiased order-statistic
estimates of METHOD §4). Naive: for each N, fresh independent draws of N per prompt, select the best, average.
Both on the same prompts, model and reward, in one run; the table gives samples drawn, wall time (generation +
scoring + estimation) and the half-width of the 95% interval per N, and the ratios naive / pooled.

    python benchmarks/eval_pooling.py                       # tiny-gpt2, 64 prompts, length reward
    python benchmarks/eval_pooling.py --model smollm2-135m-instruct --max-new-tokens 48 --reward length:24:48

Results: benchmarks/results/eval_pooling-MODEL.json and .csv, with the command line and the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-gpt2", help="built-in name, model directory or run directory")
    parser.add_argument("--prompts", default="builtin")
    parser.add_argument("--limit", type=int, default=64, help="number of prompts")
    parser.add_argument("--ns", default="1,2,4,8,16", help="the N to evaluate; the pool has M = max(N)")
    parser.add_argument("--reward", default="length:8:32", help="reward spec (iama.rewards)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per generate call")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable timings on a shared CPU; 0: torch's default)")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the results (default: "
                        "benchmarks/results)")
    parser.add_argument("--name", default=None, help="result file name without extension (default: "
                        "eval_pooling-MODEL-cpu or -gpu)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from iama.data import load_prompts
    from iama.backends import GenerationSettings, make_backend
    from iama.config import parse_model_arg
    from iama.estimate import value_estimates
    from iama.pools import build_rewards, sample_pool
    from iama.stats import mean_ci
    from iama.utils import atomic_write_csv, atomic_write_json, recorded_command, machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    ns = sorted({int(n) for n in args.ns.split(",")})
    m = max(ns)
    spec = parse_model_arg(args.model)
    backend = make_backend(spec.model, args.backend, batch_size=args.batch_size, seed=args.seed)
    criteria = [{"name": "reward", "reward": args.reward, "algorithm": f"bon:{m}", "weight": 1.0}]
    rewards = build_rewards(criteria, backend.tokenizer)
    prompts = load_prompts(args.prompts, limit=args.limit)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    p = len(prompts)
    z = 1.959963984540054

    def draw(n, seed, label):
        records = sample_pool(backend, prompts, criteria, rewards, m=n, settings=settings, seed=seed, label=label,
                              progress=False)
        return np.array([[c["scores"]["reward"] for c in r["candidates"]] for r in records])

    draw(1, args.seed + 999, "warmup")  # first-call overheads out of the timings

    t0 = time.perf_counter()
    pool = draw(m, args.seed, "pooled")
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    pooled = mean_ci(value_estimates(pool, "bon", ns))
    t_estimate = time.perf_counter() - t0

    rows = []
    for j, n in enumerate(ns):
        t0 = time.perf_counter()
        naive_r = draw(n, args.seed + 1000 + n, f"naive-{n}")
        naive = mean_ci(naive_r.max(axis=1)[:, None])
        t_naive = time.perf_counter() - t0
        diff = pooled["mean"][j] - naive["mean"][0]
        se = math.hypot(pooled["se"][j], naive["se"][0])
        rows.append({
            "n": n, "samples_pooled": p * m, "samples_naive": p * n,
            "value_pooled": float(pooled["mean"][j]), "value_naive": float(naive["mean"][0]),
            "ci_halfwidth_pooled": float(z * pooled["se"][j]), "ci_halfwidth_naive": float(z * naive["se"][0]),
            "ci_width_ratio_naive_over_pooled": float(naive["se"][0] / pooled["se"][j]) if pooled["se"][j] > 0
            else None,
            "z_difference": float(diff / se) if se > 0 else 0.0,
            # naive samples at this N that would give the pooled interval's width (width ~ 1 / sqrt(samples))
            "samples_naive_for_pooled_ci": float(p * n * (naive["se"][0] / pooled["se"][j]) ** 2)
            if pooled["se"][j] > 0 else None,
            "seconds_naive": t_naive,
        })
    samples_naive = sum(r["samples_naive"] for r in rows)
    seconds_naive = sum(r["seconds_naive"] for r in rows)
    seconds_pooled = t_sample + t_estimate
    summary = {
        "samples_pooled": p * m, "samples_naive": samples_naive,
        "samples_ratio_naive_over_pooled": samples_naive / (p * m),
        "seconds_pooled": seconds_pooled, "seconds_pooled_sampling": t_sample, "seconds_pooled_estimation": t_estimate,
        "seconds_naive": seconds_naive, "seconds_ratio_naive_over_pooled": seconds_naive / seconds_pooled,
        "mean_ci_width_ratio_naive_over_pooled": float(np.mean(
            [r["ci_width_ratio_naive_over_pooled"] for r in rows if r["ci_width_ratio_naive_over_pooled"]])),
        "max_abs_z_difference": max(abs(r["z_difference"]) for r in rows),
        "samples_naive_for_pooled_ci": float(sum(r["samples_naive_for_pooled_ci"] or 0 for r in rows)),
    }
    summary["samples_ratio_at_matched_ci"] = summary["samples_naive_for_pooled_ci"] / (p * m)

    header = f"{'N':>3} {'samples pooled':>14} {'naive':>6} {'value pooled':>13} {'naive':>9} " \
             f"{'CI+- pooled':>11} {'naive':>8} {'width ratio':>11} {'z':>6} {'naive s':>8}"
    print(f"model {spec.label}, {p} prompts, reward {args.reward}, M = {m}; pooled: one pool for every N "
          f"({t_sample:.1f} s sampling + {t_estimate * 1000:.1f} ms estimation)")
    print(header)
    for r in rows:
        print(f"{r['n']:>3} {r['samples_pooled']:>14} {r['samples_naive']:>6} {r['value_pooled']:>13.4f} "
              f"{r['value_naive']:>9.4f} {r['ci_halfwidth_pooled']:>11.4f} {r['ci_halfwidth_naive']:>8.4f} "
              f"{r['ci_width_ratio_naive_over_pooled'] or float('nan'):>11.2f} {r['z_difference']:>6.2f} "
              f"{r['seconds_naive']:>8.2f}")
    print(f"total samples: naive {samples_naive} / pooled {p * m} = {summary['samples_ratio_naive_over_pooled']:.2f}x; "
          f"wall time: naive {seconds_naive:.1f} s / pooled {seconds_pooled:.1f} s = "
          f"{summary['seconds_ratio_naive_over_pooled']:.2f}x; CI width naive / pooled: mean "
          f"{summary['mean_ci_width_ratio_naive_over_pooled']:.2f}x; largest |z| of pooled - naive "
          f"{summary['max_abs_z_difference']:.2f}")
    print(f"naive sampling would need {summary['samples_naive_for_pooled_ci']:.0f} samples "
          f"({summary['samples_ratio_at_matched_ci']:.1f}x the pool) for the pooled intervals' widths at every N")

    result = {"benchmark": "eval_pooling",
              "command": recorded_command("benchmarks/eval_pooling.py", sys.argv[1:] if argv is None else argv),
              "settings": {"model": args.model, "prompts": args.prompts, "num_prompts": p, "ns": ns, "m": m,
                           "reward": args.reward, "max_new_tokens": args.max_new_tokens,
                           "temperature": args.temperature, "batch_size": args.batch_size, "backend": args.backend,
                           "seed": args.seed, "confidence": 0.95, "ci": "normal, mean +- 1.96 SE over prompts"},
              "machine": machine_info(), "rows": rows, "summary": summary}
    out = Path(args.out)
    name = args.name or f"eval_pooling-{spec.label}-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    atomic_write_json(out / f"{name}.json", result)
    atomic_write_csv(out / f"{name}.csv", rows)
    print(f"wrote {out.name}/{name}.json and .csv")
    return result


if __name__ == "__main__":
    main()

"""The vote-counting estimator of maj@N (iama.algorithms.MajorityVote): time per group of `estimate` (first-variation
estimates and leave-one-out baselines, what training calls every step) and `estimate_value` (what evaluation and
the training logs call), for groups of M = 8 to 64 samples with 2, 4, M/2 or M distinct answers, N = 4 and 8.
The dense surrogate's estimate (MajorityVoteDense, no counting) is timed beside them for scale.

Each group has the right answer on its first answer's samples (reward 1, else 0) and the M samples spread as
evenly as they go over the distinct answers (M = 8, 2 answers: 4 and 4). Counting costs grow with the number of
distinct answers, not with the number of subsets, so this is the axis to watch.

    python benchmarks/majority_estimator.py --out benchmarks/results/majority_estimator-cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.algorithms import MajorityVote, MajorityVoteDense
from iama.utils import atomic_write_json, machine_info


def groups(g, m, distinct, seed=0):
    """(rewards (g, m), answers (g, m)): each group's m samples spread over `distinct` answers, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(np.arange(m) % distinct) for _ in range(g)])
    return (labels == 0).astype(float), [[f"answer {x}" for x in row] for row in labels]


def per_group_ms(fn, rewards, answers, min_seconds, repeats) -> float:
    """The median over `repeats` timings of one call on all the groups, each repeated until it took min_seconds,
    divided by the number of groups, in milliseconds."""
    times = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn(rewards, answers=answers)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        times.append(elapsed / calls)
    return 1000 * statistics.median(times) / len(rewards)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=4, help="groups per call (the estimators loop over groups)")
    ap.add_argument("--min-seconds", type=float, default=0.2, help="time each measurement at least this long")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()

    rows, load_before = [], os.getloadavg()
    print(f"{'M':>3} {'N':>2} {'answers':>7} | {'estimate ms':>11} {'estimate_value ms':>17} {'dense ms':>8}")
    for m in (8, 16, 32, 64):
        for n in (4, 8):
            for distinct in sorted({2, 4, m // 2, m}):
                r, a = groups(args.groups, m, distinct)
                row = {"M": m, "N": n, "distinct_answers": distinct}
                for name, fn in (("estimate", MajorityVote(n).estimate),
                                 ("estimate_value", MajorityVote(n).estimate_value),
                                 ("dense_estimate", MajorityVoteDense(n).estimate)):
                    row[f"{name}_ms_per_group"] = per_group_ms(fn, r, a, args.min_seconds, args.repeats)
                rows.append(row)
                print(f"{m:>3} {n:>2} {distinct:>7} | {row['estimate_ms_per_group']:>11.3f} "
                      f"{row['estimate_value_ms_per_group']:>17.3f} {row['dense_estimate_ms_per_group']:>8.3f}",
                      flush=True)
    if args.out:
        command = "python benchmarks/majority_estimator.py " + " ".join(sys.argv[1:])
        atomic_write_json(args.out, {"command": command.strip(), "machine": machine_info(),
                                     "load_average_before_after": [load_before[0], os.getloadavg()[0]],
                                     "groups_per_call": args.groups, "min_seconds": args.min_seconds,
                                     "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()

"""InfAlign-CTRL against the raw reward, on a best-of-N task and a worst-of-N task.

For each task: calibrate the reward once against K samples per prompt of the reference model; then train, at
several beta each, KL-regularised RL on (a) the raw reward, (b) the calibrated reward, (c) the calibrated reward
transformed for the decoding procedure (exp(t u) for best-of-N, -exp(-t u) for worst-of-N, t from the 1-D
planner at KL 0.5); evaluate each policy's inference-time win rate against the reference under the task's
algorithm from pools (`iama eval`), and its KL to the reference; plot win rate against KL.

    python experiments/ctrl.py                                   # SmolLM2-135M-Instruct: about 1.5 hours on 2 CPU cores
    python experiments/ctrl.py --model tiny-gpt2 --steps 20      # the pipeline in a few minutes

KL is the sequence-level KL(policy || reference) on the held-out prompts, estimated by `iama eval` from each
policy's own pool (iama.kl: log-likelihoods of its samples under both models). The table also gives the training
KL (TRL's per-token k3 over the last quarter of training times the mean length) for comparison.
Every stage resumes: a killed run continues where it stopped. Writes OUT/ctrl.json, OUT/ctrl.md, OUT/ctrl.png.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.algorithms import parse_algorithm  # noqa: E402
from iama.config import load_config  # noqa: E402
from iama.ctrl import calibrate, plan  # noqa: E402
from iama.evaluate import evaluate  # noqa: E402
from iama.trainer import train  # noqa: E402
from iama.utils import atomic_write_json, atomic_write_text, save_figure  # noqa: E402

TASKS = {  # reward, decoding procedure, the transform family that suits it
    "sentiment": ("sentiment", "bon:4", "exp"),
    "harmlessness": ("harmlessness", "won:4", "negexp"),
}
BETAS = {"raw": [0.02, 0.1], "identity": [0.02, 0.1], "transformed": [0.5, 2.0]}  # transformed: x 0.3 e^t


def train_kl(run_dir: Path) -> float:
    """Training KL: TRL's per-token k3 estimate over the last quarter of training, times the mean length."""
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("kl")]
    tail = rows[-max(1, len(rows) // 4):]
    return float(np.mean([float(r["kl"]) * float(r["completions/mean_length"]) for r in tail]))


def base_config(task, variant, beta, args, out: Path):
    reward, algorithm, _ = TASKS[task]
    criterion = {"name": task, "reward": reward, "algorithm": "sampling"}
    if variant != "raw":
        criterion.update(calibrated=True, transform=variant)
    overrides = dict(
        model=args.model, prompts=args.prompts, max_prompts=args.train_prompts, criteria=[criterion],
        calibration=str(out / task / "calibration.json"), baseline="group_mean", scale_rewards="none",
        num_generations=8, beta=beta, max_steps=args.steps, seed=0, output_dir=str(out / task / "runs"),
        learning_rate=args.learning_rate, per_device_train_batch_size=16,
        max_completion_length=args.max_completion_length, report_to="none",
    )
    return load_config(None, **overrides)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--tasks", default="sentiment,harmlessness")
    ap.add_argument("--train-prompts", type=int, default=32)
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=16, help="reference samples per prompt for calibration")
    ap.add_argument("-M", "--m", type=int, default=8, help="samples per prompt in the evaluation pools")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--kl-budget", type=float, default=0.5, help="KL the planner picks t for")
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--out", default="results/ctrl")
    args = ap.parse_args()
    out = Path(args.out)
    table = []
    for task in args.tasks.split(","):
        reward, algorithm, family = TASKS[task]
        planned = plan(parse_algorithm(algorithm), args.kl_budget, family=family)
        t = float(planned["best_t"])
        transform = f"{family}:{t:.3g}"
        print(f"== {task}: {algorithm}, planner picks {transform} at KL {args.kl_budget}", flush=True)
        calib_cfg = base_config(task, "identity", 0.1, args, out)
        calibrate(calib_cfg, k=args.k)
        runs = {}
        for variant, betas in BETAS.items():
            name = {"raw": "raw", "identity": "identity", "transformed": transform}[variant]
            for b in betas:
                beta = b * 0.3 * math.exp(t) if variant == "transformed" else b
                cfg = base_config(task, name, beta, args, out)
                cfg.output_dir = str(out / task / "runs" / f"{variant}-beta{beta:.3g}")
                print(f"-- training {variant} ({name}) beta={beta:.3g}", flush=True)
                runs[(variant, beta)] = Path(train(cfg))
        labels = {f"{v}-beta{b:.3g}": d for (v, b), d in runs.items()}
        report = evaluate([f"reference={args.model}", *(f"{k}={v}" for k, v in labels.items())],
                          config=_eval_config(task, out), reference="reference",
                          prompts=args.prompts, limit=args.eval_prompts, offset=args.train_prompts, m=args.m,
                          out=out / task / "eval", kl=True, command="python experiments/ctrl.py")
        alg = parse_algorithm(algorithm)
        for (variant, beta), run_dir in runs.items():
            curve = report["win_rates"][f"{variant}-beta{beta:.3g}"][task][alg.family]
            i = curve["n"].index(alg.n)
            kl = report["kl"]["models"][f"{variant}-beta{beta:.3g}"]
            table.append(dict(task=task, algorithm=algorithm, variant=variant,
                              transform={"raw": "raw reward", "identity": "calibrated", "transformed": transform}[variant],
                              beta=beta, kl=kl["mean"], kl_ci_low=kl["ci_low"], kl_ci_high=kl["ci_high"],
                              train_kl=train_kl(run_dir.parent), win_rate=curve["mean"][i],
                              ci_low=curve["ci_low"][i], ci_high=curve["ci_high"][i]))
    write(table, out, args)


def _eval_config(task, out: Path) -> Path:
    """A config with the task's raw reward as the one criterion: every policy is judged on the raw reward."""
    reward, algorithm, _ = TASKS[task]
    path = out / task / "eval-criteria.yaml"
    atomic_write_text(path, f"criteria:\n  - {{name: {task}, reward: {reward}, algorithm: \"{algorithm}\"}}\n")
    return path


def write(table, out: Path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_json(out / "ctrl.json", {"command": "python " + " ".join(sys.argv), "args": vars(args), "rows": table})
    lines = ["# InfAlign-CTRL: inference-time win rate against KL", "",
             f"`python {' '.join(sys.argv)}`", "",
             "| task | decoding | reward | beta | KL (95% CI) | training KL | win rate vs reference (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['transform']} | {r['beta']:.3g} | {r['kl']:.3f} "
                     f"({r['kl_ci_low']:.3f} to {r['kl_ci_high']:.3f}) | {r['train_kl']:.3f} | "
                     f"{r['win_rate']:.3f} ({r['ci_low']:.3f} to {r['ci_high']:.3f}) |")
    atomic_write_text(out / "ctrl.md", "\n".join(lines) + "\n")
    tasks = sorted({r["task"] for r in table})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, color in [("raw", "tab:gray"), ("identity", "tab:blue"), ("transformed", "tab:red")]:
            rows = sorted((r for r in table if r["task"] == task and r["variant"] == variant), key=lambda r: r["kl"])
            if rows:
                ax.errorbar([r["kl"] for r in rows], [r["win_rate"] for r in rows],
                            xerr=[[r["kl"] - r["kl_ci_low"] for r in rows], [r["kl_ci_high"] - r["kl"] for r in rows]],
                            yerr=[[r["win_rate"] - r["ci_low"] for r in rows], [r["ci_high"] - r["win_rate"] for r in rows]],
                            marker="o", color=color, capsize=3, label=rows[0]["transform"])
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set(title=f"{task} ({rows[0]['algorithm'] if rows else ''})", xlabel="KL to the reference (sequence)",
               ylabel="inference-time win rate vs reference")
        ax.legend()
    save_figure(fig, out / "ctrl.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

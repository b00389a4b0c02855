"""Where a training step's time goes: generation, rewards, log-probs, advantages, loss forward, backward, optimizer.

Each variant is a config plus overrides (`label=override;override`); it trains `--steps` real steps through
`trainer.train()` with one thread (as `iama demo` runs each of its two trainings) and every stage timed by
wrapping the trainer's own methods, exclusive of the stages nested inside. The first step warms up and is left
out. Variants run one after the other in one process, so their ratios are measured side by side.

    python benchmarks/step_breakdown.py                               # the demo's IAMA run as configured
    python benchmarks/step_breakdown.py --variant before= \\
        --variant "32tok=max_completion_length=32;lora=true" --out benchmarks/results/step_breakdown.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.config import load_config  # noqa: E402
from iama.trainer import build_trainer  # noqa: E402
from iama.utils import atomic_write_json, machine_info  # noqa: E402

STAGES = ["generation", "rewards", "log-probs (scoring)", "advantages", "scoring, other", "loss forward",
          "backward", "optimizer", "other"]


class Timer(TrainerCallback):
    """Exclusive time per stage and step: a wrapped call's time minus the wrapped calls inside it."""

    def __init__(self):
        self.steps, self.current, self.stack = [], defaultdict(float), []

    def wrap(self, obj, name, stage):
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            label = stage() if callable(stage) else stage
            self.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                nested = self.stack.pop()
                self.current[label] += elapsed - nested
                if self.stack:
                    self.stack[-1] += elapsed

        setattr(obj, name, timed)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current, self.t0 = defaultdict(float), time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.t_opt = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.current["optimizer"] += time.perf_counter() - self.t_opt

    def on_step_end(self, args, state, control, **kwargs):
        total = time.perf_counter() - self.t0
        self.current["other"] = total - sum(self.current.values())
        self.steps.append({"total": total, **self.current})


def measure(config, overrides, steps):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"max_steps={steps}", f"output_dir={tmp}/run", "save_steps=100000",
                                   "report_to=none", "resume=false"])
        trainer, _ = build_trainer(cfg)
        timer = Timer()
        scoring = []  # log-probs are computed while scoring (old/ref) and in the loss: tell them apart

        def in_scoring():
            return "log-probs (scoring)" if scoring else "loss forward"

        orig_score = trainer._generate_and_score_completions

        def score(*a, **k):
            scoring.append(1)
            try:
                return orig_score(*a, **k)
            finally:
                scoring.pop()

        trainer._generate_and_score_completions = score
        timer.wrap(trainer, "_generate_and_score_completions", "scoring, other")
        timer.wrap(trainer, "_generate", "generation")
        timer.wrap(trainer, "_calculate_rewards", "rewards")
        timer.wrap(trainer, "iama_estimates", "advantages")
        timer.wrap(trainer, "_get_per_token_logps_and_entropies", in_scoring)
        timer.wrap(trainer, "compute_loss", "loss forward")
        timer.wrap(trainer.accelerator, "backward", "backward")
        trainer.add_callback(timer)
        trainer.args.logging_steps = 1
        trainer.train()
        tokens = [float(h["completions/mean_length"]) for h in trainer.state.log_history
                  if "completions/mean_length" in h]
    rows = timer.steps[1:]  # the first step warms up
    median = {s: statistics.median(r.get(s, 0.0) for r in rows) for s in ["total", *STAGES]}
    return {"config": str(config), "overrides": overrides,
            "completions_per_step": trainer.args.per_device_train_batch_size, "group_size": cfg.num_generations,
            "max_completion_length": trainer.args.max_completion_length,
            "mean_completion_tokens": statistics.mean(tokens[1:]) if len(tokens) > 1 else None,
            "median_s": median, "raw": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "iama" / "configs" / "length.yaml"))
    ap.add_argument("--variant", action="append", default=None,
                    help="LABEL=override;override (config fields); repeat to compare")
    ap.add_argument("--steps", type=int, default=6, help="steps per variant, the first one left out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_breakdown.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = {}
    for v in args.variant or ["as configured="]:
        label, _, rest = v.partition("=")
        variants[label] = [o for o in rest.split(";") if o]
    results = {label: measure(args.config, overrides, args.steps) for label, overrides in variants.items()}

    labels = list(results)
    width = max(12, *(len(x) + 2 for x in labels))
    print(f"{args.config}, {args.threads} thread(s), median of {args.steps - 1} steps (s)")
    print(f"{'stage':<22}" + "".join(f"{x:>{width}}" for x in labels))
    for stage in ["total", *STAGES]:
        print(f"{stage:<22}" + "".join(f"{results[x]['median_s'][stage]:>{width}.2f}" for x in labels))
    print(f"{'completion tokens':<22}" + "".join(f"{results[x]['mean_completion_tokens'] or 0:>{width}.1f}"
                                                   for x in labels))
    base = results[labels[0]]["median_s"]["total"]
    print(f"{'step time / first':<22}" + "".join(f"{results[x]['median_s']['total'] / base:>{width}.2f}"
                                                   for x in labels))
    atomic_write_json(args.out, {"command": " ".join(["python"] + sys.argv), "machine": machine_info(),
                                 "threads": args.threads, "steps": args.steps, "variants": results})


if __name__ == "__main__":
    main()

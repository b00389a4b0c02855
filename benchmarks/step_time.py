"""Step time of non-linear GRPO (IAMA) against GRPO on the same model and the same batch, side by side.

Both trainers load the same weights and are seeded identically before each step, so they generate the same
completions; what differs is only how rewards become advantages. A step here is generation + rewards +
advantages + loss forward/backward (the optimiser update is the same for both and left out). Steps alternate
IAMA / GRPO so that drift in machine load hits both alike.

    python benchmarks/step_time.py                                  # tiny-gpt2, a few seconds
    python benchmarks/step_time.py --model smollm2-135m-instruct --reps 5 --completion-length 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.config import load_config  # noqa: E402
from iama.trainer import build_trainer  # noqa: E402
from iama.utils import atomic_write_json, machine_info  # noqa: E402


def one_step(trainer, batch, seed):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = trainer._generate_and_score_completions(batch)
    t1 = time.perf_counter()
    trainer.iama_estimates(trainer._gathered_rewards, trainer.num_generations)  # the part that is ours, again
    t2 = time.perf_counter()
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"step": (t1 - t0) + (t3 - t2), "advantages": t2 - t1, "lengths": out["completion_mask"].sum().item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-gpt2")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--completion-length", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64, help="completions per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (M)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_time.json"))
    args = ap.parse_args()

    common = [f"model={args.model}", f"num_generations={args.group}", f"per_device_train_batch_size={args.batch}",
              f"max_completion_length={args.completion_length}", "output_dir=/tmp/iama-bench", "report_to=none"]
    iama_cfg = load_config(ROOT / "iama" / "configs" / "length-tiny.yaml", common)
    grpo_cfg = load_config(ROOT / "iama" / "configs" / "length-tiny-baseline.yaml", common)
    trainers = {"iama": build_trainer(iama_cfg)[0], "grpo": build_trainer(grpo_cfg)[0]}
    for t in trainers.values():
        t.model.train()
    batch = next(iter(trainers["iama"].get_train_dataloader()))
    for t in trainers.values():
        t.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the loss reads it
    times = {k: [] for k in trainers}
    for rep in range(args.reps + 1):  # the first round warms up
        for name, trainer in trainers.items():
            r = one_step(trainer, batch, seed=1000 + rep)
            if rep:
                times[name].append(r)
    same = all(a["lengths"] == b["lengths"] for a, b in zip(times["iama"], times["grpo"]))

    med = {k: statistics.median(r["step"] for r in v) for k, v in times.items()}
    adv = {k: statistics.median(r["advantages"] for r in v) for k, v in times.items()}
    ratio = med["iama"] / med["grpo"]
    print(f"model {args.model}, {args.batch} completions ({args.batch // args.group} prompts x {args.group}), "
          f"{args.completion_length} tokens, {args.reps} steps each, identical completions: {same}")
    print(f"{'trainer':<8}{'step (s, median)':>18}{'advantages (ms)':>18}")
    for k in trainers:
        print(f"{k:<8}{med[k]:>18.3f}{adv[k] * 1e3:>18.2f}")
    print(f"step time ratio iama / grpo: {ratio:.3f}")
    atomic_write_json(args.out, {
        "command": " ".join(["python"] + sys.argv), "machine": machine_info(), "model": args.model,
        "completions_per_step": args.batch, "group_size": args.group, "completion_length": args.completion_length,
        "identical_completions": same, "median_step_s": med, "median_advantages_s": adv, "ratio": ratio,
        "raw": times,
    })


if __name__ == "__main__":
    main()

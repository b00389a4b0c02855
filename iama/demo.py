"""The main job: GRPO and IAMA on the length task, evaluated the way the models are decoded.

1. train configs/length-baseline.yaml (GRPO on the mean reward) and configs/length.yaml (IAMA, best-of-4 for a
   short and a long target; both ship in the package, iama/configs/) on SmolLM2-135M-Instruct, offline;
2. draw one pool of M samples per held-out prompt from the untrained model and from both trained ones;
3. report every criterion's value under best-of-N for every N <= M, the best-of-4 objective with intervals,
   the effective N of IAMA against GRPO, Pareto fronts and length histograms (OUT/report.md and plots).

On a CPU with two or more cores the two runs train side by side, each on half the cores (OUT/runs/LABEL.log
holds their output; iama.runs): torch gains little from a second thread on matrices this small, so this is
faster than one run after the other. Each stage resumes: a killed demo run again continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import SHIPPED, config_name, resolve_config

CONFIGS = SHIPPED  # the package's configs/, in a checkout and after pip install alike


def _command(out, configs, model, steps, seed, eval_prompts, m) -> str:
    """The `iama demo` call that reproduces this run, for the report's "Made by" line."""
    flags = {"--configs": None if resolve_config(configs).resolve() == CONFIGS else configs, "--model": model,
             "--steps": steps, "--seed": seed, "--eval-prompts": None if eval_prompts == 64 else eval_prompts,
             "-M": None if m == 8 else m}
    return " ".join(["iama demo", *(f"{k} {v}" for k, v in flags.items() if v is not None), "--out", str(out)])


def run_demo(out="results/demo", configs=CONFIGS, model=None, steps=None, seed=None, eval_prompts=64, m=8,
             progress=True, parallel=None) -> dict:
    """`parallel`: train both runs side by side (default: on a CPU with two or more cores)."""
    import torch

    from .config import load_config
    from .data import collect_prompts
    from .evaluate import evaluate
    from .report import effective_statements
    from .runs import cpu_cores, train_side_by_side
    from .trainer import completed, train
    from .utils import check_output_dir

    started = time.perf_counter()
    # the folder as the report names it, without this machine's path: `configs` for the shipped one (that name
    # resolves to it, as configs/length.yaml does in `iama train`), else relative to the working directory
    out, configs = Path(out), Path(config_name(resolve_config(configs or CONFIGS)))
    # everything that can be wrong with the request, before anything trains
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if eval_prompts < 1:
        raise ValueError(f"--eval-prompts must be at least 1, got {eval_prompts}")
    check_output_dir(out, "--out")
    overrides = [f"model={model}"] if model else []
    overrides += [f"max_steps={steps}"] if steps is not None else []
    overrides += [f"seed={seed}"] if seed is not None else []
    jobs = {}
    for label, name in [("grpo", "length-baseline.yaml"), ("iama", "length.yaml")]:
        args = [str(configs / name), *overrides, f"output_dir={out / 'runs' / label}"]
        jobs[label] = (args, load_config(args[0], args[1:]))
    evaluated = jobs["iama"][1]  # the evaluation's criteria, and the prompts after those trained on
    need = max(c.algorithm.n or 1 for c in evaluated.criteria)
    if m < need:
        raise ValueError(f"-M {m} samples per prompt cannot estimate N={need} of the criteria; use -M >= {need}")
    collect_prompts(source=evaluated.prompts, column=evaluated.prompt_column, split=evaluated.prompt_split,
                    limit=eval_prompts, offset=evaluated.max_prompts or 0)
    runs = {label: completed(cfg) for label, (_, cfg) in jobs.items()}
    todo = {label: job for label, job in jobs.items() if runs[label] is None}
    cores = cpu_cores()
    if parallel is None:
        parallel = cores >= 2 and not torch.cuda.is_available()
    if parallel and len(todo) > 1:
        runs.update(train_side_by_side(todo, threads=max(1, cores // len(todo)), progress=progress))
    else:
        for label, (args, cfg) in todo.items():
            print(f"== training {label}: {args[0]} ==", flush=True)
            runs[label] = train(cfg)
    trained = time.perf_counter()
    cfg = jobs["iama"][1]
    trained_on = cfg.max_prompts or 0
    print(f"== evaluating on {eval_prompts} held-out prompts, M = {m} samples each ==", flush=True)
    report = evaluate(
        [f"untrained={cfg.model}", f"grpo={runs['grpo']}", f"iama={runs['iama']}"],
        config=configs / "length.yaml", reference="grpo", prompts=cfg.prompts, prompt_column=cfg.prompt_column,
        limit=eval_prompts, offset=trained_on, m=m, out=out, progress=progress,
        dtype="bfloat16" if cfg.trl.get("bf16") and not torch.cuda.is_available() else None,
        command=_command(out, configs, model, steps, seed, eval_prompts, m),
    )
    for line in effective_statements(report):
        print(line)
    _write_timing(out, started, trained, todo, cores, parallel)
    print(f"report: {out / 'report.md'}")
    return report


def _write_timing(out: Path, started: float, trained: float, trained_now: dict, cores: int, parallel: bool) -> None:
    """OUT/timing.json: this call's wall time by stage, with the machine (runs or pools reused cost nothing)."""
    from .utils import atomic_write_json, machine_info

    now = time.perf_counter()
    timing = {"total_s": now - started, "training_s": trained - started, "evaluating_s": now - trained,
              "trained_now": sorted(trained_now), "side_by_side": bool(parallel and len(trained_now) > 1),
              "cores": cores, "machine": machine_info()}
    atomic_write_json(out / "timing.json", timing)
    print(f"== {timing['total_s'] / 60:.1f} minutes: training {timing['training_s'] / 60:.1f}, "
          f"evaluating {timing['evaluating_s'] / 60:.1f} ({out / 'timing.json'}) ==", flush=True)

"""The main job: GRPO and IAMA on the length task, evaluated the way the models are decoded.

1. train configs/length-baseline.yaml (GRPO on the mean reward) and configs/length.yaml (IAMA, best-of-4 for a
   short and a long target) on SmolLM2-135M-Instruct, offline;
2. draw one pool of M samples per held-out prompt from the untrained model and from both trained ones;
3. report every criterion's value under best-of-N for every N <= M, the best-of-4 objective with intervals,
   the effective N of IAMA against GRPO, Pareto fronts and length histograms (OUT/report.md and plots).

Each stage resumes: a killed demo run again continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _command(out, configs, model, steps, seed, eval_prompts, m) -> str:
    """The `iama demo` call that reproduces this run, for the report's "Made by" line."""
    flags = {"--configs": None if Path(configs) == CONFIGS else configs, "--model": model, "--steps": steps,
             "--seed": seed, "--eval-prompts": None if eval_prompts == 64 else eval_prompts,
             "-M": None if m == 8 else m}
    return " ".join(["iama demo", *(f"{k} {v}" for k, v in flags.items() if v is not None), "--out", str(out)])


def run_demo(out="results/demo", configs=CONFIGS, model=None, steps=None, seed=None, eval_prompts=64, m=8,
             progress=True) -> dict:
    from .config import load_config
    from .evaluate import evaluate
    from .report import effective_statements
    from .trainer import train

    out, configs = Path(out), Path(configs or CONFIGS)
    overrides = [f"model={model}"] if model else []
    overrides += [f"max_steps={steps}"] if steps else []
    overrides += [f"seed={seed}"] if seed is not None else []
    runs = {}
    for label, name in [("grpo", "length-baseline.yaml"), ("iama", "length.yaml")]:
        cfg = load_config(configs / name, [*overrides, f"output_dir={out / 'runs' / label}"])
        print(f"== training {label}: {configs / name} ==", flush=True)
        runs[label] = train(cfg)
    trained_on = cfg.max_prompts or 0
    print(f"== evaluating on {eval_prompts} held-out prompts, M = {m} samples each ==", flush=True)
    report = evaluate(
        [f"untrained={cfg.model}", f"grpo={runs['grpo']}", f"iama={runs['iama']}"],
        config=configs / "length.yaml", reference="grpo", prompts=cfg.prompts, prompt_column=cfg.prompt_column,
        limit=eval_prompts, offset=trained_on, m=m, out=out, progress=progress,
        command=_command(out, configs, model, steps, seed, eval_prompts, m),
    )
    for line in effective_statements(report):
        print(line)
    print(f"report: {out / 'report.md'}")
    return report

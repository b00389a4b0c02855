"""`iama <verb>`: train, eval, decode, calibrate, ctrl-plan, lab, demo, sweep.

Bad input, or an output path the system refuses, ends with one line `iama: error: ...` and exit code 2 (set
IAMA_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import os
import sys


def _train(args):
    import shlex

    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, command="iama " + shlex.join(args.argv))


def _calibrate(args):
    from .config import load_config
    from .ctrl import calibrate

    store = calibrate(load_config(args.config, args.overrides), k=args.k, batch_size=args.batch_size,
                      seed=args.seed)
    print(f"calibration store: {store.path}")


def _decode(a):
    import json

    from .data import collect_prompts
    from .decode import decode

    prompts = collect_prompts(a.prompt, a.prompts, column=a.prompt_column, split=a.prompt_split, limit=a.limit,
                              offset=a.offset)
    records = decode(prompts, a.model, a.reward or None, algorithm=a.algorithm, select_by=a.select_by,
                     config=a.config, label=a.label, out=a.out, max_new_tokens=a.max_new_tokens,
                     temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed, backend=a.backend,
                     batch_size=a.batch_size, dtype=a.dtype, device=a.device, progress=a.progress)
    if a.out is None:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))


def _eval(a):
    import shlex
    from dataclasses import fields

    from .evaluate import EvalSettings, evaluate
    from .report import effective_statements
    from .utils import check_bootstrap

    settings = EvalSettings(**{f.name: getattr(a, f.name) for f in fields(EvalSettings)})
    if 0 < a.confidence < 1:  # else evaluate says what is wrong with it
        check_bootstrap(a.bootstrap, a.confidence)
    report = evaluate(a.models, pools=a.pool, config=a.config, reference=a.reference,
                      algorithms=[x for x in (a.algorithms or "").split(",") if x], settings=settings,
                      command="iama " + shlex.join(sys.argv[1:]))
    for line in effective_statements(report):
        print(line)
    print(f"report: {a.out}/report.md")


def _settings_args(p, names=None, **defaults):
    """Options from EvalSettings' fields (type, default and help from the dataclass); `defaults` replace some."""
    from dataclasses import fields

    from .evaluate import EvalSettings

    for f in fields(EvalSettings):
        if names is not None and f.name not in names:
            continue
        meta = f.metadata
        flags = meta.get("flags") or ("--" + f.name.replace("_", "-"),)
        default = defaults.get(f.name, f.default)
        if f.type == "bool":
            p.add_argument(*flags, dest=f.name, action="store_false" if default else "store_true", help=meta["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type.split(" |")[0]]
            p.add_argument(*flags, dest=f.name, type=kind, default=default, choices=meta.get("choices"),
                           help=meta["help"])


GENERATION = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "backend", "batch_size", "dtype", "device",
              "progress")


def _demo(a):
    from .demo import run_demo

    run_demo(a.out, configs=a.configs, model=a.model, steps=a.steps, seed=a.seed, eval_prompts=a.eval_prompts, m=a.m)


def _sweep(a):
    import shlex

    from .sweep import run_sweep

    run_sweep(a.config, a.overrides, weights=a.weights, methods=a.methods, jobs=a.jobs, out=a.out, model=a.model,
              steps=a.steps, eval_prompts=a.eval_prompts, m=a.m, bootstrap=a.bootstrap, progress=not a.quiet,
              command="iama " + shlex.join(a.argv), seeds=a.seeds, primary_n=a.primary_n, eval_offset=a.eval_offset)


def _lab(args):
    from .lab import run_lab

    run_lab(args.experiment, args.out, quick=args.quick)


def _ctrl_plan(args):
    from .ctrl import ctrl_plan, plan_summary

    lines, warning = plan_summary(ctrl_plan(args.algorithm, args.kl, args.out, family=args.family))
    print("\n".join(lines))
    if warning:
        print(f"iama: warning: {warning}", file=sys.stderr)
    print(f"plan: {args.out}/ctrl_plan.json, plot: {args.out}/ctrl_plan.png")




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iama", description="Inference-aware alignment of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="non-linear GRPO (or GRPO, or CTRL) from a YAML config")
    p.add_argument("config", help="YAML config: a file, or a shipped one by name (configs/length.yaml, length)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key, e.g. max_steps=10 "
                   "criteria.0.weight=0.3 learning_rate=1e-4")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="values under best/worst-of-N for every N <= M from one pool per model; report")
    p.add_argument("models", nargs="*", metavar="MODEL_OR_RUN",
                   help="run dirs, model dirs, built-ins, hub ids; LABEL=PATH names one")
    p.add_argument("--pool", action="append", default=[], metavar="JSONL", help="saved pools or `iama decode` output")
    p.add_argument("--config", default=None, help="YAML or run dir with the criteria (default: the first run's)")
    p.add_argument("--reference", default=None, help="label of the reference model (default: the first)")
    p.add_argument("--algorithms", default=None, help="extra families, comma-separated: bon,won,soft_bon:0.1,maj")
    _settings_args(p)
    p.set_defaults(run=_eval)

    p = sub.add_parser("decode", help="N candidates per prompt, scored and selected (bon/won/soft_bon/maj); JSONL out")
    p.add_argument("model", help="run dir (uses OUTPUT/final and its criteria), model dir, built-in or hub id")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, metavar="SOURCE", help="'builtin', a .jsonl/.json/.csv/.txt file or hf:NAME")
    _settings_args(p, ["prompt_column", "prompt_split", "limit", "offset"], limit=None)
    p.add_argument("--algorithm", default="bon:4", help="sampling, bon:N, won:N, soft_bon:N:TAU or maj:N (majority vote on answers)")
    p.add_argument("--reward", action="append", default=[], metavar="NAME=SPEC",
                   help="default: the run's (or --config's) criteria")
    p.add_argument("--config", default=None, help="YAML or run dir with criteria and generation settings")
    p.add_argument("--select-by", default=None, help="criterion to select by (default: the first)")
    p.add_argument("--out", default=None, help="JSONL file (default: JSONL on stdout)")
    p.add_argument("--label", default=None)
    _settings_args(p, GENERATION)
    p.set_defaults(run=_decode)

    p = sub.add_parser("calibrate", help="InfAlign: K reference rewards per training prompt for calibrated criteria")
    p.add_argument("config", help="the training config (its model is the reference; its `calibration:` the store)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--k", type=int, default=32, help="reference samples per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_calibrate)

    p = sub.add_parser("lab", help="exact mirror descent on finite response sets: the figures that check the theory")
    p.add_argument("experiment", choices=["toy", "convergence", "estimators", "gap", "beyond", "voting", "all"])
    p.add_argument("--out", default="results/lab")
    p.add_argument("--quick", action="store_true", help="fewer steps and samples (for tests)")
    p.set_defaults(run=_lab)

    p = sub.add_parser("ctrl-plan", help="InfAlign-CTRL: pick the transform for a decoding procedure and KL budget")
    p.add_argument("--algorithm", default="bon:4", help="sampling, bon:N or won:N")
    p.add_argument("--kl", type=float, default=0.5, help="KL budget")
    p.add_argument("--family", default=None, choices=["exp", "negexp", "power"],
                   help="transform family (default: exp for best-of-N, negexp for worst-of-N)")
    p.add_argument("--out", default="results/ctrl-plan")
    p.set_defaults(run=_ctrl_plan)
    p = sub.add_parser("demo", help="the main job: GRPO vs IAMA on the length task, trained and evaluated")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--configs", default=None,
                   help="folder with length.yaml and length-baseline.yaml (default: the shipped configs/)")
    p.add_argument("--model", default=None, help="override the configs' model (e.g. tiny-gpt2 for a quick look)")
    p.add_argument("--steps", type=int, default=None, help="override the configs' max_steps")
    p.add_argument("--seed", type=int, default=None, help="override the configs' training seed (robustness checks)")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts to evaluate on")
    p.add_argument("-M", "--m", type=int, default=8, help="samples per prompt in the evaluation pools")
    p.set_defaults(run=_demo)

    p = sub.add_parser("sweep", help="the IAMA paper's main experiment: GRPO and IAMA over a grid of criterion "
                       "weights, Pareto fronts and hypervolumes at N = 1, 2, 4, 8")
    p.add_argument("config", help="YAML config with two or more criteria: `iama` trains it as written")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key of the config")
    p.add_argument("--weights", default=None, help="two criteria: the first one's weights, e.g. 0.1,0.3,0.5,0.7,0.9 "
                   "(the default); more: points of the simplex, e.g. 0.2:0.3:0.5,... (default: a grid)")
    p.add_argument("--methods", default=None, help="iama,grpo (the default); grpo is the config with sampling for "
                   "every criterion and the group_mean baseline")
    p.add_argument("--jobs", type=int, default=None, help="runs trained at once (default: the CPU cores; 1 on a GPU)")
    p.add_argument("--out", default="results/sweep")
    p.add_argument("--model", default=None, help="override the config's model")
    p.add_argument("--steps", type=int, default=None, help="override the config's max_steps")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts to evaluate on")
    p.add_argument("--eval-offset", type=int, default=None, help="the first held-out prompt (default: after the "
                   "config's max_prompts), e.g. a confirmation split no pilot has seen")
    p.add_argument("-M", "--m", type=int, default=16, help="samples per prompt in the evaluation pools")
    p.add_argument("--seeds", default=None, help="train every point once per seed, e.g. 0,1,2: intervals over "
                   "seeds and prompts (default: the config's seed, one run per point)")
    p.add_argument("--primary-n", type=int, default=None, help="the budget N of the primary contrast, IAMA - GRPO "
                   "hypervolume, declared before the run (default: the criteria's largest configured N)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_sweep)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides += extra  # KEY=VALUE after the sweep's options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the reports' "Made by" line
    try:
        args.run(args)
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("IAMA_DEBUG"):
            raise
        if isinstance(e, OSError) and e.strerror and e.filename:  # from the system: what, and on which path
            message = f"{e.filename2 or e.filename}: {e.strerror}"  # a rename's target, else the path
        else:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"iama: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

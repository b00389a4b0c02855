"""`iama <verb>`: train, eval, decode, calibrate, ctrl-plan, lab, demo.

Bad input ends with one line `iama: error: ...` and exit code 2 (set IAMA_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import os
import sys


def _train(args):
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)


def _lab(args):
    from .lab import run_lab

    run_lab(args.experiment, args.out, quick=args.quick)


def _ctrl_plan(args):
    from .ctrl import ctrl_plan

    ctrl_plan(args.algorithm, args.kl, args.out, family=args.family)




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iama", description="Inference-aware alignment of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="non-linear GRPO (or GRPO, or CTRL) from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key, e.g. max_steps=10 "
                   "criteria.0.weight=0.3 learning_rate=1e-4")
    p.set_defaults(run=_train)

    p = sub.add_parser("lab", help="exact mirror descent on finite response sets: the figures that check the theory")
    p.add_argument("experiment", choices=["toy", "convergence", "estimators", "gap", "all"])
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("IAMA_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"iama: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

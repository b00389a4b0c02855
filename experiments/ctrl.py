"""InfAlign's claim on a real LM: inference-time win rate against KL for the raw, the calibrated and the transformed
reward, each held at the same KL targets by the controller, over seeds (docs/results/ctrl-kl/PROTOCOL.md).

For each task (sentiment decoded with best-of-4, harmlessness decoded with worst-of-4):
1. calibrate the task's reward once against K reference samples per training prompt (OUT/TASK/calibration.json);
2. train KL-regularised RL on three rewards: the raw reward, the calibrated reward (identity transform) and the
   calibrated reward transformed for the task's decoding by the planner (`iama ctrl-plan`: exp:t for best-of-N,
   negexp:t for worst-of-N, t planned at --kl-budget; the same transform at every target, so that each reward is
   one function and one curve). Every reward is trained at every per-token KL target (--targets), held by the
   controller on beta (`target_kl`), once per seed (--seeds);
3. evaluate every policy and the reference on held-out prompts with `iama eval --kl` (a pool of M samples per
   prompt, the KL to the reference from each policy's own pool), the two tasks side by side;
4. report each run's unbiased inference-time win rate against the reference under the task's decoding, its pool
   KL and its training KL (flagged when the last quarter of training is more than 25% off the target), and the
   contrasts the protocol declares: transformed - raw (primary) and calibrated - raw (secondary) win rate at each
   target, the mean over seeds with a two-stage bootstrap interval (seeds, then prompts: the same prompt resamples
   for both rewards, which were evaluated on the same prompts), and their average over the targets.

The initial beta scales with the reward, since beta is in the reward's units per nat: it is the beta at which the
KL-regularised optimum of InfAlign's 1-D model, p(u) ∝ exp(Phi(u) / beta) over the reference quantile u, has the
target's KL per completion (the per-token target times --max-completion-length), times --beta-scale. Phi is the
reward as trained, as a function of u: u for the calibrated reward, the transform of u for the transformed one
(iama.ctrl.beta_for_kl exactly), and each training prompt's reference quantile function (from the calibration
store) for the raw reward, the KL averaged over the prompts. The controller then moves beta to hold the target.

    python experiments/ctrl.py --out results/ctrl-kl                    # the confirmatory run, as PROTOCOL.md says
    python experiments/ctrl.py --pilot --out results/ctrl-kl-pilot ...  # a pilot, evaluated on training prompts
    python experiments/ctrl.py --model tiny-gpt2 --prompts builtin:tiny --tasks sentiment --targets 0.05,0.1 \\
        --seeds 0 --steps 2 --train-prompts 4 --eval-prompts 4 --k 4 -M 4 --out results/ctrl-kl-tiny   # the pipeline

Cost of the confirmatory run on 2 CPU cores, estimated in PROTOCOL.md from the step times the repository records:
about 4.5 to 5.5 hours (36 runs of 30 steps two at a time, then the two tasks evaluated side by side).

Resumable after any interruption: run the same command again. The calibration resumes per batch, training runs
resume from their last checkpoint (finished ones are kept), pools per chunk of prompts, KL per model. A run whose
pool and KL are on file (OUT/TASK/eval/pools/LABEL.jsonl or .jsonl.gz, OUT/TASK/eval/kl.json) is neither trained
nor sampled again, so the experiment resumes from committed pools without any weights. OUT/design.json records
the settings: OUT of other settings is refused. Bad input stops with one line `error: ...` and exit code 2 before
anything is trained. Writes OUT/ctrl.json, OUT/ctrl.md and OUT/ctrl.png.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.algorithms import parse_algorithm  # noqa: E402
from iama.ctrl import _default_family, plan, solve_log_beta, tradeoff  # noqa: E402
from iama.transforms import parse_transform  # noqa: E402
from iama.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe, safe_name  # noqa: E402

TASKS = {  # reward, decoding procedure
    "sentiment": ("sentiment", "bon:4"),
    "harmlessness": ("harmlessness", "won:4"),
}
REWARDS = ("raw", "identity", "transformed")
OFF_TARGET = 0.25  # a run is off target when its last quarter's training KL is more than this far from the target
PRIMARY, SECONDARY = ("transformed", "raw"), ("identity", "raw")


class InputError(ValueError):
    """Bad input: one line for the user, exit code 2."""


# ---------------------------------------------------------------------------------------------------------------
# the design: arguments and everything that can be checked before anything runs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/ctrl-kl")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the reference model, which every run starts from")
    ap.add_argument("--prompts", default="builtin", help="training prompts first, then the held-out ones")
    ap.add_argument("--tasks", default="sentiment,harmlessness", help=f"of {', '.join(TASKS)}")
    ap.add_argument("--rewards", default=",".join(REWARDS), help="of raw, identity (calibrated), transformed")
    ap.add_argument("--targets", default="0.02,0.04,0.08", help="per-token KL targets held by the controller, the "
                    "same for every reward (PROTOCOL.md: set by the pilot)")
    ap.add_argument("--seeds", default="0,1", help="training seeds of every (reward, target)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (PROTOCOL.md: set by the pilot)")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="PROTOCOL.md: set by the pilot")
    ap.add_argument("--beta-scale", type=float, default=1.0, help="the initial beta is this times the 1-D model's "
                    "beta at the target (PROTOCOL.md: set by the pilot)")
    ap.add_argument("--kl-gain", type=float, default=0.1, help="the controller's gain on log beta per step")
    ap.add_argument("--kl-budget", type=float, default=0.5, help="the KL (nats, 1-D model) the planner picks t for")
    ap.add_argument("--plan", action="append", default=[], metavar="TASK=FILE",
                    help="the transform of an `iama ctrl-plan` plan (its ctrl_plan.json) instead of planning here")
    ap.add_argument("--transform", action="append", default=[], metavar="TASK=SPEC",
                    help="a transform of the planner's family for the task's decoding, e.g. sentiment=exp:10")
    ap.add_argument("--calibration", action="append", default=[], metavar="TASK=FILE",
                    help="the calibration store (default OUT/TASK/calibration.json; filled where it lacks prompts)")
    ap.add_argument("--train-prompts", type=int, default=64, help="the first prompts of --prompts")
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--eval-offset", type=int, default=None, help="the first evaluated prompt (default: right after "
                    "the training prompts; with --pilot: 0)")
    ap.add_argument("--pilot", action="store_true", help="evaluate on training prompts only (a pilot, not a result)")
    ap.add_argument("--k", type=int, default=16, help="reference samples per training prompt for calibration")
    ap.add_argument("-M", "--m", type=int, default=8, help="samples per prompt in the evaluation pools")
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=None, help="processes at once (default: the CPU cores; 1 on a GPU)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the contrasts")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _numbers(text, kind, option):
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise InputError(f"{option} {text!r}: write numbers separated by commas") from None
    if not values:
        raise InputError(f"{option} is empty")
    if len(set(values)) != len(values):
        raise InputError(f"{option} {text!r} repeats a value")
    return values


def _names(text, allowed, option):
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise InputError(f"{option}: {bad[0] if bad else 'nothing'!r} is not one of {', '.join(allowed)}")
    return [n for n in allowed if n in names]


def _per_task(items, tasks, option):
    """{task: value} from TASK=VALUE options."""
    out = {}
    for item in items:
        task, eq, value = item.partition("=")
        if not eq or not value.strip():
            raise InputError(f"{option} {item!r}: write TASK=VALUE")
        if task not in tasks:
            raise InputError(f"{option} {item!r}: {task!r} is not one of the tasks run ({', '.join(tasks)})")
        if task in out:
            raise InputError(f"{option}: {task} is given twice")
        out[task] = value.strip()
    return out


def check_design(args) -> dict:
    """The experiment's settings from the arguments, every one checked; raises InputError with one line."""
    tasks = _names(args.tasks, list(TASKS), "--tasks")
    rewards = _names(args.rewards, list(REWARDS), "--rewards")
    targets = _numbers(args.targets, float, "--targets")
    bad = [t for t in targets if not (math.isfinite(t) and t > 0)]
    if bad:
        raise InputError(f"--targets: a KL target must be a positive per-token KL, got {bad[0]:g}")
    seeds = _numbers(args.seeds, int, "--seeds")
    for option, value, low in [("--steps", args.steps, 1), ("--train-prompts", args.train_prompts, 1),
                               ("--eval-prompts", args.eval_prompts, 1), ("--k", args.k, 2),
                               ("--max-completion-length", args.max_completion_length, 1),
                               ("--bootstrap", args.bootstrap, 100), ("--jobs", args.jobs, 1)]:
        if value is not None and value < low:
            raise InputError(f"{option} must be at least {low}, got {value}")
    for option, value in [("--learning-rate", args.learning_rate), ("--beta-scale", args.beta_scale),
                          ("--kl-gain", args.kl_gain), ("--kl-budget", args.kl_budget)]:
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} must be a positive number, got {value:g}")
    n = max(parse_algorithm(TASKS[t][1]).n for t in tasks)
    if args.m < n:
        raise InputError(f"-M {args.m} samples per prompt cannot estimate the win rate under N = {n}; use -M >= {n}")
    offset = eval_split(args)
    plans, specs = _per_task(args.plan, tasks, "--plan"), _per_task(args.transform, tasks, "--transform")
    both = sorted(set(plans) & set(specs))
    if both:
        raise InputError(f"{both[0]}: give --plan or --transform, not both")
    transforms = {t: transform_for(t, plans.get(t), specs.get(t), args.kl_budget) for t in tasks}
    stores = _per_task(args.calibration, tasks, "--calibration")
    return {"model": args.model, "prompts": args.prompts, "tasks": tasks, "rewards": rewards, "targets": targets,
            "seeds": seeds, "steps": args.steps, "learning_rate": args.learning_rate, "beta_scale": args.beta_scale,
            "kl_gain": args.kl_gain, "kl_budget": args.kl_budget, "transforms": transforms,
            "train_prompts": args.train_prompts, "eval_prompts": args.eval_prompts, "eval_offset": offset,
            "pilot": args.pilot, "k": args.k, "m": args.m, "max_completion_length": args.max_completion_length,
            "calibration": {t: stores.get(t) for t in tasks}}  # None: OUT/TASK/calibration.json


def store_path(design: dict, out: Path, task: str) -> str:
    """The task's calibration store: the one given, else OUT/TASK/calibration.json (recorded as None, so that the
    experiment's folder can move)."""
    return design["calibration"][task] or str(out / task / "calibration.json")


def eval_split(args) -> int:
    """The first evaluated prompt: held out (after the training prompts), or for a pilot among the training
    prompts; the prompt source must hold them all."""
    from iama.data import load_prompts

    train, n = args.train_prompts, args.eval_prompts
    if args.pilot:
        offset = 0 if args.eval_offset is None else args.eval_offset
        if offset + n > train:
            raise InputError(f"a pilot evaluates on training prompts only: prompts {offset} to {offset + n - 1} "
                             f"go beyond the {train} training prompts")
    else:
        offset = train if args.eval_offset is None else args.eval_offset
        if offset < train:
            raise InputError(f"--eval-offset {offset} would evaluate on training prompts (the first {train}); "
                             "evaluating on training prompts is a pilot's (--pilot)")
    have = len(load_prompts(args.prompts, limit=max(train, offset + n)))
    if have < max(train, offset + n):
        raise InputError(f"prompts {args.prompts!r} has {have} prompts, fewer than {train} for training and "
                         f"{n} evaluated from prompt {offset}")
    return offset


def transform_for(task: str, plan_file, spec, kl_budget: float) -> dict:
    """The transform of the task's `transformed` reward, made by the planner for the task's decoding: planned here
    at kl_budget (the default), read from a plan of `iama ctrl-plan` (which records the decoding it was made for),
    or given as a spec of the family the planner makes for that decoding."""
    algorithm = parse_algorithm(TASKS[task][1])
    family = _default_family(algorithm)
    if plan_file is not None:
        try:
            saved = json.loads(Path(plan_file).read_text(encoding="utf-8"))
            made_for, transform = parse_algorithm(saved["algorithm"]).spec, saved["best_transform"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"--plan {task}={plan_file}: not a plan written by `iama ctrl-plan` "
                             "(its ctrl_plan.json)") from None
        if made_for != algorithm.spec:
            raise InputError(f"--plan {task}={plan_file}: the plan was made for {made_for}, but {task} is decoded "
                             f"with {algorithm.spec}; plan it with `iama ctrl-plan --algorithm {algorithm.spec}`")
        return {"spec": parse_transform(transform).spec, "from": f"plan {plan_file} (KL {saved.get('kl')})"}
    if spec is not None:
        try:
            given = parse_transform(spec).spec
        except ValueError as e:
            raise InputError(f"--transform {task}={spec}: {e}") from None
        if given.partition(":")[0] != family:
            raise InputError(f"--transform {task}={spec}: the planner makes {family}:t for {algorithm.spec}, not "
                             f"{given}; see `iama ctrl-plan --algorithm {algorithm.spec}`")
        return {"spec": given, "from": "--transform"}
    planned = plan(algorithm, kl_budget, family=family)
    return {"spec": parse_transform(planned["best_transform"]).spec,
            "from": f"the planner for {algorithm.spec} at KL {kl_budget:g}"}


def check_store(path, model: str) -> None:
    """A calibration store on file must have been sampled from the run's model (one that does not record its model
    cannot tell)."""
    from iama.ctrl import CalibrationStore

    if Path(path).is_file():
        try:
            store = CalibrationStore(path)
        except (ValueError, KeyError, TypeError):
            raise InputError(f"calibration store {path} is not one written by `iama calibrate`") from None
        store.check_model(model)


def record_design(out: Path, design: dict) -> None:
    """OUT/design.json: a resumed experiment must be the same experiment."""
    path = out / "design.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        differ = sorted(k for k in set(saved) | set(design) if saved.get(k) != json_safe(design.get(k)))
        if differ:
            raise InputError(f"{out} holds an experiment of other settings ({', '.join(differ)} differ); use "
                             "another --out")
    atomic_write_json(path, json_safe(design))


# ---------------------------------------------------------------------------------------------------------------
# the initial beta: the 1-D model's beta at the target, for the reward as trained


def initial_beta(phis, kl: float) -> float:
    """The beta at which the KL-regularised optimum of InfAlign's 1-D model, p(u) ∝ exp(Phi(u) / beta) on the
    reference quantile u in [0, 1], has KL(p || uniform) = kl, averaged over prompts. phis: Phi of each prompt (a
    calibrated reward has one Phi for every prompt: then this is iama.ctrl.beta_for_kl). KL falls as beta grows:
    bracketed in log beta, then solved."""

    def mean_kl(log_beta):
        return float(np.mean([tradeoff(phi, math.exp(log_beta))["kl"] for phi in phis]))

    spread = max(float(np.std(phi(np.linspace(0.0, 1.0, 257)))) for phi in phis)
    if not spread > 0:
        raise InputError("the reward is the same on every reference sample of every training prompt: no beta "
                         "gives a KL above 0")
    log_beta, lowest = solve_log_beta(mean_kl, kl, math.log(spread), step=1.0, tries=60, xtol=1e-10)
    if log_beta is None:
        raise InputError(f"KL {kl:g} per completion is out of the 1-D model's reach for this reward (ties among the "
                         f"reference samples): at beta {math.exp(lowest):.3g} its KL is {mean_kl(lowest):.3g}")
    return float(math.exp(log_beta))


def reward_phis(store, task: str, reward: str, transform: str) -> list:
    """Phi(u) of the reward as trained: the identity or the transform of the calibrated reward (one for every
    prompt), or for the raw reward each training prompt's reference quantile function."""
    if reward == "raw":
        return [lambda u, r=np.sort(np.asarray(r, dtype=np.float64)): np.quantile(r, u)
                for r in store.rewards[task].values()]
    return [parse_transform("identity" if reward == "identity" else transform)]


# ---------------------------------------------------------------------------------------------------------------
# the runs


@dataclass
class Run:
    task: str
    reward: str  # raw | identity | transformed
    target: float  # per-token KL
    seed: int
    beta: float = float("nan")  # the controller's initial beta
    cfg: object = None  # its TrainConfig

    @property
    def label(self) -> str:
        return f"{self.reward}-kl{self.target:g}-s{self.seed}"


def base_config(design: dict, task: str, store: str, reward: str = "identity", **overrides):
    """The training config of one run (by default the calibrated one, which is what `iama calibrate` reads)."""
    from iama.config import load_config

    name, _ = TASKS[task]
    criterion = {"name": task, "reward": name, "algorithm": "sampling"}  # KL-RL; the decoding is the evaluation's
    if reward != "raw":
        criterion.update(calibrated=True,
                         transform="identity" if reward == "identity" else design["transforms"][task]["spec"])
    settings = dict(
        model=design["model"], prompts=design["prompts"], max_prompts=design["train_prompts"], criteria=[criterion],
        calibration=store if reward != "raw" else None, baseline="group_mean",
        scale_rewards="none",  # beta is relative to the reward's scale, which the initial beta follows
        num_generations=8, beta=1.0, kl_gain=design["kl_gain"], max_steps=design["steps"],
        learning_rate=design["learning_rate"], per_device_train_batch_size=16,  # 2 prompts x 8 completions
        max_completion_length=design["max_completion_length"], temperature=1.0, bf16=True, report_to="none")
    return load_config(None, **{**settings, **overrides})


def plan_runs(design: dict, out: Path) -> list[Run]:
    """Every (task, reward, target, seed) with its initial beta and config; OUT/TASK/plan.json says how each
    initial beta was derived."""
    from iama.ctrl import CalibrationStore

    runs = []
    for task in design["tasks"]:
        store = CalibrationStore.load(store_path(design, out, task))
        transform = design["transforms"][task]["spec"]
        seq = {t: t * design["max_completion_length"] for t in design["targets"]}
        betas = {}
        for reward in design["rewards"]:
            phis = reward_phis(store, task, reward, transform)
            try:
                betas[reward] = {t: design["beta_scale"] * initial_beta(phis, seq[t]) for t in design["targets"]}
            except InputError as e:
                raise InputError(f"{task}, {reward} reward: {e}") from None
        atomic_write_json(out / task / "plan.json", {
            "task": task, "algorithm": TASKS[task][1], "transform": transform, "transform_from":
            design["transforms"][task]["from"], "sequence_kl": {f"{t:g}": v for t, v in seq.items()},
            "beta_scale": design["beta_scale"], "initial_beta": {r: {f"{t:g}": b for t, b in bs.items()}
                                                                 for r, bs in betas.items()}})
        for reward in design["rewards"]:
            for target in design["targets"]:
                for seed in design["seeds"]:
                    run = Run(task, reward, target, seed, betas[reward][target])
                    run.cfg = base_config(design, task, str(store.path), reward, beta=run.beta, target_kl=target,
                                          seed=seed, output_dir=str(out / task / "runs" / run.label))
                    runs.append(run)
    return runs


def calibrate_tasks(design: dict, out: Path, progress: bool) -> None:
    """K reference samples per training prompt, scored by the task's reward (resumable)."""
    from iama.ctrl import calibrate

    for task in design["tasks"]:
        store = store_path(design, out, task)
        print(f"== {task}: calibrating {design['train_prompts']} training prompts, K = {design['k']} reference "
              f"samples each ({store}) ==", flush=True)
        calibrate(base_config(design, task, store), k=design["k"], progress=progress)


def train_runs(runs: list[Run], out: Path, slots: int, threads: int, progress: bool) -> None:
    """`iama train` for every run, `slots` at a time (iama.runs.train_side_by_side); each run's config is written
    to OUT/TASK/configs/LABEL.yaml, its output goes to OUT/TASK/runs/LABEL.log."""
    import yaml

    from iama.config import to_dict
    from iama.runs import train_side_by_side

    jobs = {}
    for run in runs:
        path = out / run.task / "configs" / f"{run.label}.yaml"
        atomic_write_text(path, yaml.safe_dump(to_dict(run.cfg), sort_keys=False))
        jobs[f"{run.task}/{run.label}"] = ([str(path)], run.cfg)
    train_side_by_side(jobs, threads=threads, progress=progress, slots=slots)


# ---------------------------------------------------------------------------------------------------------------
# the evaluation: `iama eval --kl` per task, from files on resume


def pool_path(folder: Path, label: str) -> Path | None:
    """The pool of `label` in an evaluation's folder: LABEL.jsonl, or LABEL.jsonl.gz as results commit it."""
    for suffix in (".jsonl", ".jsonl.gz"):
        path = folder / "pools" / f"{safe_name(label)}{suffix}"
        if path.is_file():
            return path
    return None


def complete_pool(folder: Path, label: str, num_prompts: int, m: int) -> Path | None:
    """The pool of `label` if it holds `num_prompts` prompts with M samples each."""
    from iama.pools import read_pool

    path = pool_path(folder, label)
    if path is None:
        return None
    records = [r for r in read_pool(path) if r.get("model") == label]
    ok = len(records) == num_prompts and all(len(r["candidates"]) == m for r in records)
    return path if ok else None


def evaluated(folder: Path, labels, num_prompts: int, m: int) -> dict:
    """{label: pool} of the runs whose evaluation is on file: a complete pool and the KL in kl.json. Such a run
    needs no weights: it is neither trained nor sampled again."""
    cache = folder / "kl.json"
    kl = json.loads(cache.read_text()) if cache.is_file() else {}
    found = {label: complete_pool(folder, label, num_prompts, m) for label in labels if label in kl}
    return {label: path for label, path in found.items() if path is not None}


def eval_command(design: dict, task: str, runs: list[Run], out: Path, on_file: dict) -> list[str]:
    """`iama eval` of the reference and the task's runs on the evaluated prompts, with their KL; runs evaluated
    before come as --pool files. Every policy is judged on the raw reward under the task's decoding."""
    import yaml

    folder = out / task / "eval"
    ref = folder / "pools" / "reference.jsonl"
    packed = ref.with_suffix(".jsonl.gz")
    if not ref.is_file() and packed.is_file():  # a committed reference pool, which `iama eval` resumes from
        atomic_write_bytes(ref, gzip.decompress(packed.read_bytes()))
    name, algorithm = TASKS[task]
    config = out / task / "eval-config.yaml"  # the runs' generation settings, the raw reward
    atomic_write_text(config, yaml.safe_dump({
        "model": design["model"], "criteria": [{"name": task, "reward": name, "algorithm": algorithm}],
        "max_completion_length": design["max_completion_length"], "temperature": 1.0}, sort_keys=False))
    return [sys.executable, "-m", "iama.cli", "eval", f"reference={design['model']}",
            *[f"{r.label}={r.cfg.output_dir}" for r in runs if r.label not in on_file],
            *[x for r in runs if r.label in on_file for x in ("--pool", str(on_file[r.label]))],
            "--config", str(config), "--reference", "reference", "--prompts", design["prompts"],
            "--limit", str(design["eval_prompts"]), "--offset", str(design["eval_offset"]), "-M", str(design["m"]),
            "--out", str(folder), "--kl", "--quiet", "--no-plots"]


def run_side_by_side(jobs: dict, slots: int, threads: int, progress: bool) -> None:
    """Run each job ({name: (command, log file, total, done())}) in its own process with `threads` threads, at
    most `slots` at once; a progress bar per job from done(). A job that fails stops the others and raises with
    its error line."""
    from tqdm.auto import tqdm

    from iama.runs import _error_line

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, procs, bars = list(jobs), {}, {}
    try:
        while pending or any(p.poll() is None for p in procs.values()):
            while pending and sum(p.poll() is None for p in procs.values()) < slots:
                name = pending.pop(0)
                command, log, total, _ = jobs[name]
                Path(log).parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a") as f:
                    procs[name] = subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
                bars[name] = tqdm(total=total, desc=name, unit="pool/KL", disable=not progress, dynamic_ncols=True)
            for name, bar in bars.items():
                bar.update(jobs[name][3]() - bar.n)
            failed = [name for name, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"{failed[0]} stopped: {_error_line(Path(jobs[failed[0]][1]))} "
                                   f"(its output: {jobs[failed[0]][1]})")
            time.sleep(5)
        for name, bar in bars.items():
            bar.update(jobs[name][3]() - bar.n)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait()
        for bar in bars.values():
            bar.close()


def evaluate_tasks(design: dict, runs: list[Run], out: Path, slots: int, cores: int, progress: bool) -> list[str]:
    """Evaluate the tasks with anything left to evaluate, side by side; returns those tasks."""
    jobs = {}
    for task in design["tasks"]:
        folder, mine = out / task / "eval", [r for r in runs if r.task == task]
        labels = [r.label for r in mine]
        on_file = evaluated(folder, labels, design["eval_prompts"], design["m"])
        ref_done = complete_pool(folder, "reference", design["eval_prompts"], design["m"]) is not None
        if len(on_file) == len(mine) and ref_done:
            continue

        def done(folder=folder, labels=labels):
            """Pools started plus KLs on file: cheap enough to poll (the pools are not read)."""
            try:
                kl = json.loads((folder / "kl.json").read_text()) if (folder / "kl.json").is_file() else {}
            except ValueError:
                kl = {}
            return sum(pool_path(folder, x) is not None for x in ["reference", *labels]) + len(set(kl) & set(labels))

        jobs[f"evaluating {task}"] = (eval_command(design, task, mine, out, on_file), out / task / "eval.log",
                                      2 * len(mine) + 1, done)
    if jobs:
        slots = min(slots, len(jobs))
        print(f"== {', '.join(jobs)} on {design['eval_prompts']} prompts from prompt {design['eval_offset']}, "
              f"M = {design['m']}, with the KL to the reference; {slots} at a time, output in "
              f"{', '.join(str(out / t.split()[-1] / 'eval.log') for t in jobs)} ==", flush=True)
        run_side_by_side(jobs, slots, max(1, cores // slots), progress)
    return [name.split()[-1] for name in jobs]


# ---------------------------------------------------------------------------------------------------------------
# the analysis, from files: pools, kl.json, metrics.csv


def training_kl(metrics_csv: Path, target: float) -> dict:
    """From a run's per-step log: the per-token training KL (TRL's k3) over the last quarter of the logged steps,
    its relative distance from the target (off target beyond OFF_TARGET), the first step at which the KL reached
    3/4 of the target, the last quarter's beta and the mean step time. Empty when the log is missing."""
    if not Path(metrics_csv).is_file():
        return {}
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kl")]
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 4):]
    kl = float(np.mean([float(r["kl"]) for r in tail]))
    reached = next((int(float(r["step"])) for r in rows if float(r["kl"]) >= 0.75 * target), None)
    times = [float(r["step_time"]) for r in rows if r.get("step_time")]
    return {"kl_last_quarter": kl, "off_by": kl / target - 1, "off_target": abs(kl / target - 1) > OFF_TARGET,
            "reached_step": reached, "steps": int(float(rows[-1]["step"])),
            "beta_last_quarter": float(np.exp(np.mean([np.log(float(r["beta"])) for r in tail if r.get("beta")]))),
            "step_time_s": float(np.mean(times)) if times else None}


def win_rates(pool_rewards, ref_rewards, algorithm) -> np.ndarray:
    """(P,) per-prompt unbiased win rates of a policy's pool against the reference's under the decoding (ties half)."""
    from iama.estimate import win_rate_estimates

    alg = parse_algorithm(algorithm)
    return win_rate_estimates(pool_rewards, ref_rewards, alg.family, [alg.n])[:, 0]


def group_samples(wins: dict, reward: str, target: float, seeds, boot, rng) -> tuple[float, np.ndarray]:
    """The mean over seeds of a (reward, target)'s win rate, and its two-stage bootstrap samples (B,): the seeds
    drawn with replacement (their own draws, rng), the prompts resampled by `boot` (B, P), shared by every group
    of the task so that contrasts are paired in prompts."""
    from iama.stats import seed_draws, seed_resample

    per_seed = np.stack([wins[reward, target, s] for s in seeds])  # (S, P)
    return float(per_seed.mean()), seed_resample(per_seed @ boot.T, seed_draws(len(seeds), len(boot), rng))


def contrasts(wins: dict, a: str, b: str, targets, seeds, boot, confidence: float = 0.95, task_index: int = 0,
              held=None) -> dict:
    """Win rate of reward a minus reward b at each KL target, as the mean over seeds of each reward's mean over
    prompts, with the two-stage bootstrap interval; and the average over the targets (the primary number when a, b
    = transformed, raw). wins: {(reward, target, seed): per-prompt win rates (P,)}, the same prompts throughout.
    held: {target: whether all the contrast's runs held their KL}; with a target not held, the average over the
    held targets is given as well."""
    from iama.stats import percentile_ci

    per_target, diffs = [], {}
    for i, t in enumerate(targets):
        mean_a, samples_a = group_samples(wins, a, t, seeds, boot, [task_index, REWARDS.index(a), i])
        mean_b, samples_b = group_samples(wins, b, t, seeds, boot, [task_index, REWARDS.index(b), i])
        diffs[t] = samples_a - samples_b
        lo, hi = percentile_ci(diffs[t], confidence)
        per_target.append({"target": t, "mean": mean_a - mean_b, "ci_low": float(lo), "ci_high": float(hi),
                           "held": True if held is None else bool(held[t])})

    def average(ts):
        lo, hi = percentile_ci(np.mean([diffs[t] for t in ts], axis=0), confidence)
        return {"targets": list(ts), "mean": float(np.mean([e["mean"] for e in per_target if e["target"] in ts])),
                "ci_low": float(lo), "ci_high": float(hi)}

    out = {"minuend": a, "subtrahend": b, "per_target": per_target, "average": average(targets),
           "seeds": len(seeds), "interval": "seeds, then prompts" if len(seeds) > 1 else "prompts only, one seed"}
    kept = [e["target"] for e in per_target if e["held"]]
    if len(kept) < len(targets):
        out["average_held"] = average(kept) if kept else None
    return out


def verdict(average: dict) -> str:
    """PROTOCOL.md: the claim holds (interval above 0), holds in direction only (mean above 0), or fails."""
    return "holds" if average["ci_low"] > 0 else "holds in direction only" if average["mean"] > 0 else "fails"


def matched_kl_difference(rows: list[dict], a: str, b: str) -> float | None:
    """Sensitivity: a's seed-averaged curve (win rate against pool KL per completion) minus b's, linearly
    interpolated, averaged over the pool KLs both curves span; None when they span none in common."""
    curves = []
    for reward in (a, b):
        points = sorted((np.mean([r["pool_kl"] for r in rows if r["reward"] == reward and r["target"] == t]),
                         np.mean([r["win_rate"] for r in rows if r["reward"] == reward and r["target"] == t]))
                        for t in sorted({r["target"] for r in rows}))
        curves.append(np.array(points))
    lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, 101)
    return float(np.mean(np.interp(grid, *curves[0].T) - np.interp(grid, *curves[1].T)))


def analyse(design: dict, out: Path, bootstrap: int = 2000, confidence: float = 0.95) -> dict:
    """Every run's row, every (reward, target)'s seed-averaged point and the contrasts, from the files."""
    from iama.pools import Pool, align_pools, read_pool
    from iama.stats import bootstrap_weights, bounded_mean_ci, percentile_ci, positive_mean_ci

    rows, groups, result = [], [], {}
    for ti, task in enumerate(design["tasks"]):
        folder, algorithm = out / task / "eval", TASKS[task][1]
        plan_ = json.loads((out / task / "plan.json").read_text())
        kl_cache = json.loads((folder / "kl.json").read_text())
        runs = [Run(task, r, t, s) for r in design["rewards"] for t in design["targets"] for s in design["seeds"]]
        pools = [Pool.from_records([x for x in read_pool(pool_path(folder, label)) if x.get("model") == label],
                                   [task], label) for label in ["reference", *[r.label for r in runs]]]
        ref, *pools = align_pools(pools, "reference")[0]
        wins = {}
        for run, pool in zip(runs, pools):
            wins[run.reward, run.target, run.seed] = w = win_rates(pool.rewards[:, :, 0], ref.rewards[:, :, 0],
                                                                  algorithm)
            kl = positive_mean_ci(np.array(kl_cache[run.label]["per_prompt"]), confidence)
            win = bounded_mean_ci(w, 0.0, 1.0, confidence)
            tokens = float(pool.num_tokens.mean()) if pool.num_tokens is not None else float("nan")
            rows.append({"task": task, "algorithm": algorithm, "reward": run.reward, "target": run.target,
                         "seed": run.seed, "label": run.label,
                         "initial_beta": plan_["initial_beta"][run.reward][f"{run.target:g}"],
                         "pool_kl": float(kl["mean"]), "pool_kl_ci_low": float(kl["ci_low"]),
                         "pool_kl_ci_high": float(kl["ci_high"]), "pool_kl_per_token": float(kl["mean"]) / tokens,
                         "mean_tokens": tokens, "win_rate": float(win["mean"]), "ci_low": float(win["ci_low"]),
                         "ci_high": float(win["ci_high"]),
                         **training_kl(out / task / "runs" / run.label / "metrics.csv", run.target)})
        mine = [r for r in rows if r["task"] == task]
        boot = bootstrap_weights(len(ref.prompts), bootstrap, ti)
        for reward in design["rewards"]:
            for i, t in enumerate(design["targets"]):
                mean, samples = group_samples(wins, reward, t, design["seeds"], boot, [ti, REWARDS.index(reward), i])
                lo, hi = percentile_ci(samples, confidence)
                these = [r for r in mine if r["reward"] == reward and r["target"] == t]
                groups.append({"task": task, "reward": reward, "target": t, "win_rate": mean, "ci_low": float(lo),
                               "ci_high": float(hi), "pool_kl": float(np.mean([r["pool_kl"] for r in these])),
                               "held": not any(r.get("off_target", True) for r in these)})
        entry = {"algorithm": algorithm, "transform": plan_["transform"], "prompts": len(ref.prompts)}
        for key, (a, b) in [("primary", PRIMARY), ("secondary", SECONDARY)]:
            if a in design["rewards"] and b in design["rewards"]:
                held = {t: all(g["held"] for g in groups if g["task"] == task and g["target"] == t
                               and g["reward"] in (a, b)) for t in design["targets"]}
                entry[key] = contrasts(wins, a, b, design["targets"], design["seeds"], boot, confidence, ti, held)
                entry[key]["at_matched_pool_kl"] = matched_kl_difference(mine, a, b)
        if "primary" in entry and not design["pilot"]:  # a pilot, on training prompts, gives no verdict
            entry["primary"]["verdict"] = verdict(entry["primary"]["average"])
        result[task] = entry
    report = {"rows": rows, "groups": groups, "contrasts": result}
    if design["pilot"]:
        report["pilot"] = pilot_summary(rows, design)
    return report


def pilot_summary(rows: list[dict], design: dict) -> dict:
    """What PROTOCOL.md's pilot rules read, from the training logs alone (no win rate): the beta scale that would
    have started every run at the beta that held its KL (the geometric mean over runs of the last quarter's beta
    over the initial beta, times this pilot's scale), the latest step at which a run first reached 3/4 of its
    target, whether every run at each target held it, and the mean step time."""
    logged = [r for r in rows if "kl_last_quarter" in r]
    ratios = [r["beta_last_quarter"] / r["initial_beta"] for r in logged]
    reached = [r["reached_step"] for r in logged]
    times = [r["step_time_s"] for r in logged if r.get("step_time_s")]
    return {"beta_scale": design["beta_scale"] * float(np.exp(np.mean(np.log(ratios)))) if ratios else None,
            "latest_reached_step": None if None in reached or not reached else max(reached),
            "not_reached": [f"{r['task']}/{r['label']}" for r in logged if r["reached_step"] is None],
            "held": {f"{t:g}": all(not r["off_target"] for r in logged if r["target"] == t)
                     for t in design["targets"]},
            "kl_last_quarter": {f"{t:g}": sorted(r["kl_last_quarter"] for r in logged if r["target"] == t)
                                for t in design["targets"]},
            "step_time_s": float(np.mean(times)) if times else None}


# ---------------------------------------------------------------------------------------------------------------
# the report


def _ci(x, lo, hi, sign=False):
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(x)} [{f.format(lo)}, {f.format(hi)}]"


def _on_target(r):
    if "off_target" not in r:
        return "no training log"
    return f"**off** ({r['off_by']:+.0%})" if r["off_target"] else f"yes ({r['off_by']:+.0%})"


def write_report(report: dict, out: Path) -> None:
    design = report["design"]
    lines = ["# InfAlign-CTRL at matched KL: win rate against KL for raw, calibrated and transformed rewards", ""]
    if design["pilot"]:
        lines += ["**A pilot, evaluated on training prompts: not a result.**", ""]
    lines += [f"`{report['command']}`", "",
              f"{design['model']}; {len(design['seeds'])} seed(s) per (reward, target); {design['steps']} steps of 2 "
              f"prompts x 8 completions of at most {design['max_completion_length']} tokens, learning rate "
              f"{design['learning_rate']:g}, KL held by the controller (gain {design['kl_gain']:g}); evaluated on "
              f"{design['eval_prompts']} prompts from prompt {design['eval_offset']} of `{design['prompts']}` "
              f"({'training prompts' if design['pilot'] else 'held out'}), M = {design['m']}.", ""]
    for task, c in report["contrasts"].items():
        lines += [f"## {task}, decoded with {c['algorithm']}; transform {c['transform']}", ""]
        for key in ("primary", "secondary"):
            if key not in c:
                continue
            e = c[key]
            name = f"{'transformed' if e['minuend'] == 'transformed' else 'calibrated'} - raw"
            avg = e["average"]
            lines.append(f"- **{key}: {name}** win rate, averaged over the targets: "
                         f"{_ci(avg['mean'], avg['ci_low'], avg['ci_high'], True)} (interval over {e['interval']})"
                         + (f": the claim **{e['verdict']}**" if "verdict" in e else ""))
            if "average_held" in e:
                h = e["average_held"]
                kept = ", ".join(f"{t:g}" for t in h["targets"]) if h else ""
                lines.append("  - over the held targets only: " + (
                    f"{_ci(h['mean'], h['ci_low'], h['ci_high'], True)} (targets {kept})" if h
                    else "no target was held by every run"))
            if e.get("at_matched_pool_kl") is not None:
                lines.append(f"  - sensitivity, the seed-averaged curves interpolated at matched pool KL: "
                             f"{e['at_matched_pool_kl']:+.3f}")
        lines += ["", "| target (KL per token) | transformed - raw | calibrated - raw | every run on target |",
                  "|---|---|---|---|"]
        primary, secondary = c.get("primary"), c.get("secondary")
        for i, t in enumerate(design["targets"]):
            cells = []
            for e in (primary, secondary):
                p = e["per_target"][i] if e else None
                cells.append(_ci(p["mean"], p["ci_low"], p["ci_high"], True) + ("" if p["held"] else " †")
                             if p else "")
            held = all(g["held"] for g in report["groups"] if g["task"] == task and g["target"] == t)
            lines.append(f"| {t:g} | {cells[0]} | {cells[1]} | {'yes' if held else 'no'} |")
        lines += ["", "† a run of the contrast is off target at this KL.", ""]
    lines += ["## Every run", "",
              "| task | reward | target | seed | pool KL / completion [95% CI] | pool KL / token | training KL / "
              "token, last quarter | on target | win rate vs reference [95% CI] |", "|---" * 9 + "|"]
    for r in report["rows"]:
        train = f"{r['kl_last_quarter']:.4f}" if "kl_last_quarter" in r else ""
        lines.append(f"| {r['task']} | {r['reward']} | {r['target']:g} | {r['seed']} | "
                     f"{_ci(r['pool_kl'], r['pool_kl_ci_low'], r['pool_kl_ci_high'])} | {r['pool_kl_per_token']:.4f} | "
                     f"{train} | {_on_target(r)} | {_ci(r['win_rate'], r['ci_low'], r['ci_high'])} |")
    if "pilot" in report:
        p = report["pilot"]
        lines += ["", "## For the pilot's rules (PROTOCOL.md), from the training logs", "",
                  f"- beta scale that would have started each run at the beta that held its KL: "
                  f"{p['beta_scale']:.3g}" if p["beta_scale"] else "- no training logs",
                  f"- latest step at which a run first reached 3/4 of its target: {p['latest_reached_step']}"
                  + (f" (never reached: {', '.join(p['not_reached'])})" if p["not_reached"] else ""),
                  "- every run held the target: " + ", ".join(f"{t}: {'yes' if h else 'no'}"
                                                               for t, h in p["held"].items()),
                  "- last quarter's training KL per token, by target: " + "; ".join(
                      f"{t}: {', '.join(f'{v:.4f}' for v in vs)}" for t, vs in p["kl_last_quarter"].items()),
                  f"- mean step time: {p['step_time_s']:.1f} s" if p["step_time_s"] else "- no step times", ""]
    off = [f"{r['task']} {r['label']}" for r in report["rows"] if r.get("off_target")]
    if len(off) > len(report["rows"]) / 3 and not design["pilot"]:  # PROTOCOL.md: then the verdict is qualified
        lines += [f"**{len(off)} of {len(report['rows'])} runs are off target: the controller did not hold the "
                  "design's KLs at this scale, and the verdict is qualified by that.**"]
    lines += ["", "Win rates: the unbiased inference-time win rate against the reference under the task's decoding "
              "(ties half), judged on the raw reward, Wilson intervals over prompts. Pool KL: KL(policy || "
              "reference) from the policy's own pool (`iama eval --kl`), per completion and divided by the pool's "
              "mean length. Training KL: TRL's per-token k3 over the last quarter of the logged steps; a run is off "
              f"target when it is more than {OFF_TARGET:.0%} from the target. Contrasts: the mean over seeds of each "
              "reward's win rate; two-stage bootstrap intervals (seeds drawn with replacement, then prompts, the "
              "same prompt resamples for both rewards).", "",
              f"Off target: {', '.join(off)}." if off else "Every run held its target.", ""]
    atomic_write_text(out / "ctrl.md", "\n".join(lines))


def plot(report: dict, out: Path) -> None:
    """Win rate against pool KL per task: one line per reward through the seed-averaged points (two-stage
    intervals), each seed's run faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iama.utils import save_figure

    tasks = list(report["contrasts"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    colors = {"raw": "tab:gray", "identity": "tab:blue", "transformed": "tab:red"}
    for ax, task in zip(axes[0], tasks):
        c = report["contrasts"][task]
        for reward, color in colors.items():
            runs = [r for r in report["rows"] if r["task"] == task and r["reward"] == reward]
            points = sorted((g for g in report["groups"] if g["task"] == task and g["reward"] == reward),
                            key=lambda g: g["pool_kl"])
            if not points:
                continue
            ax.scatter([r["pool_kl"] for r in runs], [r["win_rate"] for r in runs], color=color, alpha=0.3, s=14)
            name = {"raw": "raw reward", "identity": "calibrated", "transformed": f"calibrated, {c['transform']}"}
            y = np.array([[g["win_rate"], g["ci_low"], g["ci_high"]] for g in points])
            ax.errorbar([g["pool_kl"] for g in points], y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]],
                        marker="o", color=color, capsize=3, label=name[reward])
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set(title=f"{task} ({c['algorithm']})", xlabel="KL to the reference, nats per completion (pool)",
               ylabel=f"win rate vs reference under {c['algorithm']}")
        ax.legend(fontsize=8)
    save_figure(fig, out / "ctrl.png")


# ---------------------------------------------------------------------------------------------------------------
# the command


def run(args) -> dict:
    import torch

    from iama.trainer import completed

    started = time.perf_counter()
    design = check_design(args)
    out, progress = Path(args.out), not args.quiet
    for task in design["tasks"]:
        check_store(store_path(design, out, task), design["model"])
    record_design(out, design)
    command = "python experiments/ctrl.py " + " ".join(args.argv)
    # children import this checkout's iama, wherever they are started from
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slots = args.jobs or (1 if torch.cuda.is_available() else cores)

    calibrate_tasks(design, out, progress)
    calibrated = time.perf_counter()
    runs = plan_runs(design, out)
    on_file = {(task, label) for task in design["tasks"]
               for label in evaluated(out / task / "eval", [r.label for r in runs if r.task == task],
                                      design["eval_prompts"], design["m"])}
    # a run folder of other settings stops here, before anything trains; a run evaluated already needs no weights
    todo = [r for r in runs if (r.task, r.label) not in on_file and completed(r.cfg) is None]
    # seed by seed: an experiment stopped half way has whole curves of its first seeds
    todo.sort(key=lambda r: design["seeds"].index(r.seed))
    print(f"== {len(runs)} runs ({len(design['tasks'])} tasks x {len(design['rewards'])} rewards x "
          f"{len(design['targets'])} KL targets x {len(design['seeds'])} seeds), {len(runs) - len(todo)} finished, "
          f"{len(todo)} to train, {design['steps']} steps each ==", flush=True)
    for task in design["tasks"]:
        p = json.loads((out / task / "plan.json").read_text())
        print(f"   {task}: transform {p['transform']} ({p['transform_from']}); initial beta " + "; ".join(
            f"{r} " + ", ".join(f"{b:.3g}" for b in bs.values()) for r, bs in p["initial_beta"].items()), flush=True)
    if todo:
        train_runs(todo, out, min(slots, len(todo)), max(1, cores // min(slots, len(todo))), progress)
    trained = time.perf_counter()
    evaluated_now = evaluate_tasks(design, runs, out, slots, cores, progress)
    finished = time.perf_counter()

    report = {"kind": "ctrl-kl", "command": command, "design": design,
              **analyse(design, out, bootstrap=args.bootstrap)}
    atomic_write_json(out / "ctrl.json", json_safe(report))
    write_report(report, out)
    plot(report, out)
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else []
    from iama.utils import machine_info

    timing.append({"trained": len(todo), "evaluated": evaluated_now, "calibrating_s": calibrated - started,
                   "training_s": trained - calibrated, "evaluating_s": finished - trained,
                   "total_s": time.perf_counter() - started, "cores": cores, "jobs": slots, "machine": machine_info()})
    atomic_write_json(out / "timing.json", timing)
    for task, c in report["contrasts"].items():
        if "primary" in c:
            a = c["primary"]["average"]
            print(f"{task}: transformed - raw win rate {_ci(a['mean'], a['ci_low'], a['ci_high'], True)}"
                  + (f": {c['primary']['verdict']}" if "verdict" in c["primary"] else " (pilot)"))
    off = [f"{r['task']}/{r['label']} ({r['off_by']:+.0%})" for r in report["rows"] if r.get("off_target")]
    if off:
        print(f"off target (last quarter's training KL more than {OFF_TARGET:.0%} from the target): {', '.join(off)}")
    print(f"report: {out / 'ctrl.md'}")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # InputError, ConfigError: bad input, one line
        if os.environ.get("IAMA_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

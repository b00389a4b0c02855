"""`iama sweep`: the IAMA paper's main experiment. Over a grid of criterion weights, train GRPO and IAMA at every
weight, evaluate all of them and the untrained model on held-out prompts from one pool each, and compare the
methods' Pareto fronts at N = 1, 2, 4, 8 by hypervolume with paired bootstrap intervals.

For two criteria a weight w gives the first criterion w and the second 1 - w; for more, a weight is a point of
the simplex (W1:W2:...:Wm). `iama` is the config as written with those weights, `grpo` the same config with
`sampling` for every criterion and GRPO's group-mean baseline. Runs train in DIR/runs/METHOD-wW, a queue of
--jobs processes at a time (iama.runs). DIR/sweep.yaml (the config, then `sweep:` with the weights, methods and
evaluation settings) makes the sweep resumable: finished runs are kept, interrupted ones resume from their last
checkpoint, and a DIR of another config is refused. The evaluation (iama.evaluate, with KL to the untrained
model) writes DIR/eval/; this module reads its pools into DIR/report.json, and iama.sweep_report writes
DIR/report.md and DIR/fronts.png.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

METHODS = ("iama", "grpo")
PANEL_NS = (1, 2, 4, 8)


# ---------------------------------------------------------------------------------------------------------------
# the plan: weights, methods, one training config per point


def parse_weights(text: str, m: int) -> list[tuple[float, ...]]:
    """'0.1,0.3' (two criteria: the first one's weight) or '0.2:0.3:0.5,...' (a point of the simplex)."""
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ValueError("--weights is empty; write e.g. 0.1,0.3,0.5,0.7,0.9" + ("" if m == 2 else " as W1:...:Wm"))
    out = {}
    for t in items:
        try:
            parts = [float(x) for x in t.split(":")]
        except ValueError:
            form = " or W1:W2" if m == 2 else " list W1:...:Wm"
            raise ValueError(f"--weights: {t!r} is not a number{form}") from None
        if not all(0 <= v <= 1 for v in parts):
            raise ValueError(f"--weights: {t!r} is outside [0, 1]")
        if len(parts) == 1 and m == 2:
            parts.append(1 - parts[0])
        if len(parts) != m:
            raise ValueError(f"--weights: {t!r} has {len(parts)} weight(s) for {m} criteria; write W1:...:W{m}")
        if abs(sum(parts) - 1) > 1e-6:
            raise ValueError(f"--weights: {t!r} sums to {sum(parts):g}, not 1")
        w = tuple(round(v, 10) for v in parts)
        if point_label("", w) in out:
            raise ValueError(f"--weights: {t!r} is given twice")
        out[point_label("", w)] = w
    return list(out.values())


def default_weights(m: int) -> list[tuple[float, ...]]:
    """0.1, 0.3, ..., 0.9 for two criteria; for m, the simplex lattice of step 1/(m + 2) with no weight zero."""
    if m == 2:
        return [(w, round(1 - w, 10)) for w in (0.1, 0.3, 0.5, 0.7, 0.9)]
    d = m + 2
    return [tuple(round(c / d, 10) for c in comp)
            for comp in itertools.product(range(1, d), repeat=m) if sum(comp) == d]


def point_label(method: str, weights) -> str:
    """'iama-w0.3' (two criteria: the first one's weight), 'grpo-w0.2-0.3-0.5' (more)."""
    shown = weights[:1] if len(weights) == 2 else weights
    return f"{method}-w" + "-".join(f"{w:g}" for w in shown)


def parse_seeds(text) -> list[int] | None:
    """'0,1,2' -> [0, 1, 2]: the training seeds of every point, for intervals over seeds as well as prompts."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        seeds = list(dict.fromkeys(int(t) for t in items))
    except ValueError:
        raise ValueError(f"--seeds: {text!r} is not a list of whole numbers, e.g. 0,1,2") from None
    if len(seeds) < 2:
        raise ValueError(f"--seeds {text!r}: a seed-level interval needs two or more seeds, e.g. 0,1,2; leave "
                         "--seeds out for one run per point (the config's seed)")
    return seeds


def parse_methods(text) -> list[str]:
    names = list(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    if not names:
        raise ValueError(f"--methods is empty; choose from {', '.join(METHODS)}")
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    return [n for n in METHODS if n in names]


@dataclass
class Point:
    label: str  # 'iama-w0.3', or 'iama-w0.3@1' for seed 1 of a sweep over seeds
    method: str
    weights: tuple
    args: list  # `iama train` arguments
    cfg: object  # its TrainConfig
    seed: int | None = None  # None: the config's seed, one run per point


def plan_points(base, config, overrides, weights, methods, runs: Path, seeds=None) -> list[Point]:
    """Every (weight, method[, seed]) in that order (each weight's runs together), its config validated. With
    seeds, point (w, method) is trained once per seed, in runs/METHOD-wW-sSEED. `base`: the config as loaded
    from `config` and `overrides`; each point's config is loaded from its own `iama train` arguments, so that it
    is the config its training process reads."""
    from .config import grpo_overrides, load_config

    points = []
    for w in weights:
        for method in methods:
            for seed in seeds or [None]:
                name = point_label(method, w)
                label, folder = (name, name) if seed is None else (f"{name}@{seed}", f"{name}-s{seed}")
                args = [str(config), *overrides, *(grpo_overrides(base) if method == "grpo" else []),
                        *[f"criteria.{i}.weight={v!r}" for i, v in enumerate(w)],
                        *([f"seed={seed}"] if seed is not None else []), f"output_dir={runs / folder}"]
                points.append(Point(label, method, w, args, load_config(args[0], args[1:]), seed))
    return points


def merge_with_saved(path: Path, base, settings: dict, weights, methods):
    """(weights, methods) of the sweep in `path` (sweep.yaml) joined with these, or these when there is none;
    a sweep of another config or evaluation settings is an error naming the keys that differ."""
    from .config import settings_differ

    if not path.is_file():
        return weights, methods
    saved = yaml.safe_load(path.read_text()) or {}
    before = saved.pop("sweep", None) or {}
    differ = settings_differ(saved, base) + [k for k in settings if before.get(k) != settings[k]]
    if differ:
        raise ValueError(f"{path.parent} holds a sweep of another config ({', '.join(differ)} differ); "
                         "use another --out")
    old = [tuple(w) for w in before.get("weights") or []]
    weights = old + [w for w in weights or [] if point_label("", w) not in {point_label("", o) for o in old}]
    methods = [m for m in METHODS if m in set(before.get("methods") or []) | set(methods or [])]
    return sorted(weights), methods


# ---------------------------------------------------------------------------------------------------------------
# the sweep


def run_sweep(config, overrides=(), *, weights=None, methods=None, jobs=None, out="results/sweep", model=None,
              steps=None, eval_prompts: int = 64, m: int = 16, bootstrap: int = 1000, progress: bool = True,
              command: str | None = None, seeds=None, primary_n: int | None = None,
              eval_offset: int | None = None) -> dict:
    """Train what is missing, evaluate every point and the untrained model, write the report; returns it.
    Everything that can be checked is checked before anything is trained or written. In an `out` that holds a
    sweep of the same config, `weights` and `methods` (default: the sweep's own) add to the sweep's.
    seeds: e.g. '0,1,2', every point trained once per seed, and intervals over seeds and prompts. primary_n: the
    budget of the primary contrast, declared before the run (default: the criteria's largest configured N).
    eval_offset: the first held-out prompt (default: after the config's max_prompts)."""
    import torch

    from .config import ModelSpec, load_config, to_dict
    from .data import collect_prompts
    from .evaluate import evaluate
    from .runs import cpu_cores, train_side_by_side
    from .sweep_report import write_sweep_report
    from .trainer import completed
    from .utils import atomic_write_text, check_bootstrap, check_output_dir, safe_name

    out = Path(out)
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    overrides = [*([f"model={model}"] if model else []), *([f"max_steps={steps}"] if steps is not None else []),
                 *overrides]
    base = load_config(config, overrides)
    k = len(base.criteria)
    if k < 2:
        raise ValueError(f"a sweep needs a config with two or more criteria; {config} has {k}")
    weights = parse_weights(weights, k) if weights is not None else None
    methods = parse_methods(methods) if methods is not None else None
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    need = max(c.algorithm.n or 1 for c in base.criteria)
    if m < need:
        raise ValueError(f"-M {m} samples per prompt cannot estimate N={need} of the criteria; use -M >= {need}")
    check_bootstrap(bootstrap)
    if eval_prompts < 1:
        raise ValueError(f"--eval-prompts must be at least 1, got {eval_prompts}")
    seeds = parse_seeds(seeds)
    check_primary(primary_n, m)
    trained_on = base.max_prompts or 0
    if eval_offset is not None and eval_offset < trained_on:
        raise ValueError(f"--eval-offset {eval_offset} would evaluate on prompts the runs trained on (the first "
                         f"{trained_on}); use --eval-offset >= {trained_on}")
    offset = trained_on if eval_offset is None else eval_offset
    check_output_dir(out, "--out")
    collect_prompts(source=base.prompts, column=base.prompt_column, split=base.prompt_split, limit=eval_prompts,
                    offset=offset)  # held out: the prompts after those trained on
    base.output_dir = str(out / "runs")
    settings = {"eval_prompts": eval_prompts, "m": m,  # what a protocol fixes: a change is another sweep
                **({"seeds": seeds} if seeds else {}), **({"primary_n": primary_n} if primary_n else {}),
                **({"eval_offset": eval_offset} if eval_offset is not None else {})}
    weights, methods = merge_with_saved(out / "sweep.yaml", base, settings, weights, methods)
    weights, methods = weights or default_weights(k), methods or list(METHODS)
    points = plan_points(base, config, overrides, weights, methods, out / "runs", seeds)
    on_file = evaluated_points(out / "eval", [p.label for p in points], eval_prompts, m)
    # a run folder of other settings stops here; a point evaluated already needs no weights
    done = {p.label: True if p.label in on_file else completed(p.cfg) for p in points}
    record = {**to_dict(base), "sweep": {"weights": [list(w) for w in weights], "methods": methods, **settings}}
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(record, sort_keys=False))

    todo = {p.label: (p.args, p.cfg) for p in points if done[p.label] is None}
    print(f"== sweep: {len(points)} points ({', '.join(methods)} at {len(weights)} weights), "
          f"{len(points) - len(todo)} finished, {len(todo)} to train ==", flush=True)
    if todo:
        cores = cpu_cores()
        slots = min(jobs or (1 if torch.cuda.is_available() else cores), len(todo))
        train_side_by_side(todo, threads=max(1, cores // slots), progress=progress, slots=slots)

    print(f"== evaluating {len(points)} points and the untrained model on {eval_prompts} held-out prompts, "
          f"M = {m} samples each, then their KL to the untrained model ==", flush=True)
    # each point's model with the config it was trained with, not read back from its folder
    evaluation = evaluate([f"untrained={base.model}", *[ModelSpec(p.label, str(Path(p.cfg.output_dir) / "final"),
                                                                  p.cfg) for p in points if p.label not in on_file]],
                          pools=[out / "eval" / "pools" / f"{safe_name(k)}.jsonl" for k in on_file],
                          config=base, reference="untrained", prompts=base.prompts,
                          prompt_column=base.prompt_column, prompt_split=base.prompt_split, limit=eval_prompts,
                          offset=offset, m=m, out=out / "eval", bootstrap=bootstrap,
                          progress=progress, kl=True, command=command)
    kl_on_file(evaluation, out / "eval" / "kl.json", on_file)
    report = analyse(out, base, points, evaluation, bootstrap=bootstrap, command=command, config=config,
                     primary_n=primary_n, offset=offset)
    write_sweep_report(report, out)
    for n, entry in report["fronts"].items():
        d = entry["difference"]
        if d:
            print(f"N = {n}: hypervolume {d['minuend']} - {d['subtrahend']} = {d['mean']:.4g} "
                  f"[{d['ci_low']:.4g}, {d['ci_high']:.4g}]" + (" (primary)" if n == str(report["primary"]["n"])
                                                                 else ""))
    print(f"report: {out / 'report.md'}")
    return report


# ---------------------------------------------------------------------------------------------------------------
# the analysis, from the evaluation's pools


def evaluated_points(folder: Path, labels, num_prompts: int, m: int) -> set[str]:
    """The points whose evaluation is on file in `folder` (the sweep's eval/): a pool of `num_prompts` prompts
    with M samples each, and their KL in kl.json. Their weights are no longer needed: a sweep resumed from its
    pools and kl.json alone (e.g. committed, on another machine) trains and samples only the other points."""
    import json

    from .pools import read_pool
    from .utils import safe_name

    cache = folder / "kl.json"
    kl = json.loads(cache.read_text()) if cache.is_file() else {}
    out = set()
    for label in labels:
        path = folder / "pools" / f"{safe_name(label)}.jsonl"
        if label not in kl or not path.is_file():
            continue
        records = [r for r in read_pool(path) if r.get("model") == label]
        if len(records) == num_prompts and all(len(r["candidates"]) == m for r in records):
            out.add(label)
    return out


def kl_on_file(evaluation: dict, cache: Path, labels) -> None:
    """Add the KL of points evaluated in an earlier run (not sampled now) from the per-prompt values in kl.json."""
    import json

    from .stats import positive_mean_ci
    from .utils import json_safe

    kl = evaluation.get("kl")
    if not labels or kl is None:
        return
    saved = json.loads(cache.read_text())
    for label in labels:
        kl["models"][label] = json_safe(positive_mean_ci(np.array(saved[label]["per_prompt"]),
                                                         evaluation["confidence"]))


def check_primary(primary_n, m: int) -> None:
    if primary_n is not None and not 1 <= primary_n <= m:
        raise ValueError(f"--primary-n {primary_n}: the primary contrast's budget must be between 1 and "
                         f"M = {m} (the evaluation's samples per prompt)")


def _values_at(pool, criterion, n: int) -> np.ndarray:
    """(P,) per-prompt values of one criterion under its algorithm's family at N (sampling and tilted do not
    depend on N; majority voting reads the pool's answers)."""
    from .estimate import value_estimates

    alg, i = criterion.algorithm, pool.criteria.index(criterion.name)
    return value_estimates(pool.rewards[:, :, i], alg.family, [n] if alg.increasing is not None else None, rng=0,
                           answers=pool.answers.get(criterion.name))[:, 0]


def analyse(out: Path, base, points: list[Point], evaluation: dict, *, bootstrap: int = 1000,
            confidence: float = 0.95, command=None, config=None, primary_n: int | None = None,
            offset: int | None = None) -> dict:
    """The sweep's report from the evaluation's pools. It leads with the primary contrast (IAMA - GRPO
    hypervolume at primary_n, default the criteria's largest configured N) and the turning contrast
    diff(N_max) - diff(1), both at the nominal level; the other budgets are secondary, with Bonferroni-adjusted
    intervals. Every hypervolume difference is also given above two other reference points (the trained points'
    nadir at that N, the criteria's floors where known), so that a reader sees whether its sign depends on the
    reference. With seeds, a method's quantity is the mean over its seeds and every interval resamples seeds and
    prompts (stats.seed_resample), with the same seed draws at every N."""
    from .estimate import criterion_bounds, objective_bounds, paired_difference
    from .pools import Pool, align_pools, read_pool
    from .fronts import bootstrap_fronts, pearson_bootstrap
    from .objective import Criterion, Objective
    from .stats import bootstrap_weights, percentile_ci, seed_draws, seed_resample, value_ci
    from .utils import json_safe, machine_info, safe_name

    criteria = base.criteria
    names = [c.name for c in criteria]
    configured = [c.algorithm for c in criteria]
    labels = ["untrained", *[p.label for p in points]]
    pools = [Pool.from_records(read_pool(out / "eval" / "pools" / f"{safe_name(k)}.jsonl"), names, k)
             for k in labels]
    pools = dict(zip(labels, align_pools(pools, "untrained")[0]))
    untrained = pools["untrained"].rewards  # (P, M, m)
    num_prompts, m = untrained.shape[0], min(p.m for p in pools.values())
    if base.sweep_reference is not None:
        reference = {"values": [float(v) for v in base.sweep_reference], "from": "sweep_reference in the config"}
    else:
        reference = {"values": untrained.mean(axis=(0, 1)).tolist(), "from": "the untrained model at N = 1"}
    binary = {c.name: all(np.isin(p.rewards[:, :, i], (0.0, 1.0)).all() for p in pools.values())
              for i, c in enumerate(criteria)}
    bounds = [criterion_bounds(c, binary[c.name]) for c in criteria]
    floor = None if any(b is None for b in bounds) else [b[0] for b in bounds]
    seeds = sorted({p.seed for p in points if p.seed is not None})
    methods = list(dict.fromkeys(p.method for p in points))
    # {method: [labels]} for one run per point, {method: [[labels of seed s] for s in seeds]} with seeds
    groups = {method: ([[p.label for p in points if p.method == method and p.seed == s] for s in seeds] if seeds
                       else [p.label for p in points if p.method == method]) for method in methods}
    boot = bootstrap_weights(num_prompts, bootstrap, 0)
    draws = {method: seed_draws(len(seeds), bootstrap, [1, i]) for i, method in enumerate(methods)} if seeds else {}
    primary = primary_n or max(c.algorithm.n or 1 for c in criteria)
    panel = sorted({n for n in (*PANEL_NS, primary) if n <= m})

    fronts, samples = {}, {}
    for n in panel:
        values = {k: np.stack([_values_at(pool, c, n) for c in criteria], axis=1) for k, pool in pools.items()}
        trained = np.array([values[p.label].mean(0) for p in points])
        others = {"nadir": trained.min(axis=0).tolist(), **({"floor": floor} if floor else {})}
        entry = bootstrap_fronts(values, groups, reference["values"], confidence=confidence, boot=boot,
                                 draws=draws, bounds=bounds, references=others)
        samples[n] = entry.pop("samples")
        fronts[str(n)] = entry
    contrasts = _contrasts(fronts, samples, primary, panel, confidence) if {"iama", "grpo"} <= set(methods) else None

    # the weighted objective of each weight, every criterion at its configured algorithm, paired across methods
    at_configured = {k: np.stack([_values_at(pool, c, c.algorithm.n or 1) for c in criteria], axis=1)
                     for k, pool in pools.items()}
    per_weight = []
    for w in dict.fromkeys(p.weights for p in points):
        objective = Objective([Criterion(c.name, c.algorithm, v) for c, v in zip(criteria, w)],
                              aggregator=base.aggregator, gamma=base.gamma, scale_rewards="none")
        obj_bounds = objective_bounds(objective, bounds)
        entry = {"weights": list(w), "values": {}, "difference": None}
        runs = {"untrained": ["untrained"], **{method: [p.label for p in points if p.method == method and
                                                         p.weights == w] for method in methods}}
        per_boot = {}
        for method, members in runs.items():
            point = float(np.mean([objective.aggregate(at_configured[k].mean(0)) for k in members]))
            per_seed = np.stack([objective.aggregate(boot @ at_configured[k]) for k in members])  # (S, B)
            per_boot[method] = seed_resample(per_seed, draws[method]) if len(members) > 1 else per_seed[0]
            if len(members) > 1 or objective.aggregator != "sum":
                lo, hi = percentile_ci(per_boot[method], confidence)
            else:
                ci = value_ci(at_configured[members[0]] @ objective.weights, obj_bounds, confidence)
                lo, hi = ci["ci_low"], ci["ci_high"]
            entry["values"][method] = {"mean": point, "ci_low": float(lo), "ci_high": float(hi)}
        if {"iama", "grpo"} <= set(methods):
            a, b = runs["iama"], runs["grpo"]
            if len(a) == 1 and len(b) == 1:
                entry["difference"] = paired_difference(at_configured[a[0]], at_configured[b[0]], objective, boot,
                                                        confidence, obj_bounds)
            else:
                lo, hi = percentile_ci(per_boot["iama"] - per_boot["grpo"], confidence)
                entry["difference"] = {"mean": entry["values"]["iama"]["mean"] - entry["values"]["grpo"]["mean"],
                                       "ci_low": float(lo), "ci_high": float(hi)}
        per_weight.append(entry)

    correlation = [{"criteria": [names[i], names[j]],
                    **pearson_bootstrap(untrained[:, :, i], untrained[:, :, j], resamples=bootstrap,
                                        confidence=confidence)}
                   for i, j in itertools.combinations(range(len(names)), 2)]
    return json_safe({
        "kind": "iama sweep",
        "command": command,
        "config": _shown(config),
        "criteria": [{"name": c.name, "reward": c.reward, "algorithm": c.algorithm.spec, "weight": c.weight,
                      "family": alg.family, "n": alg.n, "range": None if b is None else list(b)}
                     for c, alg, b in zip(criteria, configured, bounds)],
        "aggregator": base.aggregator,
        "methods": {"iama": "the config as written", "grpo": "sampling for every criterion, group_mean baseline"},
        "seeds": seeds or None,
        "points": {p.label: {"method": p.method, "weights": list(p.weights), "seed": p.seed,
                             "run": f"runs/{Path(p.cfg.output_dir).name}", "max_steps": p.cfg.max_steps}
                   for p in points},
        "evaluation": {"report": "eval/report.md", "num_prompts": num_prompts, "m": m,
                       "offset": (base.max_prompts or 0) if offset is None else offset,
                       "trained_on": base.max_prompts or 0},
        "confidence": confidence,
        "bootstrap": bootstrap,
        "ci_method": {
            "values": "Wilson score interval at the effective sample size on the criterion's range where known "
                      "(stats.bounded_mean_ci), else normal",
            "hypervolume": f"percentile bootstrap over prompts, {bootstrap} resamples, the same for every model "
                           "(differences paired)" + ("; seeds resampled first, the same draws at every N"
                                                     if seeds else ""),
            "secondary": "Bonferroni: each secondary budget's interval at level 1 - (1 - confidence) / k, k the "
                         "number of secondary budgets",
            "trained_model": ("intervals over seeds and prompts (two-stage bootstrap)" if seeds else
                              "one training run per point: the intervals hold the trained models fixed")},
        "reference_point": reference,
        "primary": contrasts,
        "fronts": fronts,
        "objective": {"algorithms": {c.name: c.algorithm.spec for c in criteria}, "per_weight": per_weight},
        "kl": _kl_table(evaluation.get("kl"), pools, points, base),
        "correlation": correlation,
        "machine": machine_info(),
    })


def _contrasts(fronts, samples, primary, panel, confidence) -> dict:
    """The primary contrast (the hypervolume difference IAMA - GRPO at N = primary), the turning contrast
    diff(N_max) - diff(1) (the fronts' order changes with the budget: one paired interval, the same prompt
    resamples and seed draws at both budgets) and the secondary budgets with Bonferroni-adjusted intervals."""
    from .stats import percentile_ci

    def diff(n):
        return samples[n]["iama"] - samples[n]["grpo"]

    out = {"n": primary, "contrast": "hypervolume iama - grpo", **fronts[str(primary)]["difference"]}
    high, low = max(panel), min(panel)
    if high != low:
        lo, hi = percentile_ci(diff(high) - diff(low), confidence)
        mean = fronts[str(high)]["difference"]["mean"] - fronts[str(low)]["difference"]["mean"]
        out["turning"] = {"n_high": high, "n_low": low, "mean": mean, "ci_low": float(lo), "ci_high": float(hi)}
    secondary = [n for n in panel if n != primary]
    level = 1 - (1 - confidence) / max(len(secondary), 1)
    out["secondary"] = {"confidence": level, "adjustment": "Bonferroni", "n": secondary}
    for n in secondary:
        lo, hi = percentile_ci(diff(n), level)
        fronts[str(n)]["difference"]["adjusted"] = {"confidence": level, "ci_low": float(lo), "ci_high": float(hi)}
    return out


def _kl_table(kl, pools, points, base) -> dict | None:
    """Each point's KL to the untrained model from its pool, per completion and per token (the controller's
    unit: TRL's KL is a mean over tokens), flagged where it is off the config's target_kl by more than 25%."""
    if not kl:
        return kl
    target = {p.label: p.cfg.target_kl for p in points}
    for label, e in (kl.get("models") or {}).items():
        tokens = pools[label].num_tokens
        per_token = e["mean"] / float(np.mean(tokens)) if tokens is not None and np.mean(tokens) > 0 else None
        e["per_token"] = per_token
        e["target_kl"] = target.get(label)
        e["off_target"] = (None if per_token is None or not target.get(label)
                           else bool(abs(per_token / target[label] - 1) > 0.25))
    return kl


def _shown(path) -> str:
    """A config as the report shows it, without this machine's paths: `configs/NAME` for a shipped one, else
    relative to the working directory when inside it (config.config_name)."""
    from .config import config_name, resolve_config

    return config_name(resolve_config(path))

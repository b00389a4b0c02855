"""`iama eval`: sample a pool per model, estimate, report.

The settings (EvalSettings, one field per command-line option), the checks that can fail before any model
loads, the orchestration (iama.pools samples and reads pools, iama.estimate turns them into the report's
numbers, iama.report writes report.json, report.md and plots) and the KL of each model to the reference
(iama.kl), which needs the models themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from . import __version__
from .algorithms import parse_algorithm
from .backends import GenerationSettings
from .config import ModelSpec, TrainConfig, check_voting, load_config, parse_model_arg, settings_differ, to_dict
from .data import collect_prompts
from .estimate import estimate, family_of, seed_groups
from .models import check_device_and_dtype
from .pools import (Pool, align_pools, build_rewards, check_prompt_columns, criteria_from_pool_records, fill_answers,
                    pools_from_records, read_pool, sample_pool)
from .report import write_report
from .rewards import check_reward, reward_gives_answers
from .stats import positive_mean_ci
from .utils import atomic_write_json, check_output_dir, json_safe, machine_info, safe_name

# the estimators' public names, importable from iama.evaluate too
from .estimate import (criteria_families, cross_estimates, effective_n, value_estimates,  # noqa: F401
                       win_rate_estimates)


def _option(default, help, **extra):
    """A settings field with its command-line help (TRL's dataclass convention; cli.py reads it)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class EvalSettings:
    """How `iama eval` samples and estimates. Each field is an option of `iama eval` (`--max-new-tokens`, ...);
    generation defaults of None are taken from the first run's config."""

    prompts: str = _option("builtin", "'builtin', a .jsonl/.json/.csv/.txt file or hf:NAME")
    prompt_column: str = _option("prompt", "the prompts' column")
    prompt_split: str = _option("train", "the split of an hf: data set")
    limit: int | None = _option(64, "at most this many prompts")
    offset: int = _option(0, "skip prompts (e.g. those a run trained on)")
    m: int = _option(16, "samples per prompt; every N <= M is estimated from them", flags=("-M", "--m"))
    max_new_tokens: int | None = _option(None, "default: the run's max_completion_length")
    temperature: float | None = _option(None, "default: the run's")
    top_p: float | None = _option(None, "default: the run's")
    top_k: int | None = _option(None, "default: the run's")
    seed: int = _option(0, "sampling and bootstrap seed")
    backend: str = _option("hf", "generation backend", choices=("hf", "vllm"))
    batch_size: int = _option(256, "sequences per generate call")
    dtype: str | None = _option(None, "model dtype, e.g. bfloat16 (default: the model's)")
    device: str | None = _option(None, "default: cuda if available, else cpu")
    out: str = _option("results/eval", "output folder: pools/, report.md, report.json, plots")
    resume: bool = _option(True, "sample the pools again", flags=("--no-resume",))
    bootstrap: int = _option(1000, "bootstrap resamples for the intervals")
    confidence: float = _option(0.95, "confidence level of the intervals")
    plots: bool = _option(True, "no PNG plots", flags=("--no-plots",))
    progress: bool = _option(True, "no progress bars", flags=("--quiet",))
    kl: bool = _option(False, "also the KL of each model to the reference (two forward passes per sample)")


def evaluate(models=(), *, pools=(), config=None, reference: str | None = None, algorithms=None,
             settings: EvalSettings | None = None, command: str | None = None, **overrides) -> dict:
    """Sample a pool of M per prompt for each model (saved to OUT/pools/LABEL.jsonl, resumable), read any
    `pools` files, estimate everything, and write OUT/report.json, OUT/report.md and PNG plots.

    models: run directories, model directories, built-in names or hub ids, or LABEL=PATH (or ModelSpecs, as
    iama.config.parse_model_arg makes them).
    config: a config file, a run directory (iama.config.load_config) or a TrainConfig: its criteria, aggregator,
    gamma and generation settings; default: the first model's run config, else the criteria saved in the pools.
    All models are scored with these criteria's raw rewards.
    algorithms: extra families to evaluate for every criterion, e.g. ['bon', 'won'] ('maj': for the criteria
    with answers only).
    settings: EvalSettings; `overrides` (its field names, e.g. m=8, out='results/x') replace fields of it.
    The prompts' other columns reach the rewards (the `answer` reward's reference column must be there).
    A criterion whose reward gives answers (the `answer` reward) is evaluated under both best-of-N (pass@N on a
    0/1 reward) and majority voting (maj@N), its answer keys stored in the pools; a pool saved without them gets
    them from the candidates' texts where the reward can be built here.
    kl: also estimate each sampled model's KL to the reference model from its pool (iama.kl; plain sampling
    only); it costs two forward passes per sample, about as much as drawing the pools again.
    Returns the report (the content of report.json)."""
    s = _settings(settings, overrides)
    _check_settings(s)
    specs = [a if isinstance(a, ModelSpec) else parse_model_arg(a) for a in models or ()]
    pool_records = [r for path in pools or () for r in read_pool(path)]
    if not specs and not pool_records:
        raise ValueError("nothing to evaluate: give models or --pool files")
    labels = [sp.label for sp in specs] + list(dict.fromkeys(r.get("model", "model") for r in pool_records))
    methods = seed_groups(labels)  # METHOD@SEED labels: a method may be the reference
    if reference is not None and reference not in labels and reference not in methods:
        raise ValueError(f"--reference {reference!r} is not one of the models {labels}")
    run_config, criteria, criteria_source, objective_settings = _criteria_to_evaluate(config, specs, pool_records)
    _check_before_sampling(specs, criteria, algorithms, s.m)
    out = Path(s.out)
    all_pools, prompt_list, generation = [], None, None
    if specs:
        prompt_list, generation, all_pools = _sample_pools(specs, run_config, criteria, objective_settings, s)
    all_pools += _pools_from_files(pool_records, criteria, taken={p.label for p in all_pools})
    aligned, alignment = align_pools(all_pools, methods.get(reference, [reference])[0] if reference else None)
    report = estimate(aligned, criteria, aggregator=objective_settings.get("aggregator", "sum"),
                      gamma=float(objective_settings.get("gamma", 1.0)), reference=reference,
                      algorithms=algorithms or (), confidence=s.confidence, bootstrap=s.bootstrap, seed=s.seed)
    report["kl"] = None
    if s.kl and specs:
        report["kl"] = kl_to_reference(aligned, specs, report["reference_model"], generation, dtype=s.dtype,
                                       device=s.device, confidence=s.confidence, progress=s.progress,
                                       cache=out / "kl.json")
    report["setup"] = {
        "iama_version": __version__, "command": command, "criteria_from": criteria_source,
        "prompts": None if prompt_list is None else {"source": str(s.prompts), "column": s.prompt_column,
                                                      "split": s.prompt_split, "offset": s.offset, "limit": s.limit},
        "alignment": alignment, "seed": s.seed, "backend": s.backend if specs else None,
        "generation": None if generation is None else {"m": s.m, **generation.__dict__},
        "models": {**{sp.label: {"model": sp.model, "run": sp.config is not None,
                                 "pool": f"pools/{safe_name(sp.label)}.jsonl"} for sp in specs},
                   **{p.label: {"model": None, "run": False, "pool": "from --pool"} for p in all_pools
                      if p.label not in {sp.label for sp in specs}}},
        "machine": machine_info(),
    }
    write_report(report, out, plots=s.plots)
    return report


def _check_settings(s: EvalSettings) -> None:
    """The settings that can be wrong whatever the models: one line each, before any model loads."""
    if not 0 < s.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {s.confidence!r}")
    if s.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0 (0: no bootstrap intervals), got {s.bootstrap}")
    check_device_and_dtype(s.device, s.dtype)
    check_output_dir(s.out, "--out")


def _settings(settings, overrides) -> EvalSettings:
    known = {f.name for f in fields(EvalSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown evaluation setting(s) {unknown}; known: {sorted(known)}")
    return replace(settings or EvalSettings(), **overrides)


def _criteria_to_evaluate(config, specs, pool_records):
    """(run config or None, criteria, where they came from, {aggregator, gamma}): from `config`, else the first
    run's config, else the pools'. Every run evaluated must have been trained on the same criteria."""
    if isinstance(config, TrainConfig):
        run_config, source = config, "the config given"
    elif config is not None:
        run_config, source = load_config(config, check_model=False), str(config)
    else:
        run_config = next((s.config for s in specs if s.config is not None), None)
        source = None if run_config is None else "the run config of " + next(
            repr(s.label) for s in specs if s.config is not None)
    if run_config is not None:
        criteria = run_config.criteria
    elif pool_records:
        criteria, source = criteria_from_pool_records(pool_records), "the pool file"
    else:
        raise ValueError("no criteria: pass config (a YAML or run directory with `criteria`) or a run as a model")
    for s in specs:  # weights and algorithms may differ, the rewards may not
        if s.config is not None:
            theirs = {c.name: str(c.reward) for c in s.config.criteria}
            ours = {c.name: str(c.reward) for c in criteria}
            if theirs != ours:
                raise ValueError(f"run {s.label!r} was trained on criteria {theirs}, the evaluation uses {ours}; "
                                 "evaluate models with the same criteria together")
    if run_config is not None:
        settings = {"aggregator": run_config.aggregator, "gamma": float(run_config.gamma)}
    else:
        settings = dict(pool_records[0].get("objective") or {"aggregator": "sum", "gamma": 1.0})
    return run_config, criteria, source, settings


def _check_before_sampling(specs, criteria, algorithms, m):
    """What can be wrong with the request, as one line, before any model loads."""
    for a in algorithms or ():
        family_of(a)  # an unknown algorithm
    if not specs:
        return  # pools alone: their saved answers count
    check_voting(criteria)  # maj on a reward that gives no answers
    voting = [a for a in algorithms or () if parse_algorithm(a, n=1).needs_answers]
    if voting and not any(reward_gives_answers(c.reward) for c in criteria):
        raise ValueError(f"algorithm {voting[0]} votes on answers, and no criterion's reward gives them (a reward "
                         "with an `answers(completions)` method, such as 'answer', does)")
    need = max([c.algorithm.n or 1 for c in criteria])
    if m < need:
        raise ValueError(f"M={m} samples per prompt cannot estimate N={need} of the criteria; use M >= {need}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; name them LABEL=PATH")
    check_seeds(specs)
    for c in criteria:
        check_reward(c.reward)


def check_seeds(specs) -> None:
    """Seeds of one method (labels METHOD@SEED) must be runs of one config but for their seed: the first run that
    differs is named, with the settings in which it does."""
    for method, labels in seed_groups([s.label for s in specs]).items():
        runs = [s for s in specs if s.label in labels]
        first = next((s for s in runs if s.config is not None), None)
        for s in runs:
            if s is first or first is None or s.config is None:
                continue
            differ = [k for k in settings_differ(to_dict(first.config), s.config) if k != "seed"]
            if differ:
                raise ValueError(f"{s.label} ({s.model}) is not a seed of the same method as {first.label}: "
                                 f"{', '.join(differ)} differ")


def _sample_pools(specs, run_config, criteria, objective_settings, s: EvalSettings):
    """(prompts, generation settings, one Pool per model): each model's pool of M per prompt, sampled and scored
    into OUT/pools/LABEL.jsonl (resumable)."""
    from .backends import make_backend  # looked up when called: a stub in iama.backends reaches it

    prompt_list = collect_prompts(source=s.prompts, column=s.prompt_column, split=s.prompt_split, limit=s.limit,
                                  offset=s.offset)
    check_prompt_columns(criteria, prompt_list, s.prompts)  # e.g. the `answer` reward's reference column
    generation = GenerationSettings.from_run_config(run_config, max_new_tokens=s.max_new_tokens,
                                                    temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    names, pools, reward_fns = [c.name for c in criteria], [], None
    for spec in specs:
        gen = make_backend(spec.model, s.backend, dtype=s.dtype, device=s.device, batch_size=s.batch_size,
                           seed=s.seed)
        if reward_fns is None:
            reward_fns = build_rewards(criteria, gen.tokenizer)
        records = sample_pool(gen, prompt_list, criteria, reward_fns, m=s.m, settings=generation, seed=s.seed,
                              label=spec.label, path=Path(s.out) / "pools" / f"{safe_name(spec.label)}.jsonl",
                              resume=s.resume, progress=s.progress, model_arg=spec.model,
                              objective=objective_settings)
        del gen
        pools.append(Pool.from_records(records, names, spec.label))
    return prompt_list, generation, pools


def _pools_from_files(pool_records, criteria, taken):
    """The Pools of --pool files' records; a pool saved without answers gets them from its texts where the
    reward can be built here."""
    if not pool_records:
        return []
    fill_answers(pool_records, criteria)
    pools = pools_from_records(pool_records, [c.name for c in criteria])
    for pool in pools:
        if pool.label in taken:
            raise ValueError(f"model label {pool.label!r} appears both as a model and in a pool file")
    return pools


def kl_to_reference(pools: list[Pool], specs, reference: str | None, settings, *, dtype=None, device=None,
                    confidence: float = 0.95, progress: bool = False, cache=None) -> dict | None:
    """KL(model || reference) of every sampled model but the reference, from its own pool (iama.kl), as
    {"reference", "models": {label: {mean, ci_low, ci_high, se}}, "note"}; None without a reference model.
    cache: a JSON file of per-prompt KLs, reused for a model whose pool, model and reference are unchanged (an
    evaluation run again, e.g. a finished sweep's report, does not pay the forward passes again)."""
    from tqdm.auto import tqdm

    from .backends import HFBackend
    from .kl import plain_sampling, pool_kl

    models = {s.label: s.model for s in specs}
    if reference not in models:
        return None
    result = {"reference": reference, "models": {}, "note": None}
    if not plain_sampling(asdict(settings)):
        result["note"] = "not estimated: the pools were not drawn by plain sampling (temperature 1, no truncation)"
        return result
    saved = json.loads(Path(cache).read_text()) if cache is not None and Path(cache).is_file() else {}
    ref = None
    for pool in tqdm([p for p in pools if p.label != reference and p.label in models], desc=f"KL to {reference}",
                     unit="model", disable=not progress):
        samples = [[r["prompt"], [c.get("ids") for c in r["candidates"]]] for r in pool.records]
        key = hashlib.sha256(json.dumps([models[pool.label], models[reference], str(dtype), samples],
                                        default=str).encode()).hexdigest()
        if saved.get(pool.label, {}).get("key") != key:
            ref = ref or HFBackend(models[reference], dtype=dtype, device=device)
            policy = HFBackend(models[pool.label], dtype=dtype, device=device)
            saved[pool.label] = {"key": key, "per_prompt": pool_kl(pool.records, policy, ref).tolist()}
            del policy
            if cache is not None:
                atomic_write_json(cache, saved)
        result["models"][pool.label] = json_safe(positive_mean_ci(np.array(saved[pool.label]["per_prompt"]),
                                                                   confidence))
    return result

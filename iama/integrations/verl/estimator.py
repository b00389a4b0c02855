"""The iama estimators for verl: verl's `algorithm` config -> an `iama.Objective`, each criterion's rewards from the
batch, the objective's advantages broadcast over the response tokens, and the step's metrics; and their registration
with verl's `register_adv_est` (see the package's docstring for the keys and what they mean).

What verl's dispatcher does not hand the estimator (compute_score's keys, the v1 trainer's padding rows) the patches
in `patches` give it, through `estimator_sees`.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections import ChainMap, deque
from typing import NamedTuple

import numpy as np
import torch

from ...algorithms import BestOfN, SoftBestOfN, Tilted, WorstOfN, parse_algorithm
from ...objective import AGGREGATORS, BASELINES, SCALES, Criterion, Objective, parse_criteria
from ...steps import INVALID_REWARDS, apply_policy, step_metrics

try:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
except ImportError as e:  # pragma: no cover - exercised by tests/test_verl.py in an environment without verl
    raise ImportError(
        "iama.integrations.verl is the plugin for verl, and verl is not installed: pip install 'iama[verl]'"
    ) from e

PLUGIN = __name__.rpartition(".")[0]  # iama.integrations.verl
# What each registered name reads from verl's `algorithm` config, beyond the objective's common keys.
COMMON_KEYS = ("iama_estimator", "iama_baseline", "iama_scale_rewards", "iama_invalid_rewards")
ESTIMATORS = {
    "iama": ("iama_algorithm", "iama_criteria", "iama_aggregator", "iama_gamma"),
    "iama_bon": ("iama_n",),
    "iama_won": ("iama_n",),
    "iama_soft_bon": ("iama_n", "iama_temperature"),
    "iama_tilted": ("iama_temperature",),
}
ALL_KEYS = frozenset(COMMON_KEYS).union(*ESTIMATORS.values())
DEFAULT_N = 4
# The field name a criterion of the `iama` estimator may set to take its reward from verl's non_tensor_batch.
REWARD_KEY = "key"
# A criterion's fields here, as Criterion's: the reward is the key (None: verl's own); no calibration (iama train's)
CRITERION_FIELDS = {"name": "name", "algorithm": "algorithm", "weight": "weight", REWARD_KEY: "reward"}


# ---------------------------------------------------------------------------------------------------------------
# reading verl's algorithm config (an OmegaConf DictConfig in verl's trainers; a dict or None also works)


def _plain(value):
    """OmegaConf containers -> plain Python (lists and dicts), anything else as is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with verl
        pass
    return value


def setting(config, key, default=None):
    """algorithm.KEY of verl's config as plain Python; `default` where it is unset or null."""
    if config is None:
        return default
    value = config.get(key, None)
    return default if value is None else _plain(value)


def _check_keys(name, config):
    if config is None:
        return
    allowed = set(COMMON_KEYS) | set(ESTIMATORS[name])
    given = {str(k) for k in config if str(k).startswith("iama_") and config.get(k, None) is not None}
    unknown = sorted(given - ALL_KEYS)
    if unknown:
        raise ValueError(f"algorithm.{unknown[0]}: not an iama key; the keys are {sorted(ALL_KEYS)}")
    foreign = sorted(given - allowed)
    if foreign:
        users = [n for n, keys in ESTIMATORS.items() if foreign[0] in keys]
        raise ValueError(f"algorithm.{foreign[0]} is read by adv_estimator={' or '.join(users)}, not by "
                         f"adv_estimator={name}; drop it or switch estimator")


def _n(config):
    n = setting(config, "iama_n", DEFAULT_N)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"algorithm.iama_n must be a positive integer, got {n!r}")
    return int(n)


def _temperature(name, config):
    tau = setting(config, "iama_temperature")
    if tau is None:
        raise ValueError(f"adv_estimator={name} needs a temperature: set +algorithm.iama_temperature=0.1 (for example)")
    return float(tau)


def objective_from_config(name: str, config=None) -> tuple[Objective, list[str | None]]:
    """The objective that estimator `name` computes under verl's `algorithm` config, and for each criterion the
    non_tensor_batch key its reward comes from (None: verl's own outcome reward)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown iama estimator {name!r}; the estimators are {sorted(ESTIMATORS)}")
    _check_keys(name, config)
    if name == "iama":
        spec, listed = setting(config, "iama_algorithm"), setting(config, "iama_criteria")
        if (spec is None) == (listed is None):
            raise ValueError(
                "adv_estimator=iama needs exactly one of +algorithm.iama_algorithm=ALGORITHM (one criterion on verl's "
                "reward; ALGORITHM is sampling, bon:N, won:N, soft_bon:N:TAU or tilted:TAU) and "
                "+algorithm.iama_criteria=[{name, algorithm, weight, key}, ...]"
            )
        if spec is not None:
            criteria, keys = [Criterion("reward", parse_algorithm(spec))], [None]
        else:
            try:
                criteria = parse_criteria(listed, fields=CRITERION_FIELDS)
            except ValueError as e:
                raise ValueError(f"algorithm.iama_criteria: {e}") from None
            keys = [None if c.reward is None else str(c.reward) for c in criteria]
        voting = next((c for c in criteria if c.algorithm.needs_answers), None)
        if voting is not None:  # refused here, before any reward is read, rather than by the objective's call
            raise ValueError(f"criterion {voting.name!r} uses {voting.algorithm.spec}, which votes on each sample's "
                             "answer, and verl gives the estimator none: choose an algorithm that does not vote")
        aggregator, gamma = setting(config, "iama_aggregator", "sum"), float(setting(config, "iama_gamma", 1.0))
    else:
        algorithm = {"iama_bon": lambda: BestOfN(_n(config)), "iama_won": lambda: WorstOfN(_n(config)),
                     "iama_soft_bon": lambda: SoftBestOfN(_n(config), _temperature(name, config)),
                     "iama_tilted": lambda: Tilted(_temperature(name, config))}[name]()
        criteria, keys, aggregator, gamma = [Criterion("reward", algorithm)], [None], "sum", 1.0
    default_scale = "group" if setting(config, "norm_adv_by_std_in_grpo", True) else "none"
    settings = {"estimator": setting(config, "iama_estimator", "unbiased"),
                "baseline": setting(config, "iama_baseline", "loo"),
                "scale_rewards": setting(config, "iama_scale_rewards", default_scale), "aggregator": aggregator}
    for what, allowed in (("estimator", ("unbiased", "plugin")), ("baseline", BASELINES),
                          ("scale_rewards", SCALES), ("aggregator", AGGREGATORS)):
        if settings[what] not in allowed:
            raise ValueError(f"algorithm.iama_{what}={settings[what]!r}: choose one of {allowed}")
    invalid_policy(config)
    return Objective(criteria, gamma=gamma, **settings), keys


def invalid_policy(config) -> str:
    """algorithm.iama_invalid_rewards: what a NaN, None, inf or non-number reward does (`iama train`'s rule)."""
    policy = setting(config, "iama_invalid_rewards", "stop")
    if policy not in INVALID_REWARDS:
        raise ValueError(f"algorithm.iama_invalid_rewards={policy!r}: choose one of {INVALID_REWARDS}")
    return policy


# ---------------------------------------------------------------------------------------------------------------
# the estimator

class _Rows(NamedTuple):
    """What the patches know of the batch being estimated, beyond verl's arguments."""

    fields: object  # compute_score's keys (and verl's other per-sample fields) -> arrays in the batch's row order
    returned: list | None = None  # the keys compute_score returned, where known (for the error that lists them)
    padding: np.ndarray | None = None  # the v1 trainer's synthetic no-op rows (its uid is their own): not samples


_ROWS: contextvars.ContextVar = contextvars.ContextVar("iama_verl_rows", default=None)
# The metrics of each advantage step until verl next computes its data metrics (bounded, should it never).
_METRICS: deque = deque(maxlen=64)
# How several advantage steps before one metrics step combine (the v1 trainer may run several per step).
_REDUCE = {"iama/dropped_samples": np.nansum, "iama/advantage_abs_max": np.nanmax}


@contextlib.contextmanager
def estimator_sees(fields, returned=None, padding=None):
    """Within it, an iama estimator sees these rows of the batch it is called on (the patches' way in)."""
    outer = _ROWS.get()
    if outer is not None:  # the v1 trainer's, under the dispatcher's own batch (the same rows, in the same order)
        fields = ChainMap(fields, outer.fields)
        returned = outer.returned if returned is None else returned
        padding = outer.padding if padding is None else padding
    token = _ROWS.set(_Rows(fields, None if returned is None else list(returned), padding))
    try:
        yield
    finally:
        _ROWS.reset(token)


def group_positions(index) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Each row's group (numbered by first appearance) and its position within the group (in batch order), the
    number of groups and the largest group. `index` is verl's per-row uid array; rows of a group need not be
    adjacent."""
    ids: dict = {}
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    group = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))
    counts = np.bincount(group, minlength=len(ids))
    order = np.argsort(group, kind="stable")
    position = np.empty_like(group)
    position[order] = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
    return group, position, len(ids), int(counts.max(initial=0))


def _column(values, n, what, policy, padding) -> np.ndarray:
    """(n,) float64 rewards from per-sample values under the invalid-reward policy (iama.steps), NaN on padding
    rows; `what` names the reward in the error under 'stop'."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"iama: {what} has {array.size} values for {n} rows")
    return apply_policy(array, policy, padding=padding, refuse=lambda bad: ValueError(
        f"iama: {what} is NaN, None, inf or not a number for {len(bad)} of {n} samples (first: "
        f"{array.tolist()[bad[0]]!r}); set +algorithm.iama_invalid_rewards=drop to drop such samples "
        "(counted as iama/dropped_samples)"))


def _criterion_rewards(keys, names, token_level_rewards, rows, policy, padding) -> np.ndarray:
    """(B, m) float64 rewards, one column per criterion: verl's outcome reward, or compute_score's key."""
    outcome = token_level_rewards.detach().sum(dim=-1).cpu().double().numpy()
    n, wanted = len(outcome), [k for k in keys if k is not None]
    fields, returned = (rows.fields, rows.returned) if rows is not None else (None, None)
    if wanted and fields is None:
        raise ValueError(
            f"iama criteria read compute_score's keys {wanted}, but no per-sample fields reached the estimator: "
            "call it through verl's compute_advantage (which this plugin patches when verl is imported) or pass "
            "non_tensor_batch="
        )
    missing = [k for k in dict.fromkeys(wanted) if k not in fields]
    if missing:
        there = f"compute_score returned {sorted(returned)}" if returned is not None else \
            f"the batch's per-sample fields are {sorted(fields)}"
        raise ValueError(f"iama criteria read {missing} from compute_score's dict, which has no such key: {there}. "
                         "Name one of those as the criterion's key, or return the key from compute_score")
    return np.stack([_column(outcome, n, "verl's reward (token_level_rewards)", policy, padding) if key is None else
                     _column(fields[key], n, f"criterion {name!r} (compute_score's {key!r})", policy, padding)
                     for key, name in zip(keys, names, strict=True)], axis=-1)


def take_metrics() -> dict:
    """The metrics of the advantage steps since the last call (several: averaged; dropped samples: summed)."""
    steps = list(_METRICS)
    _METRICS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(_REDUCE.get(k, np.nanmean)([s.get(k, np.nan) for s in steps]))
                for k in dict.fromkeys(k for s in steps for k in s)}


def compute_advantages(name, token_level_rewards, response_mask, index=None, config=None, non_tensor_batch=None):
    """(advantages, returns), both (B, T): the objective's advantage of each response, on every response token."""
    if index is None:
        raise ValueError(f"adv_estimator={name} needs verl's `uid` per sample to form the groups of one prompt")
    if setting(config, "use_kl_in_reward", False):
        raise ValueError(
            f"adv_estimator={name} keeps the KL term out of the reward: set algorithm.use_kl_in_reward=False and "
            "put the KL in the actor's loss (actor_rollout_ref.actor.use_kl_loss=True, "
            "actor_rollout_ref.actor.kl_loss_coef)"
        )
    objective, keys = objective_from_config(name, config)
    rows = _ROWS.get()
    if non_tensor_batch is not None:  # verl passed it (verl#7473): it comes first
        rows = _Rows(non_tensor_batch) if rows is None else \
            rows._replace(fields=ChainMap(non_tensor_batch, rows.fields))
    padding = np.zeros(token_level_rewards.shape[0], dtype=bool)
    if rows is not None and rows.padding is not None and len(rows.padding) == len(padding):
        padding = np.asarray(rows.padding, dtype=bool)
    rewards = _criterion_rewards(keys, [c.name for c in objective.criteria], token_level_rewards, rows,
                                 invalid_policy(config), padding)
    group, position, n_groups, largest = group_positions(index)
    if len(group) != rewards.shape[0]:
        raise ValueError(f"index has {len(group)} entries for {rewards.shape[0]} rows")
    grouped = np.full((n_groups, largest, rewards.shape[1]), np.nan)  # NaN pads groups shorter than the largest
    grouped[group, position] = rewards
    estimates = objective(grouped)
    advantages = np.asarray(estimates.advantages)[group, position]
    _METRICS.append(step_metrics(objective, estimates, rewards, advantages, padding))
    per_sample = torch.as_tensor(advantages, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    scores = per_sample.unsqueeze(-1) * response_mask
    return scores, scores


def _make_estimator(name):
    def estimator(token_level_rewards, response_mask, index=None, config=None, non_tensor_batch=None, **kwargs):
        with torch.no_grad():
            return compute_advantages(name, token_level_rewards, response_mask, index, config, non_tensor_batch)

    estimator.__name__ = estimator.__qualname__ = f"compute_{name}_advantage"
    estimator.__doc__ = f"verl advantage estimator {name!r} (iama.integrations.verl); see that module's docstring."
    estimator.__module__ = PLUGIN  # where verl's plugin settings and users name it
    estimator._iama_plugin = True
    return estimator


def register() -> None:
    """Register every estimator in ESTIMATORS with verl (done when the plugin is imported). Registering again
    replaces our own earlier functions; a name that another package registered stays an error, as verl makes it."""
    for name in ESTIMATORS:
        fn = _make_estimator(name)
        if getattr(ADV_ESTIMATOR_REGISTRY.get(name), "_iama_plugin", False):
            ADV_ESTIMATOR_REGISTRY[name] = fn
        else:
            register_adv_est(name)(fn)



"""verl plugin: the iama objective as verl advantage estimators.

Importing this module registers, with verl's `register_adv_est`, the estimators

    iama            any objective: algorithm.iama_algorithm (one criterion) or algorithm.iama_criteria
                    (a list of {name, algorithm, weight, key}, with iama_aggregator and iama_gamma)
    iama_bon        best-of-N,      N = algorithm.iama_n (default 4)
    iama_won        worst-of-N,     N = algorithm.iama_n (default 4)
    iama_soft_bon   soft best-of-N, N = algorithm.iama_n (default 4), tau = algorithm.iama_temperature (required)
    iama_tilted     tilting,        tau = algorithm.iama_temperature (required)

verl imports it by itself in every process that imports verl: through the `verl.plugins` entry point that
`pip install 'iama[verl]'` installs (unless VERL_USE_EXTERNAL_PLUGINS=none, or a list without `iama`), or
through VERL_USE_EXTERNAL_MODULES=iama.integrations.verl. verl hides a plugin's import error, so check with

    python -c "import verl; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; \
               print(sorted(k for k in R if 'iama' in k))"

Select one with `algorithm.adv_estimator=iama_bon +algorithm.iama_n=4`, or
`algorithm.adv_estimator=iama +algorithm.iama_algorithm=bon:4`. Other keys, all under `algorithm` (new keys
need hydra's `+`): iama_estimator (unbiased | plugin), iama_baseline (loo | group_mean | none), iama_scale_rewards
(none | group | batch; default: group when verl's algorithm.norm_adv_by_std_in_grpo is true, as it is by default,
else none), iama_aggregator (sum | min | smoothmin) and iama_gamma for several criteria, iama_invalid_rewards
(stop | drop; below). Every other key is the same-named argument of `iama.Objective`, so the advantages are
exactly `Objective(...)(rewards).advantages` on the groups verl forms by `uid`, whatever their order in the batch,
broadcast over the response tokens.

Rewards. A criterion's reward is verl's outcome reward (token_level_rewards summed over the response, as verl's
GRPO reads it), or, when the criterion names a `key`, that entry of the dict your compute_score returns (verl keeps
it per sample in the batch's non_tensor_batch). A reward that is NaN, None, inf or not a number stops the run
naming it, or, with algorithm.iama_invalid_rewards=drop, drops the sample from its group and counts it, as in
`iama train`. The KL term stays with the actor's KL loss: algorithm.use_kl_in_reward=true is refused, because
best-of-N of (reward - KL) is a different objective.

verl 0.9. Its dispatcher, compute_advantage, hands a registered estimator token_level_rewards, response_mask,
config, index and reward_baselines, but non_tensor_batch only to its own 'gdpo' (verl-project/verl#7473 would pass
it to every estimator that accepts it). So, in each process, as verl's modules are imported, this module:
  - wraps compute_advantage so that, for iama's estimators only, the estimator sees the batch's non_tensor_batch;
    not applied where a probe finds that verl passes non_tensor_batch itself (#7473); logged once;
  - wraps the v1 trainer's advantage step (trainer.use_v1, verl 0.9's default), which reads only uid, rm_scores
    and log-probs from its TransferQueue, to fetch compute_score's keys as well, for iama criteria with a `key`;
  - adds iama's metrics to compute_data_metrics: iama/NAME/reward (mean reward), iama/NAME/ALGORITHM (value under
    the algorithm), iama/objective, iama/dropped_samples, iama/advantage_abs_max.
Other estimators, and the rest of verl's config, go through verl's own code unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.abc
import importlib.machinery
import logging
import math
import numbers
import sys
import warnings
from collections import ChainMap, deque
from enum import Enum
from typing import NamedTuple

import numpy as np
import torch

from ..algorithms import BestOfN, SoftBestOfN, Tilted, WorstOfN, parse_algorithm
from ..objective import AGGREGATORS, BASELINES, SCALES, Criterion, Objective, parse_criteria

try:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
except ImportError as e:  # pragma: no cover - exercised by tests/test_verl.py in an environment without verl
    raise ImportError(
        "iama.integrations.verl is the plugin for verl, and verl is not installed: pip install 'iama[verl]'"
    ) from e

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
INVALID_REWARDS = ("stop", "drop")  # as `iama train`: stop naming the reward, or drop the sample
logger = logging.getLogger(__name__)


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


def _get(config, key, default=None):
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
    n = _get(config, "iama_n", DEFAULT_N)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"algorithm.iama_n must be a positive integer, got {n!r}")
    return int(n)


def _temperature(name, config):
    tau = _get(config, "iama_temperature")
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
        spec, listed = _get(config, "iama_algorithm"), _get(config, "iama_criteria")
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
        aggregator, gamma = _get(config, "iama_aggregator", "sum"), float(_get(config, "iama_gamma", 1.0))
    else:
        algorithm = {"iama_bon": lambda: BestOfN(_n(config)), "iama_won": lambda: WorstOfN(_n(config)),
                     "iama_soft_bon": lambda: SoftBestOfN(_n(config), _temperature(name, config)),
                     "iama_tilted": lambda: Tilted(_temperature(name, config))}[name]()
        criteria, keys, aggregator, gamma = [Criterion("reward", algorithm)], [None], "sum", 1.0
    default_scale = "group" if _get(config, "norm_adv_by_std_in_grpo", True) else "none"
    settings = {"estimator": _get(config, "iama_estimator", "unbiased"),
                "baseline": _get(config, "iama_baseline", "loo"),
                "scale_rewards": _get(config, "iama_scale_rewards", default_scale), "aggregator": aggregator}
    for what, allowed in (("estimator", ("unbiased", "plugin")), ("baseline", BASELINES),
                          ("scale_rewards", SCALES), ("aggregator", AGGREGATORS)):
        if settings[what] not in allowed:
            raise ValueError(f"algorithm.iama_{what}={settings[what]!r}: choose one of {allowed}")
    invalid_policy(config)
    return Objective(criteria, gamma=gamma, **settings), keys


def invalid_policy(config) -> str:
    """algorithm.iama_invalid_rewards: what a NaN, None, inf or non-number reward does (`iama train`'s rule)."""
    policy = _get(config, "iama_invalid_rewards", "stop")
    if policy not in INVALID_REWARDS:
        raise ValueError(f"algorithm.iama_invalid_rewards={policy!r}: choose one of {INVALID_REWARDS}")
    return policy


# ---------------------------------------------------------------------------------------------------------------
# the estimator

class _Rows(NamedTuple):
    """What the patches below know of the batch being estimated, beyond verl's arguments (see "verl 0.9" above)."""

    fields: object  # compute_score's keys (and verl's other per-sample fields) -> arrays in the batch's row order
    returned: list | None = None  # the keys compute_score returned, where known (for the error that lists them)
    padding: np.ndarray | None = None  # the v1 trainer's synthetic no-op rows (its uid is their own): not samples


_ROWS: contextvars.ContextVar = contextvars.ContextVar("iama_verl_rows", default=None)
# The metrics of each advantage step until verl next computes its data metrics (bounded, should it never).
_METRICS: deque = deque(maxlen=64)
# How several advantage steps before one metrics step combine (the v1 trainer may run several per step).
_REDUCE = {"iama/dropped_samples": np.nansum, "iama/advantage_abs_max": np.nanmax}


@contextlib.contextmanager
def _rows(fields, returned=None, padding=None):
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


def _number(value) -> float:
    """A real number as float, else NaN. A numeric string counts: verl's np.array turns a column that holds one
    string into strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return float(value) if isinstance(value, numbers.Real) else math.nan


def _column(values, n, what, policy, padding) -> np.ndarray:
    """(n,) float64 rewards from per-sample values, NaN on padding rows. NaN, None, inf or a non-number is invalid:
    'stop' raises naming `what`; 'drop' makes it NaN, and the objective drops the sample from its group."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"iama: {what} has {array.size} values for {n} rows")
    items = array.tolist()
    if array.dtype.kind in "biuf":
        out = array.astype(np.float64)
    else:  # objects (a None, a label) or strings
        out = np.array([_number(v) for v in items], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out) & ~padding)
    if len(bad) and policy == "stop":
        raise ValueError(f"iama: {what} is NaN, None, inf or not a number for {len(bad)} of {n} samples (first: "
                         f"{items[bad[0]]!r}); set +algorithm.iama_invalid_rewards=drop to drop such samples "
                         "(counted as iama/dropped_samples)")
    out[bad] = math.nan
    out[padding] = math.nan
    return out


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


def _step_metrics(objective, rewards, estimates, advantages, padding) -> dict:
    """verl metrics of one advantage step: each criterion's mean reward and value under its algorithm, and more."""
    dropped = np.isnan(rewards).any(-1) & ~padding  # (the objective's own count also has the groups' NaN padding)
    out = {"iama/objective": estimates.objective, "iama/dropped_samples": float(dropped.sum()),
           "iama/advantage_abs_max": float(np.abs(advantages).max(initial=0.0))}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a criterion with no valid sample: NaN, said quietly
        for i, c in enumerate(objective.criteria):
            out[f"iama/{c.name}/reward"] = float(np.nanmean(rewards[:, i]))
            out[f"iama/{c.name}/{c.algorithm.spec}"] = float(np.nanmean(estimates.values[..., i]))
    return out


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
    if _get(config, "use_kl_in_reward", False):
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
    _METRICS.append(_step_metrics(objective, rewards, estimates, advantages, padding))
    per_sample = torch.as_tensor(advantages, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    scores = per_sample.unsqueeze(-1) * response_mask
    return scores, scores


def _make_estimator(name):
    def estimator(token_level_rewards, response_mask, index=None, config=None, non_tensor_batch=None, **kwargs):
        with torch.no_grad():
            return compute_advantages(name, token_level_rewards, response_mask, index, config, non_tensor_batch)

    estimator.__name__ = estimator.__qualname__ = f"compute_{name}_advantage"
    estimator.__doc__ = f"verl advantage estimator {name!r} (iama.integrations.verl); see that module's docstring."
    estimator._iama_plugin = True
    return estimator


def register() -> None:
    """Register every estimator in ESTIMATORS with verl (done on import). Registering again replaces our own
    earlier functions; a name that another package registered stays an error, as verl makes it."""
    for name in ESTIMATORS:
        fn = _make_estimator(name)
        if getattr(ADV_ESTIMATOR_REGISTRY.get(name), "_iama_plugin", False):
            ADV_ESTIMATOR_REGISTRY[name] = fn
        else:
            register_adv_est(name)(fn)


# ---------------------------------------------------------------------------------------------------------------
# verl 0.9: the patches (see the module docstring). Each wraps one verl function, once per process, right after its
# module is first imported (or at once, if it already is), and hands every other estimator to verl's code as is.

PROBE = "_iama_probe"


def _estimator_name(adv_estimator):
    """The iama estimator that verl's adv_estimator names (a string or verl's enum), else None."""
    name = adv_estimator.value if isinstance(adv_estimator, Enum) else adv_estimator
    return name if isinstance(name, str) and name in ESTIMATORS else None


def _replace(module, attr, old, new) -> None:
    """module.attr = new, also in the loaded verl modules that imported `old` by name."""
    new._iama_patch = True
    setattr(module, attr, new)
    for name, other in list(sys.modules.items()):
        if name.startswith("verl.") and other is not None and vars(other).get(attr) is old:
            setattr(other, attr, new)


def passes_non_tensor_batch(dispatcher) -> bool | None:
    """Whether verl's dispatcher hands non_tensor_batch to a registered estimator that accepts it (verl#7473),
    asked of the dispatcher itself on a one-row batch; None if the probe fails."""
    from omegaconf import OmegaConf
    from verl import DataProto

    seen = []

    def probe(token_level_rewards, response_mask, non_tensor_batch=None, **kwargs):
        seen.append(non_tensor_batch is not None)
        return torch.zeros_like(token_level_rewards), torch.zeros_like(token_level_rewards)

    ADV_ESTIMATOR_REGISTRY[PROBE] = probe
    try:
        one = torch.ones(1, 1)
        data = DataProto.from_dict(tensors={"token_level_rewards": 0 * one, "response_mask": one},
                                   non_tensors={"uid": np.array(["probe"], dtype=object)})
        dispatcher(data, adv_estimator=PROBE, config=OmegaConf.create({}))
    except Exception:  # noqa: BLE001 - a dispatcher we cannot ask gets the (harmless) patch
        return None
    finally:
        ADV_ESTIMATOR_REGISTRY.pop(PROBE, None)
    return bool(seen) and seen[0]


def patch_dispatcher(module) -> bool:
    """Wrap module.compute_advantage (verl's dispatcher) so that an iama estimator sees the batch's per-sample
    fields, unless verl passes non_tensor_batch itself. Returns whether the dispatcher is patched."""
    original = module.compute_advantage
    if getattr(original, "_iama_patch", False):
        return True
    if passes_non_tensor_batch(original):
        logger.info("iama: %s.compute_advantage passes non_tensor_batch to estimators; not patched", module.__name__)
        return False

    @functools.wraps(original)
    def compute_advantage(data, adv_estimator, *args, **kwargs):
        if _estimator_name(adv_estimator) is None:  # every other estimator: verl's code alone
            return original(data, adv_estimator, *args, **kwargs)
        with _rows(data.non_tensor_batch, data.meta_info.get("reward_extra_keys")):
            return original(data, adv_estimator, *args, **kwargs)

    _replace(module, "compute_advantage", original, compute_advantage)
    logger.warning("iama: patched %s.compute_advantage so that iama's estimators see non_tensor_batch (compute_score's "
                   "keys), as verl-project/verl#7473 proposes; other estimators are unchanged", module.__name__)
    return True


def patch_metrics(module) -> None:
    """Wrap module.compute_data_metrics (verl's per-step metrics) to add the iama metrics of the step."""
    original = module.compute_data_metrics
    if not getattr(original, "_iama_patch", False):
        _replace(module, "compute_data_metrics", original,
                 functools.wraps(original)(lambda *args, **kwargs: {**original(*args, **kwargs), **take_metrics()}))


def _keyed(name, algorithm) -> list[str]:
    """compute_score's keys that the configured iama objective reads."""
    try:
        return [k for k in objective_from_config(name, algorithm)[1] if k is not None]
    except ValueError:  # a bad config: the estimator raises it, with its context
        return []


def _transfer_queue_rows(tq, batch, wanted):
    """compute_score's keys for the rows of a v1 batch, in its order: the agent loop stores them per sample under
    extra_fields['reward_extra_info']; a colocated reward model (_compute_reward_colocate) as fields of their own."""
    extra = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    infos = [(e.get("reward_extra_info") if isinstance(e, dict) else None) or {} for e in extra["extra_fields"]]
    returned = list(dict.fromkeys(k for info in infos for k in info))
    fields = {}
    for key in returned:
        fields[key] = np.empty(len(infos), dtype=object)
        fields[key][:] = [info.get(key) for info in infos]
    if not returned:
        own = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=wanted)
        fields = {k: np.asarray(list(own[k]), dtype=object) for k in wanted if k in own}
        returned = None
    return fields, returned


def patch_v1_trainer(module) -> None:
    """Wrap the v1 trainer's _compute_advantage, which reads uid, rm_scores and log-probs from its TransferQueue
    but not compute_score's keys: for an iama objective with keyed criteria, fetch those too. Its batch may end in
    synthetic no-op rows (is_padding, to fill the data-parallel ranks; a uid of their own): the objective leaves
    them out, since a group of them would count in the batch's values that min and smoothmin weigh by."""
    cls = module.PPOTrainer
    original = cls._compute_advantage
    if getattr(original, "_iama_patch", False):
        return

    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics):
        name = _estimator_name(_get(self.config.algorithm, "adv_estimator"))
        if name is None:  # every other estimator: verl's code alone
            return original(self, batch, metrics)
        wanted = _keyed(name, self.config.algorithm)
        fields, returned = _transfer_queue_rows(module.tq, batch, wanted) if wanted else ({}, None)
        padding = np.array([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=bool)
        with _rows(fields, returned, padding):
            return original(self, batch, metrics)

    _compute_advantage._iama_patch = True
    cls._compute_advantage = _compute_advantage


PATCHES = {"verl.trainer.ppo.metric_utils": patch_metrics, "verl.trainer.ppo.ray_trainer": patch_dispatcher,
           "verl.trainer.ppo.v1.trainer_base": patch_v1_trainer}


def _apply(patch, module) -> None:
    try:
        patch(module)
    except Exception:  # never break verl's import; a keyed criterion then says what is missing
        logger.exception("iama: could not patch %s (verl %s)", module.__name__, getattr(sys.modules.get("verl"),
                                                                                          "__version__", "?"))


class _PatchingLoader(importlib.abc.Loader):
    """verl's own loader for a module in PATCHES, which patches the module once it has run."""

    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def __getattr__(self, name):  # get_source, get_filename, ...: the real loader's
        if "_loader" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply(self._patch, module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the modules in PATCHES as Python would, with a loader that patches them. (They are not imported here:
    importing verl's trainer would load ~700 modules into every process that imports verl.)"""

    def find_spec(self, fullname, path, target=None):
        patch = PATCHES.get(fullname)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target) if patch else None
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install_patches() -> None:
    """Patch the modules in PATCHES that are loaded, and the others as they load (done on import). Idempotent, also
    across a reload of this module (which keeps its globals: the patches already made see the new functions)."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__qualname__ != "_PatchOnImport"
                        or type(f).__module__ != __name__]
    sys.meta_path.insert(0, _PatchOnImport())
    for name, patch in PATCHES.items():
        if name in sys.modules:
            _apply(patch, sys.modules[name])


register()
install_patches()

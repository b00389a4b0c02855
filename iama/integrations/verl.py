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
else none), iama_aggregator (sum | min | smoothmin) and iama_gamma for several criteria. Every key is the
same-named argument of `iama.Objective`, so the advantages are exactly `Objective(...)(rewards).advantages` on
the groups verl forms by `uid`, whatever their order in the batch, broadcast over the response tokens.

Rewards. A criterion's reward is verl's outcome reward (token_level_rewards summed over the response, as verl's
GRPO reads it), or, when the criterion names a `key`, that per-sample field of verl's non_tensor_batch (a key of
the dict your compute_score returns). verl 0.9.1's dispatcher passes non_tensor_batch only to its built-in `gdpo`
estimator, so there a criterion with a `key` stops with an error that says so; several criteria on the one verl
reward (say best-of-4 and single sampling) work. The KL term stays with the actor's KL loss:
algorithm.use_kl_in_reward=true is refused, because best-of-N of (reward - KL) is a different objective.
"""

from __future__ import annotations

import numpy as np
import torch

from ..algorithms import BestOfN, SoftBestOfN, Tilted, WorstOfN, parse_algorithm
from ..objective import AGGREGATORS, BASELINES, SCALES, Criterion, Objective

try:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
except ImportError as e:  # pragma: no cover - exercised by tests/test_verl.py in an environment without verl
    raise ImportError(
        "iama.integrations.verl is the plugin for verl, and verl is not installed: pip install 'iama[verl]'"
    ) from e

# What each registered name reads from verl's `algorithm` config, beyond the objective's common keys.
COMMON_KEYS = ("iama_estimator", "iama_baseline", "iama_scale_rewards")
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
            if not isinstance(listed, list) or not listed:
                raise ValueError("algorithm.iama_criteria must be a non-empty list of {name, algorithm, weight, key}")
            criteria, keys = [], []
            for i, c in enumerate(listed):
                if not isinstance(c, dict) or "name" not in c:
                    raise ValueError(f"algorithm.iama_criteria[{i}] must be a mapping with at least a 'name'")
                extra = sorted(set(c) - {"name", "algorithm", "weight", REWARD_KEY})
                if extra:
                    raise ValueError(f"algorithm.iama_criteria[{i}] ({c['name']!r}): unknown field(s) {extra}; "
                                     f"allowed: name, algorithm, weight, {REWARD_KEY}")
                criteria.append(Criterion(str(c["name"]), c.get("algorithm", "sampling"), float(c.get("weight", 1.0))))
                keys.append(None if c.get(REWARD_KEY) is None else str(c[REWARD_KEY]))
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
    return Objective(criteria, gamma=gamma, **settings), keys


# ---------------------------------------------------------------------------------------------------------------
# the estimator


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


def _criterion_rewards(keys, names, token_level_rewards, non_tensor_batch):
    """(B, m) float64 rewards, one column per criterion."""
    outcome = token_level_rewards.detach().sum(dim=-1).cpu().double().numpy()
    columns = []
    for key, name in zip(keys, names, strict=True):
        if key is None:
            columns.append(outcome)
            continue
        if non_tensor_batch is None:
            raise ValueError(
                f"iama criterion {name!r} takes its reward from per-sample field {key!r}, but this verl passed the "
                "advantage estimator no non_tensor_batch: verl 0.9.1's compute_advantage passes per-sample fields "
                "only to its built-in 'gdpo' estimator, so a custom estimator sees just the summed reward. Run this "
                "objective with `iama train` (TRL), or give every criterion verl's reward (no 'key'), or use a "
                "verl whose compute_advantage forwards non_tensor_batch to estimators that accept it "
                "(verl-project/verl#7473)"
            )
        if key not in non_tensor_batch:
            raise ValueError(f"iama criterion {name!r}: field {key!r} is not in non_tensor_batch; "
                             f"it holds {sorted(non_tensor_batch.keys())}. Return it from compute_score's dict")
        column = np.asarray(non_tensor_batch[key], dtype=np.float64).reshape(-1)
        if column.shape != outcome.shape:
            raise ValueError(f"iama criterion {name!r}: field {key!r} has {column.size} values for {outcome.size} rows")
        columns.append(column)
    return np.stack(columns, axis=-1)


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
    rewards = _criterion_rewards(keys, [c.name for c in objective.criteria], token_level_rewards, non_tensor_batch)
    group, position, n_groups, largest = group_positions(index)
    if len(group) != rewards.shape[0]:
        raise ValueError(f"index has {len(group)} entries for {rewards.shape[0]} rows")
    grouped = np.full((n_groups, largest, rewards.shape[1]), np.nan)  # NaN pads groups shorter than the largest
    grouped[group, position] = rewards
    advantages = np.asarray(objective(grouped).advantages)[group, position]
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


register()

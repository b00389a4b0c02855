"""The patches of verl 0.9's internals that the estimators need (the package's docstring says which, and why).

Each wraps one verl function, once per process, right after its module is first imported (a finder on sys.meta_path:
importing the plugin must not import verl's trainer) or at once if it already is, and hands every other estimator to
verl's code as is. Each is applied only where verl needs it: patch_dispatcher first asks verl's dispatcher whether it
passes non_tensor_batch itself (verl-project/verl#7473), and leaves it alone if so. A patch that fails is logged, and
never breaks verl's import.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
from enum import Enum

import numpy as np
import torch

from .estimator import ADV_ESTIMATOR_REGISTRY, ESTIMATORS, estimator_sees, objective_from_config, setting, take_metrics

logger = logging.getLogger(__name__)

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
        with estimator_sees(data.non_tensor_batch, data.meta_info.get("reward_extra_keys")):
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
        name = _estimator_name(setting(self.config.algorithm, "adv_estimator"))
        if name is None:  # every other estimator: verl's code alone
            return original(self, batch, metrics)
        wanted = _keyed(name, self.config.algorithm)
        fields, returned = _transfer_queue_rows(module.tq, batch, wanted) if wanted else ({}, None)
        padding = np.array([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=bool)
        with estimator_sees(fields, returned, padding):
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
    """Patch the modules in PATCHES that are loaded, and the others as they load (done when the plugin is imported).
    Idempotent: one finder however often it runs, and a patched function is not wrapped again."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__qualname__ != "_PatchOnImport"
                        or type(f).__module__ != __name__]
    sys.meta_path.insert(0, _PatchOnImport())
    for name, patch in PATCHES.items():
        if name in sys.modules:
            _apply(patch, sys.modules[name])

"""verl plugin: the iama objective as verl advantage estimators.

Importing it registers, with verl's `register_adv_est`, the estimators

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
best-of-N of (reward - KL) is a different objective. A voting algorithm (maj:N) is refused too: it needs each
sample's answer, which verl does not give an estimator.

verl 0.9. Its dispatcher, compute_advantage, hands a registered estimator token_level_rewards, response_mask,
config, index and reward_baselines, but non_tensor_batch only to its own 'gdpo' (verl-project/verl#7473 would pass
it to every estimator that accepts it). So, in each process, as verl's modules are imported, the plugin (`patches`):
  - wraps compute_advantage so that, for iama's estimators only, the estimator sees the batch's non_tensor_batch;
    not applied where a probe finds that verl passes non_tensor_batch itself (#7473); logged once;
  - wraps the v1 trainer's advantage step (trainer.use_v1, verl 0.9's default), which reads only uid, rm_scores
    and log-probs from its TransferQueue, to fetch compute_score's keys as well, for iama criteria with a `key`;
  - adds iama's metrics to compute_data_metrics: iama/NAME/reward (mean reward), iama/NAME/ALGORITHM (value under
    the algorithm), iama/objective, iama/dropped_samples, iama/advantage_abs, iama/advantage_abs_max (iama.steps,
    as the TRL trainer logs them).
Other estimators, and the rest of verl's config, go through verl's own code unchanged.

The estimators and their registration are in `estimator`, the patches in `patches`; importing this package registers
the one and installs the other.
"""

from .estimator import (ESTIMATORS, PLUGIN, compute_advantages, group_positions, invalid_policy, objective_from_config,
                        register, take_metrics)
from .patches import (PATCHES, PROBE, install_patches, passes_non_tensor_batch, patch_dispatcher, patch_metrics,
                      patch_v1_trainer)

__all__ = ["ESTIMATORS", "PATCHES", "PLUGIN", "PROBE", "compute_advantages", "group_positions", "install_patches",
           "invalid_policy", "objective_from_config", "passes_non_tensor_batch", "patch_dispatcher", "patch_metrics",
           "patch_v1_trainer", "register", "take_metrics"]

register()
install_patches()

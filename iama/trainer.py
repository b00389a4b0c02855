"""Non-linear GRPO on TRL: GRPOTrainer whose advantages come from the iama objective.

TRL computes one reward per criterion per completion and gathers them across processes (`_calculate_rewards`);
we turn the gathered (groups, M, criteria) rewards into first-variation estimates minus a leave-one-out
baseline (the objective), and put this process's slice in place of TRL's advantages. Everything else
(generation, vLLM, PEFT, the clipped loss, the KL penalty, accelerate/DeepSpeed) is TRL's.

Over 500 lines because the trainer subclass and the run around it (resuming, saving, the model card) change
together.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from .config import (ConfigError, TrainConfig, build_objective, check_training, grpo_config, settings_differ,
                     to_dict, validate)
from .rewards import answers_method
from .steps import apply_policy, step_metrics
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_dir

logger = logging.getLogger(__name__)


class RewardFailure(RuntimeError):
    """A reward returned NaN/None or raised, and the policy is to stop."""


# ---------------------------------------------------------------------------------------------------------------
# rewards: one TRL reward function per criterion, with the invalid-reward policy applied


PYTHON_DROP = 'invalid_rewards="drop"'  # how the fix is spelled in a RewardFailure: IAMATrainer's keyword ...
CONFIG_DROP = "invalid_rewards: drop"  # ... or the config's key (`iama train`)


def guard_reward(fn, name: str, policy: str, fix: str = PYTHON_DROP):
    """Wrap a TRL-style reward in the invalid-reward policy (iama.steps): an invalid value (NaN, None, inf, not a
    number) or an exception either stops the run naming the reward ('stop', the message suggesting `fix`) or
    becomes NaN for just the failing samples ('drop'; the objective drops and counts them). A reward's `answers`
    method (majority voting) stays reachable."""

    def call(prompts, completions, **kwargs):
        n = len(completions)
        try:
            out = list(fn(prompts=prompts, completions=completions, **kwargs))
        except Exception as e:
            if policy == "stop":
                raise RewardFailure(f"reward {name!r} raised {type(e).__name__}: {e}") from e
            out = [_one(fn, prompts, completions, kwargs, i) for i in range(n)]  # find the failing samples
        if len(out) != n:
            raise RewardFailure(f"reward {name!r} returned {len(out)} values for {n} completions")
        return apply_policy(out, policy, refuse=lambda bad: RewardFailure(
            f"reward {name!r} returned NaN/None/inf or a non-number for {len(bad)} of {n} completions "
            f"(first: {str(completions[bad[0]])[:60]!r}); set {fix} to drop such samples")).tolist()

    call.__name__ = name
    if answers_method(fn) is not None:
        call.answers = answers_method(fn)
    return call


def guard_rewards(funcs, criteria, policy, fix: str = PYTHON_DROP) -> list:
    """guard_reward for each reward function of its criterion; a reward *model* is left to TRL."""
    return [guard_reward(f, c.name, policy, fix) if callable(f) and not hasattr(f, "config") else f
            for f, c in zip(funcs, criteria)]


def _one(fn, prompts, completions, kwargs, i):
    n = len(completions)
    sliced = {k: (v[i : i + 1] if isinstance(v, list) and len(v) == n else v) for k, v in kwargs.items()}
    try:
        return list(fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **sliced))[0]
    except Exception:
        return math.nan


# ---------------------------------------------------------------------------------------------------------------
# the trainer


def kl_controller(beta: float, kl: float, target: float, gain: float, gain_up: float | None = None) -> float:
    """Log-space proportional control: log beta += gain * (KL - target) / target, the error clipped to [-1, 1]
    so that one noisy batch cannot swing beta far. gain_up (default: gain) is the gain while the KL is above the
    target: the KL is 0 at the first step, so beta falls at full speed until the KL nears the target, and a KL that
    then keeps rising needs beta raised faster than it fell."""
    g = gain if gain_up is None or kl <= target else gain_up
    return float(beta * math.exp(g * float(np.clip((kl - target) / target, -1.0, 1.0))))


def check_trainer_args(objective, args, target_kl, invalid_rewards, max_dropped_steps) -> None:
    """IAMATrainer's checks that need no model, on its GRPOConfig (None: GRPOConfig's defaults, as TRL then uses):
    config.check_training's, and the advantages' scaling, which TRL's args and the objective both name."""
    from trl import GRPOConfig

    from .config import _grpo_defaults

    settings = vars(args) if isinstance(args, GRPOConfig) else _grpo_defaults()
    check_training(objective, num_generations=settings["num_generations"], beta=settings["beta"],
                   target_kl=target_kl, invalid_rewards=invalid_rewards, max_dropped_steps=max_dropped_steps)
    scale = {True: "group", False: "none"}.get(settings["scale_rewards"], settings["scale_rewards"])
    if objective.scale_rewards != scale:
        raise ConfigError(f"the objective's scale_rewards={objective.scale_rewards!r} and args.scale_rewards="
                          f"{scale!r} differ: set Objective(scale_rewards=...) and GRPOConfig(scale_rewards=...) alike")


class IAMATrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from an iama `Objective`: one reward function per criterion, in order.

        trainer = IAMATrainer(model="smollm2-135m-instruct", reward_funcs=[r1, r2],
                              args=GRPOConfig(...), train_dataset=dataset,
                              objective=Objective([Criterion("a", "bon:4", 0.5), Criterion("b", "bon:4", 0.5)]))

    Everything else is GRPOTrainer's (PEFT, vLLM, accelerate). What `iama train` adds is here too: the built-in
    model names (tiny-gpt2, smollm2-135m-instruct); target_kl/kl_gain hold the KL at a target with a controller on
    beta (args.beta > 0 is its start); invalid_rewards 'stop' or 'drop' is the policy for a reward that returns
    NaN/None or raises (None: leave the functions as they are), and max_dropped_steps the number of steps in a row
    with no sample left after which the run stops; metrics_csv (default OUTPUT/metrics.csv, False for none) logs
    every step; the model card (OUTPUT/README.md, and `save_final`'s) describes the objective.

    The objective's scale_rewards must be args.scale_rewards (both default to 'group'). This and everything else
    that needs no model (N larger than the group, target_kl without beta) is refused here, in one line, before the
    model loads."""

    _tag_names = ["trl", "grpo", "iama"]
    _name = "IAMA (non-linear GRPO)"
    _paper = {"title": "Inference-Aware Meta-Alignment of LLMs via Non-Linear GRPO", "id": "2602.01603",
              "citation": "@article{takakura2026iama,\n  title   = {Inference-Aware Meta-Alignment of LLMs via "
                          "Non-Linear GRPO},\n  author  = {Takakura, Shokichi and Wachi, Akifumi and Higuchi, Rei "
                          "and Miyaguchi, Kohei and Suzuki, Taiji},\n  journal = {arXiv preprint arXiv:2602.01603},"
                          "\n  year    = {2026}\n}"}

    def __init__(self, *args, objective, target_kl=None, kl_gain=0.1, kl_gain_up=None, invalid_rewards=None,
                 max_dropped_steps=3,
                 metrics_csv=None, command=None, **kwargs):
        given = inspect.signature(GRPOTrainer.__init__).bind(self, *args, **kwargs)  # positional or keyword alike
        reward_funcs = given.arguments.get("reward_funcs")
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        if len(funcs) != len(objective.criteria):
            raise ValueError(f"{len(funcs)} reward functions for {len(objective.criteria)} criteria")
        # majority voting needs each sample's answer: the voting criterion's reward gives them (`answer` does)
        voting = [(c, f) for c, f in zip(objective.criteria, funcs) if c.algorithm.needs_answers]
        self._answers_of = answers_method(voting[0][1]) if voting else None  # also through a renamed wrapper
        if voting and self._answers_of is None:
            c = voting[0][0]
            raise ValueError(f"criterion {c.name!r} uses {c.algorithm.spec}, which votes on answers, but its reward "
                             "gives none: use a reward with an `answers(completions)` method, such as 'answer'")
        check_trainer_args(objective, given.arguments.get("args"), target_kl, invalid_rewards, max_dropped_steps)
        if invalid_rewards is not None:
            given.arguments["reward_funcs"] = guard_rewards(funcs, objective.criteria, invalid_rewards)
        model = given.arguments["model"]
        if isinstance(model, str):
            from .models import BUILTINS, resolve_model

            if model in BUILTINS:  # as in a config: materialised in iama's cache, offline
                given.arguments["model"] = resolve_model(model)
        super().__init__(*given.args[1:], **given.kwargs)
        self.objective = objective
        self.target_kl, self.kl_gain, self.kl_gain_up = target_kl, kl_gain, kl_gain_up
        self.max_dropped_steps = max_dropped_steps
        self.command = command
        self.model_card_base = model if isinstance(model, str) else None  # the name given, not the cache's path
        self._gathered_rewards = self._gathered_answers = None
        self._dropped_in_a_row = self._skipped_steps = 0
        self._skipping = False  # the micro-batch in training_step belongs to a skipped step
        if metrics_csv is not False:
            self.add_callback(CSVLogger(metrics_csv or Path(self.args.output_dir) / "metrics.csv"))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards  # (all processes' completions, criteria), already gathered
        if self._answers_of is not None:  # gathered like the rewards, in the same order
            from accelerate.utils import gather_object

            self._gathered_answers = gather_object(list(self._answers_of(completions)))
        return rewards

    def iama_estimates(self, rewards: torch.Tensor, num_generations: int):
        """The objective on gathered rewards (B, m): groups are consecutive runs of num_generations rows."""
        answers = None
        if self._answers_of is not None:
            flat = self._gathered_answers
            answers = [flat[i : i + num_generations] for i in range(0, len(flat), num_generations)]
        return self.objective(rewards.view(-1, num_generations, rewards.shape[-1]), answers=answers)

    def _generate(self, prompts):
        # TRL runs only the loss under autocast. With bf16 on a CPU, sampling under it too is ~1.6x faster
        # (benchmarks/step_breakdown.py); on a GPU the model already has its dtype, and vLLM has its own
        if self.args.bf16 and not self.use_vllm and self.accelerator.device.type == "cpu":
            with self.accelerator.autocast():
                return super()._generate(prompts)
        return super()._generate(prompts)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        m = self.num_generations if mode == "train" else self.num_generations_eval
        est = self.iama_estimates(self._gathered_rewards, m)
        advantages = est.advantages.reshape(-1)
        local = out["advantages"].shape[0]
        start = self.accelerator.process_index * local
        out["advantages"] = advantages[start : start + local].to(out["advantages"])
        metrics = self._metrics[mode]
        lost = est.skipped_groups == len(est.values)  # every group lost its samples to invalid rewards
        if mode == "train":
            self._count_lost_step(lost)
            out["iama_skip"] = torch.tensor(lost)  # 0-d: TRL hands it whole to each micro-batch (compute_loss)
            metrics["iama/skipped_steps"].append(float(self._skipped_steps))
        # TRL logs each reward's mean itself (rewards/NAME/mean), and averages a metric's list at logging: a value
        # that no group could give (NaN) is left out rather than making the average NaN
        for key, value in step_metrics(self.objective, est, self._gathered_rewards, advantages,
                                       reward_means=False).items():
            if math.isfinite(value):
                metrics[key].append(value)
        metrics["beta"].append(float(self.beta))
        return out

    def _count_lost_step(self, lost: bool) -> None:
        """A step whose every sample was dropped (a scorer outage under invalid_rewards='drop') is skipped and
        counted; max_dropped_steps of them in a row stop the run, its checkpoints kept for a resume."""
        self._dropped_in_a_row = self._dropped_in_a_row + 1 if lost else 0
        if not lost:
            return
        self._skipped_steps += 1
        rewards = self._gathered_rewards
        invalid = [c.name for c, column in zip(self.objective.criteria, rewards.T) if torch.isnan(column).any()]
        what = f"every sample of step {self.state.global_step + 1} was dropped (invalid rewards of " \
               f"{', '.join(map(repr, invalid))})"
        if self._dropped_in_a_row >= self.max_dropped_steps:
            raise RewardFailure(f"{what}, {self._dropped_in_a_row} steps in a row: stopping (max_dropped_steps="
                                f"{self.max_dropped_steps}); the run resumes from its last checkpoint")
        logger.warning(f"iama: {what}: the step trains nothing ({self._dropped_in_a_row} in a row; the run stops "
                       f"at {self.max_dropped_steps})")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._skipping = bool(inputs.get("iama_skip", False))
        if self._skipping:
            # a skipped step: a loss that reaches no weight, so that their gradients stay None and the optimizer
            # leaves them, and its moments, as they are (no KL term either)
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        kl = self._metrics["train"].get("kl")
        if self.target_kl is not None and kl and not self._skipping:  # a skipped step measured no KL
            self.beta = kl_controller(self.beta, kl[-1], self.target_kl, self.kl_gain, self.kl_gain_up)
        return loss

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card (OUTPUT/README.md), with what the model was aligned for appended."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            path = Path(self.args.output_dir) / "README.md"
            if path.is_file():
                atomic_write_text(path, path.read_text() + "\n" + self.model_card_section())

    def model_card_section(self) -> str:
        """Markdown: the criteria with their algorithms and weights, the objective's settings, steps, the last
        objective estimate and the command."""
        obj = self.objective
        rewards = [c.reward if isinstance(c.reward, str) else name  # a spec, else the reward function's name
                   for c, name in zip(obj.criteria, self.reward_func_names)]
        rows = "\n".join(f"| {c.name} | `{r}` | `{c.algorithm.spec}` | {c.weight:g} |"
                         for c, r in zip(obj.criteria, rewards))
        estimates = self._metrics.get("train", {}).get("iama/objective") or []
        history = [h.get("iama/objective") for h in self.state.log_history]
        # a step without an objective (every sample dropped) logs none, or NaN
        history = [v for v in history if isinstance(v, (int, float)) and math.isfinite(v)]
        last = history[-10:] or [v for v in estimates if math.isfinite(v)][-10:]
        kl = (f"KL held at {self.target_kl} by a controller on beta (last beta {self.beta:.3g})"
              if self.target_kl is not None else f"beta = {self.beta:g}")
        lines = [
            "## What this model was aligned for (iama)", "",
            "Trained with iama's non-linear GRPO (inference-aware alignment): each criterion is "
            "scored under the inference-time algorithm it will be decoded with, and the policy is trained for the "
            "objective below.", "",
            "| criterion | reward | algorithm | weight |", "|---|---|---|---|", rows, "",
            f"- objective: {obj.describe()}, estimator={obj.estimator}, baseline={obj.baseline}, "
            f"scale_rewards={obj.scale_rewards}",
            f"- group size M = {self.num_generations}, {kl}",
            f"- steps: {self.state.global_step}" + (f"; objective estimate over the last {len(last)} logged steps: "
                                                    f"{float(np.mean(last)):.4g}" if last else ""),
        ]
        if self._skipped_steps:
            lines.append(f"- skipped steps (every sample's reward invalid, dropped): {self._skipped_steps}")
        if self.command:
            lines.append(f"- made by: `{self.command}`")
        return "\n".join(lines) + "\n"

    # -- exact resume ------------------------------------------------------------------------------------------
    # A resumed run is the same run: transformers restores the weights, optimizer, scheduler and every RNG that
    # generation uses (rng_state.pth: python, numpy, torch CPU and CUDA), after fast-forwarding the dataloader.
    # What it cannot restore, and we do:
    #   - the data order past the first epoch: TRL's RepeatSampler draws one permutation per epoch from a generator
    #     seeded once; the resumed run builds a fresh one and never iterates the epochs before the checkpoint, so
    #     it replayed epoch 0's order (skip_epochs below);
    #   - TRL's buffered generations: with steps_per_generation (or num_iterations) > 1, TRL generates once for
    #     several optimizer steps and keeps the completions in `_buffered_inputs`, indexed by its micro-step counter
    #     `_step`; both start empty/0 on resume, so a checkpoint taken mid-buffer resumed with fresh completions,
    #     the wrong slice, and generation boundaries shifted for the rest of the run. We save the buffer (token ids,
    #     masks, advantages, log-probs: small next to the optimizer state) and `_step` with every checkpoint rather
    #     than only checkpointing at generation boundaries, so that any save_steps resumes exactly;
    #   - the KL controller's beta. The objective itself holds no state.
    # Written before super()'s files, since trainer_state.json (written last) is what marks a checkpoint complete.

    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        if self._buffered_inputs is not None:  # every process has its own slice of the generation batch
            buf = io.BytesIO()
            torch.save(self._buffered_inputs, buf)
            atomic_write_bytes(folder / f"iama_buffer_{self.args.process_index}.pt", buf.getvalue())
        if self.args.should_save:
            atomic_write_json(folder / "iama_state.json", {"beta": self.beta, "trl_step": self._step,
                                                           "dropped_in_a_row": self._dropped_in_a_row,
                                                           "skipped_steps": self._skipped_steps})
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # called once when training resumes from `checkpoint`, before the first step
        super()._load_optimizer_and_scheduler(checkpoint)
        if not checkpoint:
            return
        state = Path(checkpoint) / "iama_state.json"
        if state.is_file():
            saved = json.loads(state.read_text())
            self.beta = saved["beta"]
            self._step = saved.get("trl_step", self._step)  # absent in checkpoints of older iama versions
            self._dropped_in_a_row = saved.get("dropped_in_a_row", 0)
            self._skipped_steps = saved.get("skipped_steps", 0)
        buffer = Path(checkpoint) / f"iama_buffer_{self.args.process_index}.pt"
        if buffer.is_file():  # else TRL generates afresh (its own resume behaviour)
            self._buffered_inputs = torch.load(buffer, map_location=self.accelerator.device, weights_only=True)
        # the trainer resumes in epoch floor(state.epoch) (global_step // steps per epoch), having built the sampler
        skip_epochs(getattr(self, "_train_sampler", None), int(self.state.epoch or 0))

    def _issue_warnings_after_load(self, load_result):
        # safetensors keeps a tied weight once (e.g. lm_head.weight is the input embeddings): its other name is
        # missing from every checkpoint by design, and loads with the name that is there
        params = dict(self.model.named_parameters(remove_duplicate=False))
        loaded = {id(p) for name, p in params.items() if name not in load_result.missing_keys}
        tied = {k for k in load_result.missing_keys if k in params and id(params[k]) in loaded}
        super()._issue_warnings_after_load(
            load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied]))

    def _get_train_sampler(self, dataset=None):
        self._train_sampler = super()._get_train_sampler(dataset)  # kept for skip_epochs when resuming
        return self._train_sampler


def skip_epochs(sampler, epochs: int) -> None:
    """Put a fresh TRL RepeatSampler where it stands after `epochs` epochs: its generator, seeded once, gives epoch
    e the (e+1)-th permutation, so draw the first `epochs` again. Not through set_epoch: accelerate does not pass
    it on to the sampler of a dataloader that skips batches across several processes."""
    if isinstance(sampler, RepeatSampler) and sampler.shuffle and sampler.seed is not None:
        sampler.generator.manual_seed(sampler.seed)
        for _ in range(epochs):
            torch.randperm(sampler.num_samples, generator=sampler.generator)


class CSVLogger(TrainerCallback):
    """Every log row to OUTPUT/metrics.csv, rewritten atomically; on resume, rows past the checkpoint go."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if float(r.get("step") or 0) <= state.global_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if np.isscalar(v)}})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# building and running a training job from a TrainConfig


def changed_settings(output_dir, cfg: TrainConfig) -> list[str]:
    """The settings in which `cfg` differs from the run saved in output_dir/config.yaml (none if there is none),
    so that a resumed or finished run is never silently one of other settings."""
    path = Path(output_dir) / "config.yaml"
    return settings_differ(yaml.safe_load(path.read_text()), cfg) if path.is_file() else []


def last_checkpoint(output_dir) -> str | None:
    """The newest checkpoint that was written completely (trainer_state.json is saved last)."""
    folders = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in folders if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else None


def build_rewards(cfg: TrainConfig, tokenizer):
    from .rewards import build_reward

    store = None
    if any(c.calibrated for c in cfg.criteria):
        from .ctrl import CalibrationStore

        store = CalibrationStore.load(cfg.calibration)
        store.check_model(cfg.model)
    funcs = []
    for c in cfg.criteria:
        fn = build_reward(c.reward, tokenizer=tokenizer)
        if c.calibrated:
            from .ctrl import calibrated_transformed_reward

            fn = calibrated_transformed_reward(fn, store, c.name, c.transform or "identity")
        funcs.append(fn)
    return funcs


def save_final(trainer, final, cfg: TrainConfig | None = None) -> Path:
    """A plain Hugging Face model (LoRA merged) with its tokenizer and model card (README.md), and the run's config
    when there is one (iama_config.yaml), swapped in atomically: `push_to_hub` of the folder gives a useful page."""
    final = Path(final)
    if not trainer.accelerator.is_main_process:
        return final
    check_final_dir(final)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    trainer.processing_class.save_pretrained(tmp)
    base = trainer.model_card_base or getattr(model.config, "_name_or_path", "")
    header = (f"---\nbase_model: {base}\nlibrary_name: transformers\ntags: [trl, grpo, iama]\n---\n\n"
              f"# {final.parent.name or final.name}\n\nFine-tuned from `{base}`.\n\n")
    (tmp / "README.md").write_text(header + trainer.model_card_section())
    if cfg is not None:
        (tmp / "iama_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def check_final_dir(final: Path) -> None:
    """save_final replaces a model it saved before, and nothing else: a file there, or a folder that holds other
    things than a saved model, is one line (ValueError), before anything is written or moved."""
    check_output_dir(final, "the final model's folder")
    saved = any((final / name).is_file() for name in ("config.json", "iama_config.yaml"))
    if final.is_dir() and any(final.iterdir()) and not saved:
        raise ValueError(f"the final model's folder {str(final)!r} holds files but no saved model; save_final "
                         "replaces only a model it saved: give another folder")


def build_trainer(cfg: TrainConfig, callbacks=(), command=None):
    """The IAMATrainer for `cfg`, and the tokenizer; loads the model and the rewards."""
    from transformers import AutoTokenizer

    from .data import load_prompts, prompt_dataset, require_column
    from .models import resolve_model
    from .rewards import Answer

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split, limit=cfg.max_prompts)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    rewards = build_rewards(cfg, tokenizer)
    for fn in rewards:
        if isinstance(fn, Answer):  # its reference answers come from a column of the prompts
            require_column(prompts, fn.column, cfg.prompts)
    objective = build_objective(cfg)
    trainer = IAMATrainer(
        model=model_path, reward_funcs=guard_rewards(rewards, objective.criteria, cfg.invalid_rewards, CONFIG_DROP),
        args=grpo_config(cfg), train_dataset=prompt_dataset(prompts, tokenizer), processing_class=tokenizer,
        peft_config=peft_config, objective=objective, target_kl=cfg.target_kl, kl_gain=cfg.kl_gain,
        kl_gain_up=cfg.kl_gain_up,
        max_dropped_steps=cfg.max_dropped_steps, callbacks=list(callbacks), command=command,
    )
    trainer.model_card_base = cfg.model  # the name the user gave, not the local cache it resolved to
    return trainer, tokenizer


def completed(cfg: TrainConfig) -> Path | None:
    """OUTPUT/final when the run of `cfg` has finished, else None; a run of other settings in OUTPUT is an error."""
    validate(cfg)
    out = Path(cfg.output_dir)
    check_output_dir(out, "output_dir")  # a file there, or no permission: one line, before any model loads
    final = out / "final"
    check_final_dir(final)
    if not cfg.resume:
        return None
    if (final / "iama_config.yaml").is_file() or last_checkpoint(out):
        changed = changed_settings(out, cfg)
        if changed:
            raise ConfigError(f"{out} holds a run with other settings ({', '.join(changed)} differ); set "
                              "resume=false to train it again, or use another output_dir")
    if (final / "iama_config.yaml").is_file():
        print(f"{final} exists: the run is complete (set resume=false or another output_dir to train again)")
        return final
    return None


def train(cfg: TrainConfig, command: str | None = None) -> Path:
    """Train the policy of `cfg` and return OUTPUT/final. Resumes from the last complete checkpoint. `command`
    (what made the run) goes into the model card."""
    done = completed(cfg)
    if done:
        return done
    out, final = Path(cfg.output_dir), Path(cfg.output_dir) / "final"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    trainer, tokenizer = build_trainer(cfg, command=command)
    checkpoint = last_checkpoint(out) if cfg.resume else None
    if trainer.accelerator.is_main_process:
        obj = trainer.objective
        print(f"iama: {obj.describe()}, estimator={obj.estimator}, baseline={obj.baseline}; "
              f"M={cfg.num_generations}; model={cfg.model}"
              + (f"; resuming from {checkpoint}" if checkpoint else ""))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.accelerator.wait_for_everyone()
    save_final(trainer, final, cfg)
    if not cfg.keep_checkpoints and trainer.accelerator.is_main_process:
        # optimizer state makes each checkpoint ~3x the model; a finished run never resumes from them
        for folder in out.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return final

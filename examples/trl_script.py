"""Non-linear GRPO from a TRL script: TRL's `trl/scripts/grpo.py` with `IAMATrainer` and an `Objective`.

Each reward function is a criterion; `--algorithms` says how each will be decoded (best-of-4, worst-of-4, ...),
and the trainer optimises the decoded model's objective instead of the mean reward.

    python examples/trl_script.py \
        --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --dataset_name trl-lib/tldr \
        --reward_funcs length:16:64 length:48:64 --algorithms bon:4 bon:4 --weights 0.5 0.5 \
        --num_generations 8 --per_device_train_batch_size 8 --max_completion_length 64 \
        --max_steps 100 --output_dir runs/trl-script [--use_peft --lora_r 16]

`--reward_funcs` takes iama's reward specs (`length:L:LMAX`, `sentiment`, `relevance`, `hf:MODEL`, ...) or a
dotted path to a function with TRL's reward signature. `--dataset_name` is a Hub id or a local folder of
.jsonl/.csv files with a `prompt` column, as for TRL. Everything else is a `GRPOConfig` or `ModelConfig` flag.
"""

from dataclasses import dataclass, field
from pathlib import Path

from datasets import load_dataset
from trl import GRPOConfig, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from iama import Criterion, IAMATrainer, Objective, save_final
from iama.rewards import build_reward


@dataclass
class IAMAScriptArguments(ScriptArguments):
    reward_funcs: list[str] = field(default_factory=list, metadata={"help": "one reward per criterion"})
    algorithms: list[str] = field(default_factory=list, metadata={
        "help": "the inference-time algorithm of each criterion: sampling, bon:N, won:N, soft_bon:N:T, tilted:T"})
    weights: list[float] = field(default_factory=list, metadata={"help": "each criterion's weight (default: equal)"})
    aggregator: str = field(default="sum", metadata={"help": "sum, min or smoothmin"})
    estimator: str = field(default="unbiased", metadata={"help": "unbiased or plugin"})
    baseline: str = field(default="loo", metadata={"help": "loo, group_mean or none"})
    target_kl: float | None = field(default=None, metadata={"help": "hold the KL here (needs --beta > 0)"})
    invalid_rewards: str = field(default="stop", metadata={"help": "a NaN/None reward or one that raises: stop or drop"})


def main(script_args, training_args, model_args):
    k = len(script_args.reward_funcs)
    algorithms = script_args.algorithms or ["sampling"] * k
    weights = script_args.weights or [1.0 / k] * k
    if not k or len(algorithms) != k or len(weights) != k:
        raise SystemExit("give one --algorithms and one --weights value per --reward_funcs value")
    rewards = [build_reward(spec) for spec in script_args.reward_funcs]
    objective = Objective(
        [Criterion(f"r{i}_{getattr(fn, '__name__', 'reward')}", alg, w, spec)
         for i, (fn, alg, w, spec) in enumerate(zip(rewards, algorithms, weights, script_args.reward_funcs))],
        aggregator=script_args.aggregator, estimator=script_args.estimator, baseline=script_args.baseline,
        scale_rewards=training_args.scale_rewards)  # the same rule name as TRL's: group, batch or none
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = IAMATrainer(
        model=model_args.model_name_or_path,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        peft_config=get_peft_config(model_args),
        objective=objective,
        target_kl=script_args.target_kl,
        invalid_rewards=script_args.invalid_rewards,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    final = save_final(trainer, Path(training_args.output_dir) / "final")  # LoRA merged, with a model card
    print(f"saved {final}")


if __name__ == "__main__":
    parser = TrlParser((IAMAScriptArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())

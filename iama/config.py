"""The training config: one flat dataclass, read from YAML (a config file or a finished run), overridden from the
command line, validated before any model loads. Keys that are not ours but are fields of TRL's GRPOConfig pass
through to it unchanged."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .objective import Criterion, Objective, parse_criteria
from .steps import INVALID_REWARDS


class ConfigError(ValueError):
    """A config that cannot run; its message is one line meant for the user."""


@dataclass
class TrainConfig:
    # the policy: a built-in name (tiny-gpt2, smollm2-135m-instruct), a local path or a Hugging Face id
    model: str = "tiny-gpt2"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    # the prompts: "builtin", a local .jsonl/.csv/.txt file, or "hf:NAME[:CONFIG]"
    prompts: str = "builtin"
    prompt_column: str = "prompt"
    prompt_split: str = "train"
    max_prompts: int | None = None
    # the objective: criteria (Criterion; in YAML {name, reward, algorithm, weight, calibrated, transform}) and how
    # to combine them
    criteria: list = field(default_factory=lambda: [Criterion("length", "bon:4", reward="length:16:64")])
    aggregator: str = "sum"  # sum | min | smoothmin
    gamma: float = 1.0  # smoothmin sharpness
    estimator: str = "unbiased"  # unbiased | plugin
    baseline: str = "loo"  # loo | group_mean | none
    scale_rewards: str = "group"  # divide advantages by the group's std, as TRL's GRPO does: group | batch | none
    num_generations: int = 8  # M, the group size: samples per prompt
    invalid_rewards: str = "stop"  # a reward that is NaN/None or raises: stop (naming it) | drop (the sample, counted)
    max_dropped_steps: int = 3  # under drop: a step with no sample left trains nothing; this many in a row stop the run
    calibration: str | None = None  # reference-reward store for criteria with calibrated: true (iama calibrate)
    # the KL: a fixed beta, or a target KL held by a log-space proportional controller on beta
    beta: float = 0.0
    target_kl: float | None = None
    kl_gain: float = 0.1
    kl_gain_up: float | None = None  # the gain while the KL is above its target (default: kl_gain)
    # the run
    max_steps: int = 100
    seed: int = 0
    output_dir: str = "runs/iama"
    resume: bool = True  # continue from the last complete checkpoint in output_dir
    keep_checkpoints: bool = False  # checkpoints serve resuming; once final/ is written they go unless kept
    # `iama sweep`: the hypervolume's reference point, one value per criterion (default: the untrained model's)
    sweep_reference: list | None = None
    # anything else for TRL's GRPOConfig (learning_rate, max_completion_length, use_vllm, ...)
    trl: dict = field(default_factory=dict)

    def __post_init__(self):
        try:  # criteria as YAML gives them (mappings) become Criterion here, checked once
            self.criteria = parse_criteria(self.criteria)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def criteria_names(self) -> list[str]:
        return [c.name for c in self.criteria]


OURS = {f.name for f in dataclasses.fields(TrainConfig)}
# our keys that are also GRPOConfig fields and are passed to it under the same name
SHARED_WITH_TRL = ("num_generations", "beta", "max_steps", "seed", "output_dir", "scale_rewards")


def _grpo_defaults() -> dict:
    from trl import GRPOConfig

    return {f.name: f.default for f in dataclasses.fields(GRPOConfig)}


KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_types(values: dict, defaults: dict, where: str) -> None:
    """A value must have the kind of its field's default (bool, int, float, str); None defaults accept anything.
    Numbers written the way YAML 1.1 reads as strings ("1e-3") are converted. Catches `learning_rate: fast`
    here rather than deep inside the optimiser."""
    for key, value in values.items():
        default = defaults.get(key)
        if default is None or default is dataclasses.MISSING or value is None:
            continue
        kind = type(default)
        if kind in (int, float) and isinstance(value, str):
            try:
                value = values[key] = kind(float(value)) if kind is float else int(value)
            except ValueError:
                pass
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if kind is str and isinstance(value, list):  # fields such as report_to take a string or a list
            continue
        if kind in (bool, int, float, str) and type(value) is not kind:
            raise ConfigError(f"{where}{key} must be {KINDS[kind]}, got {value!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.0=value' -> (['a', 'b', '0'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def apply_override(raw: dict, path: list[str], value) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        nxt = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a mapping or list")
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _read_yaml(path: Path, what: str):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


SHIPPED = Path(__file__).resolve().parent / "configs"  # the configs that ship with the package


def resolve_config(path) -> Path:
    """Where a config argument points. The path as given, from the working directory, when it exists; otherwise,
    for a relative path, the config of that name shipped inside the package (iama/configs/), with or without a
    leading `configs/` and the `.yaml`: `configs/length.yaml`, `length.yaml` and `length` all name the shipped
    length.yaml where the working directory holds no such file (outside a checkout too). Folders resolve the same
    way (`configs`, `configs/scale`); a path found nowhere comes back as given."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute() or ".." in p.parts:
        return p
    shipped = SHIPPED.joinpath(*(p.parts[1:] if p.parts[:1] == ("configs",) else p.parts))
    for candidate in (shipped, shipped.with_name(shipped.name + ".yaml")):
        if candidate.exists():
            return candidate
    return p


def config_name(path) -> str:
    """How a report names a config without this machine's paths: `configs/NAME` for a shipped one (when that name
    resolves to it from here), else relative to the working directory when inside it, else as given."""
    p = Path(path).expanduser().resolve()
    if p.is_relative_to(SHIPPED):
        name = Path("configs", p.relative_to(SHIPPED))
        if resolve_config(name).resolve() == p:
            return name.as_posix()
    here = Path.cwd().resolve()
    return str(p.relative_to(here)) if p.is_relative_to(here) else str(path)


def run_config_file(path) -> Path | None:
    """The config a training run saved: OUTPUT/final/iama_config.yaml, OUTPUT/config.yaml, iama_config.yaml in a
    final/ folder itself (a checkpoint folder reads its run's config.yaml). None when `path` holds none."""
    p = Path(path).expanduser()
    for candidate in (p / "final" / "iama_config.yaml", p / "iama_config.yaml", p / "config.yaml",
                      p.parent / "config.yaml" if p.name.startswith("checkpoint-") else None):
        if candidate is not None and candidate.is_file():
            data = _read_yaml(candidate, f"{candidate.name} of {str(path)!r}")
            if isinstance(data, dict) and "criteria" in data:  # not some other tool's config.yaml
                return candidate
    return None


def load_config(path=None, overrides=(), *, check_model: bool = True, **kwargs) -> TrainConfig:
    """Read YAML (or none), apply KEY=VALUE overrides and keyword arguments, validate the structure.

    path: a config file (or a shipped config's name: resolve_config), or a training run's directory (the config it
    saved; see run_config_file), so that a run written by any version reads as what it means. check_model=False
    skips checking that `model` is available (a finished run is evaluated from its final/ folder). Top-level keys
    that are TRL GRPOConfig fields are moved into `trl`; unknown keys are an error."""
    raw: dict = {}
    if path is not None:
        p = resolve_config(path)
        if p.is_dir():
            p = run_config_file(p)
            if p is None:
                raise ConfigError(f"config {str(path)!r}: a directory without iama_config.yaml or config.yaml")
        elif not p.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        raw = _read_yaml(p, f"config file {str(path)!r}")
        if raw is None:  # an empty file would train every default: more likely the wrong file
            raise ConfigError(f"config file {str(path)!r} is empty; write at least the criteria (see configs/)")
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    for text in overrides:
        keys, value = parse_override(text)
        try:
            apply_override(raw, keys, value)
        except (IndexError, ValueError, KeyError) as e:
            raise ConfigError(f"override {text!r} does not apply: {e}") from None
    raw.update(kwargs)
    trl = dict(raw.pop("trl", None) or {})
    grpo = _grpo_defaults()
    for key in list(raw):
        if key not in OURS:
            if key in grpo:
                trl[key] = raw.pop(key)
            else:
                raise ConfigError(f"unknown config key {key!r}: not an iama key and not a field of TRL's GRPOConfig")
    bad = sorted(set(trl) - set(grpo))
    if bad:
        raise ConfigError(f"unknown TRL GRPOConfig field(s): {', '.join(bad)}")
    clash = sorted(set(trl) & set(SHARED_WITH_TRL))
    if clash:
        raise ConfigError(f"set {', '.join(clash)} at the top level of the config, not under trl")
    ours = {f.name: (f.default if f.default is not dataclasses.MISSING else None) for f in dataclasses.fields(TrainConfig)}
    _check_types(raw, ours, "")
    _check_types(trl, grpo, "TRL GRPOConfig field ")
    cfg = TrainConfig(**raw, trl=trl)
    validate(cfg, check_model=check_model)
    return cfg


def validate(cfg: TrainConfig, check_model: bool = True) -> None:
    """Everything that can be checked without loading a model: fails with one clear line (ConfigError). The
    criteria themselves were checked when the config was made (parse_criteria)."""
    objective = build_objective(cfg)
    check_training(objective, num_generations=cfg.num_generations, beta=cfg.beta, target_kl=cfg.target_kl,
                   invalid_rewards=cfg.invalid_rewards, max_dropped_steps=cfg.max_dropped_steps)
    for name in ("kl_gain", "kl_gain_up"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    if not cfg.output_dir or not str(cfg.output_dir).strip():
        raise ConfigError(f"output_dir is empty: give the run's folder (got {cfg.output_dir!r})")
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {cfg.max_steps}")
    ref = cfg.sweep_reference
    if ref is not None and (not isinstance(ref, list) or len(ref) != len(cfg.criteria) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ref)):
        raise ConfigError(f"sweep_reference must be a list of {len(cfg.criteria)} numbers (one per criterion), "
                          f"got {ref!r}")
    if any(c.calibrated for c in cfg.criteria) and not cfg.calibration:
        raise ConfigError("calibrated criteria need `calibration:` (a store written by `iama calibrate`)")
    from .rewards import check_reward

    for c in cfg.criteria:
        if c.reward is None:
            raise ConfigError(f"criterion {c.name!r} needs a reward")
        try:
            check_reward(c.reward)
        except ValueError as e:
            raise ConfigError(f"criterion {c.name!r}: {e}") from None
    try:
        check_voting(cfg.criteria)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_trl_fields(cfg.trl)
    grpo_config(cfg)  # TRL's own checks (batch sizes, field types) before any model loads
    if check_model:
        from .models import check_model as _check_model

        try:
            _check_model(cfg.model)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_training(objective: Objective, *, num_generations, beta, target_kl, invalid_rewards, max_dropped_steps):
    """What training an objective needs of the group size, the KL settings and the invalid-reward policy, one line
    each (ConfigError): shared by the config (`iama train`) and IAMATrainer, so both refuse the same things before
    any model loads. invalid_rewards None leaves the reward functions as they are (IAMATrainer only)."""
    if num_generations < 2:
        raise ConfigError(f"num_generations (the group size M) must be at least 2, got {num_generations}")
    need = objective.min_group_size()
    if num_generations < need:
        raise ConfigError(
            f"num_generations={num_generations} is smaller than N={objective.max_n} of the largest algorithm; "
            f"the {objective.estimator!r} estimator needs M >= {need}"
        )
    if invalid_rewards not in (*INVALID_REWARDS, None):
        raise ConfigError(f"invalid_rewards must be 'stop' or 'drop', got {invalid_rewards!r}")
    if isinstance(max_dropped_steps, bool) or not isinstance(max_dropped_steps, int) or max_dropped_steps < 1:
        raise ConfigError(f"max_dropped_steps must be an integer >= 1, got {max_dropped_steps!r}")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if target_kl is not None and (target_kl <= 0 or beta <= 0):
        raise ConfigError(f"target_kl needs target_kl > 0 and an initial beta > 0 (the controller scales beta); "
                          f"got target_kl={target_kl}, beta={beta}")


def check_trl_fields(trl: dict) -> None:
    """TRL fields that TRL (or transformers) checks only once the model is loaded, checked here instead."""
    if trl.get("temperature") is not None and not trl["temperature"] > 0:
        raise ConfigError(f"temperature must be > 0 (sampling), got {trl['temperature']!r}")
    if trl.get("learning_rate") is not None and not trl["learning_rate"] >= 0:
        raise ConfigError(f"learning_rate must be >= 0, got {trl['learning_rate']!r}")
    if trl.get("max_completion_length") is not None and not trl["max_completion_length"] >= 1:
        raise ConfigError(f"max_completion_length (tokens per completion) must be at least 1, "
                          f"got {trl['max_completion_length']!r}")
    if trl.get("report_to") is not None:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        names = [trl["report_to"]] if isinstance(trl["report_to"], str) else list(trl["report_to"])
        bad = [n for n in names if n not in INTEGRATION_TO_CALLBACK and n not in ("all", "none")]
        if bad:
            raise ConfigError(f"report_to: unknown integration {bad[0]!r}; choose from none, all, "
                              f"{', '.join(INTEGRATION_TO_CALLBACK)}")


def grpo_config(cfg: TrainConfig):
    """TRL's config: our shared keys, CPU-friendly defaults the user did not set, then the user's TRL fields."""
    import torch
    from trl import GRPOConfig

    on_gpu = torch.cuda.is_available()
    defaults = dict(
        logging_steps=1, save_steps=max(1, min(50, cfg.max_steps // 4)), save_total_limit=2,
        report_to=["tensorboard"], bf16=on_gpu, disable_dropout=True,
        use_cpu=not on_gpu,  # also makes processes started by `accelerate launch --multi_gpu` talk over gloo
        max_completion_length=64, per_device_train_batch_size=cfg.num_generations,
    )
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(cfg.trl):
        # TRL's default is on; transformers 5.2x renamed the key (the old name warns), earlier 5.x lack the new one
        fields = {f.name for f in dataclasses.fields(GRPOConfig)}
        defaults["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    kwargs = {**defaults, **cfg.trl}
    kwargs["reward_weights"] = [c.weight for c in cfg.criteria]  # TRL logs its weighted reward
    for key in ("num_generations", "beta", "max_steps", "seed", "output_dir", "scale_rewards"):
        kwargs[key] = getattr(cfg, key)
    try:
        return GRPOConfig(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"TRL's GRPOConfig refused the config: {str(e).splitlines()[0]}") from None


def build_objective(cfg: TrainConfig) -> Objective:
    try:
        return Objective(cfg.criteria, aggregator=cfg.aggregator, gamma=cfg.gamma, estimator=cfg.estimator,
                         baseline=cfg.baseline, scale_rewards=cfg.scale_rewards)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def grpo_overrides(cfg: TrainConfig) -> list[str]:
    """KEY=VALUE overrides that make `cfg` its GRPO baseline: the same config with `sampling` for every criterion
    and GRPO's group-mean baseline (what configs/length-baseline.yaml is to configs/length.yaml)."""
    return [f"criteria.{i}.algorithm=sampling" for i in range(len(cfg.criteria))] + ["baseline=group_mean"]


def to_dict(cfg: TrainConfig) -> dict:
    """Plain values (criteria as mappings) for YAML: what load_config reads back as the same config."""
    out = dataclasses.asdict(cfg)
    out["criteria"] = [c.to_dict() for c in cfg.criteria]
    return out


# where and how a run logs and saves, and what only a report reads: free to change when it resumes
RESUME_FREE = {"output_dir", "resume", "keep_checkpoints", "max_dropped_steps", "sweep_reference", "trl.report_to",
               "trl.logging_steps", "trl.logging_dir", "trl.save_steps", "trl.save_total_limit", "trl.disable_tqdm"}


def settings_differ(saved: dict, cfg: TrainConfig) -> list[str]:
    """The keys (trl.KEY for TRL's) in which a saved config dict and `cfg` differ, beyond RESUME_FREE."""

    def flat(d):
        d = yaml.safe_load(yaml.safe_dump(d, sort_keys=False))  # the same YAML round trip for both
        return {**{k: v for k, v in d.items() if k != "trl"}, **{f"trl.{k}": v for k, v in (d.get("trl") or {}).items()}}

    saved = saved or {}
    try:  # read as any config, so that one written by an earlier version compares by what it means
        saved = to_dict(load_config(None, check_model=False, **saved))
    except ConfigError:
        pass  # one this version cannot read is compared as written
    saved, now = flat(saved), flat(to_dict(cfg))
    return sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k))


@dataclass
class ModelSpec:
    """A model to sample from: its label in reports, what to load, and its run's config when it is a run."""

    label: str
    model: str  # what to load: a directory, a built-in name or a hub id
    config: TrainConfig | None  # the training run's config, when the argument is a run


def parse_model_arg(arg) -> ModelSpec:
    """'LABEL=PATH', a run directory (its final/ model and config), a model directory, a built-in or a hub id."""
    text = str(arg)
    label = None
    if "=" in text and not Path(text).expanduser().exists():
        label, text = (s.strip() for s in text.split("=", 1))
        if not label or not text:
            raise ValueError(f"model {arg!r}: write LABEL=PATH")
    p = Path(text).expanduser()
    config = None
    if p.is_dir():
        config = load_config(p, check_model=False) if run_config_file(p) else None
        if (p / "final").is_dir():
            model = str(p / "final")
        elif (p / "config.json").is_file():
            model = str(p)
        elif config is not None:
            raise ValueError(f"run {text!r} has no final/ model yet (training not finished?); pass one of its "
                             "checkpoint-* folders instead")
        else:
            raise ValueError(f"model {text!r}: a directory with neither final/ nor config.json")
        default = p.parent.name if p.name == "final" else p.name
    else:
        model = text
        default = text.rstrip("/").split("/")[-1]
    return ModelSpec(label or default, model, config)


def check_voting(criteria) -> None:
    """A criterion decoded or evaluated with a voting algorithm (maj:N) needs a reward that gives answers: one
    line naming it otherwise, before any model loads."""
    from .rewards import reward_gives_answers, spec_text

    for c in parse_criteria(criteria):
        if c.algorithm.needs_answers and not reward_gives_answers(c.reward):
            raise ValueError(f"criterion {c.name!r} uses {c.algorithm.spec}, which votes on answers, but its reward "
                             f"{spec_text(c.reward)!r} gives none; use a reward with an `answers(completions)` "
                             "method, such as 'answer'")

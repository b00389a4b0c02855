"""Deployment: draw N candidates per prompt, score them with the criteria's rewards, select one.

Generation is separate from estimation. A **pool** is, for each prompt, M candidates with their token counts
and one score per criterion; it is stored as JSONL, one line per prompt, in the format `iama decode` writes, so
decode output is `iama eval` input and eval's saved pools can be re-read without sampling (docs/formats.md):

    {"prompt": "...", "model": "LABEL",
     "candidates": [{"text": "...", "num_tokens": 12, "finished": true, "scores": {"short": -0.01, ...},
                     "answers": {"correct": "12"}}, ...],     <- answers: only for rewards that give them
     "settings": {"m": 16, "seed": 0, "max_new_tokens": 64, "temperature": 1.0, ...},
     "criteria": [{"name": "short", "reward": "length:8:32", "algorithm": "bon:4", "weight": 0.5}, ...],
     "algorithm": "bon:4", "select_by": "short", "selected": 2}        <- decode only

The prompts' other columns (a prompt file's extra fields, e.g. the reference `answer`) reach the rewards as
keyword arguments with one value per completion, as TRL passes dataset columns; a reward with an
`answers(completions)` method (the `answer` reward) also gives each candidate's answer key, which majority
voting (maj:N) selects by.

Generation matches TRL's GRPOTrainer, so that what is evaluated or deployed is the distribution that was
trained: a fresh GenerationConfig (do_sample, temperature, top_p, top_k=0 i.e. off, min_p, repetition_penalty;
the model's own generation_config sampling defaults are not used), the chat template with
add_generation_prompt=True when the tokenizer has one (plain tokenisation otherwise), and completion ids cut
after the first EOS token, *including* it (any of the tokenizer's and the model's EOS ids). num_tokens is the
length of those ids, and the rewards get them as `completion_ids`, as in training; texts are decoded with
skip_special_tokens=True, and a conversational prompt gets conversational completions, as TRL does.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .algorithms import Algorithm, Tilted, parse_algorithm
from .config import TrainConfig, check_voting, load_config, run_config_file
from .data import prompt_key
from .models import check_device_and_dtype
from .objective import Criterion, parse_criteria
from .rewards import answers_method, reward_column, reward_gives_answers, spec_text
from .utils import atomic_write_text, check_output_file

BACKENDS = ("hf", "vllm")


# ---------------------------------------------------------------------------------------------------------------
# generation settings and backends


@dataclass
class GenerationSettings:
    """Sampling settings; the defaults are TRL GRPOConfig's, except max_new_tokens (TRL: 256)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off, as in TRL (Hugging Face's own default would be 50)
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if int(self.max_new_tokens) != self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        self.max_new_tokens, self.top_k = int(self.max_new_tokens), int(self.top_k)
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)

    @classmethod
    def from_run_config(cls, config: TrainConfig | None, **overrides) -> GenerationSettings:
        """Settings from a training config's TRL fields (what the run sampled with), then the non-None overrides."""
        trl = config.trl if config is not None else {}
        values = {}
        for ours, theirs in [("max_new_tokens", "max_completion_length"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                             ("repetition_penalty", "repetition_penalty")]:
            if trl.get(theirs) is not None:
                values[ours] = trl[theirs]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _conversation(prompt):
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class HFBackend:
    """Hugging Face `generate`: all M candidates of a batch of prompts in one call (num_return_sequences=M)."""

    name = "hf"

    def __init__(self, model, tokenizer=None, *, dtype=None, device=None, batch_size: int = 256):
        import torch

        from .models import has_chat_template, load_model

        if isinstance(model, (str, Path)):
            model, tokenizer = load_model(str(model), dtype=dtype)
        elif tokenizer is None:
            raise ValueError("HFBackend needs the tokenizer with a model object")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat = has_chat_template(tokenizer)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos = [tokenizer.eos_token_id, *eos]
        self.eos_ids = eos  # as TRL: every EOS id the model declares ends a completion
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)

    def prompt_ids(self, prompts) -> list[list[int]]:
        """Token ids of each prompt as TRL builds them: chat template + generation prompt, or plain text."""
        if self.chat:
            out = self.tokenizer.apply_chat_template([_conversation(p) for p in prompts], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
            return [list(ids) for ids in out["input_ids"]]
        texts = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
        return [list(ids) for ids in self.tokenizer(text=texts)["input_ids"]]

    def generate(self, prompts, n: int, settings: GenerationSettings, seed: int) -> list[list[dict]]:
        """For each prompt, n candidates {text, ids, num_tokens, finished}."""
        import torch
        from transformers import GenerationConfig

        ids = self.prompt_ids(prompts)
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=True, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, min_p=settings.min_p,
            repetition_penalty=settings.repetition_penalty, num_return_sequences=n, pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.eos_ids,
        )
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        completion = out[:, width:].cpu()
        is_eos = torch.isin(completion, torch.tensor(self.eos_ids, dtype=completion.dtype))
        has_eos = is_eos.any(dim=1)
        end = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, completion.shape[1])  # through the first EOS
        rows = [completion[i, : int(end[i])].tolist() for i in range(completion.shape[0])]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        flat = [{"text": t, "ids": r, "num_tokens": len(r), "finished": bool(f)}
                for t, r, f in zip(texts, rows, has_eos.tolist())]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]  # generate keeps each prompt's n together


class VLLMBackend:
    """vLLM's offline engine, same interface: `LLM(model=...)`, `SamplingParams(n=M, ...)`, `llm.chat` for a
    tokenizer with a chat template (add_generation_prompt=True), else `llm.generate`. vLLM's token_ids include
    the EOS token that ended a completion, as the HF backend's do. Needs `pip install vllm` (and a GPU)."""

    name = "vllm"

    def __init__(self, model, *, dtype=None, seed: int = 0, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError:
            raise ValueError("backend 'vllm' needs the vllm package: pip install 'iama[vllm]'") from None
        from .models import has_chat_template, resolve_model

        self.llm = LLM(model=resolve_model(model), dtype=dtype or "auto", seed=seed, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = has_chat_template(self.tokenizer)
        self.batch_size = 1 << 30  # vLLM schedules its own batches

    def generate(self, prompts, n: int, settings: GenerationSettings, seed: int) -> list[list[dict]]:
        from vllm import SamplingParams

        # one seed per prompt: prompts must not share random numbers (the intervals assume independent prompts)
        params = [SamplingParams(n=n, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                 top_p=settings.top_p, top_k=settings.top_k or -1, min_p=settings.min_p or 0.0,
                                 repetition_penalty=settings.repetition_penalty, seed=(seed + i) % (1 << 63))
                  for i in range(len(prompts))]
        if self.chat:
            outputs = self.llm.chat([_conversation(p) for p in prompts], params, add_generation_prompt=True,
                                    use_tqdm=False)
        else:
            outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[{"text": o.text, "ids": list(o.token_ids), "num_tokens": len(o.token_ids),
                  "finished": o.finish_reason == "stop"} for o in request.outputs] for request in outputs]


def make_backend(model, backend: str = "hf", *, dtype=None, device=None, batch_size: int = 256, seed: int = 0):
    if backend == "hf":
        return HFBackend(model, dtype=dtype, device=device, batch_size=batch_size)
    if backend == "vllm":
        return VLLMBackend(model, dtype=dtype, seed=seed)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


# ---------------------------------------------------------------------------------------------------------------
# criteria, models and run directories


def parse_reward_args(items) -> dict:
    """['short=length:8:32', 'sentiment'] -> {'short': 'length:8:32', 'sentiment': 'sentiment'}."""
    out = {}
    for item in items or ():
        name, sep, spec = str(item).partition("=")
        name, spec = (name.strip(), spec.strip()) if sep else (item.strip().split(":")[0], item.strip())
        if not name or not spec:
            raise ValueError(f"reward {item!r}: write NAME=SPEC, e.g. short=length:8:32")
        if name in out:
            raise ValueError(f"reward name {name!r} given twice")
        out[name] = spec
    return out


@dataclass
class ModelSpec:
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


def build_rewards(criteria, tokenizer=None) -> dict:
    """{name: TRL-style reward function} of each criterion's raw reward (criteria as parse_criteria takes them)."""
    from .rewards import build_reward

    return {c.name: build_reward(c.reward, tokenizer=tokenizer) for c in parse_criteria(criteria)}


def check_prompt_columns(criteria, prompts, source=None) -> None:
    """Every prompt column a criterion's reward reads (the `answer` reward's reference) must be in `prompts`
    (iama.data.Prompts.columns), with a value for every prompt: one line naming the column and the source."""
    from .data import require_column

    source = source or getattr(prompts, "source", None) or "the prompts given"
    for c in parse_criteria(criteria):
        column = reward_column(c.reward)
        if column is not None:
            require_column(prompts, column, source)


def answer_key_json(key):
    """An answer key as stored in a pool: None, strings, booleans, integers and finite floats as they are,
    anything else (a tuple, a sympy object) as its str(). Keys only need equality, which this keeps."""
    if key is None or isinstance(key, (str, bool, int)):
        return key
    if isinstance(key, float) and math.isfinite(key):
        return key
    if isinstance(key, np.generic):
        return answer_key_json(key.item())
    return str(key)


def answer_key_read(value):
    """A stored answer key back as a hashable one (a JSON list, written by another tool, as a tuple)."""
    if isinstance(value, list):
        return tuple(answer_key_read(v) for v in value)
    return value


def _reward_kwargs(fn, columns: dict) -> dict:
    """The columns TRL would pass to `fn` as keyword arguments: all of them, or, for a function that takes no
    **kwargs, the ones it names (TRL would fail on the others; evaluation stays lenient)."""
    import inspect

    if not columns:
        return {}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return dict(columns)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(columns)
    names = {p.name for p in params}
    return {k: v for k, v in columns.items() if k in names}


def _completions_in(prompts, candidates, chat: bool):
    """(prompts, completions) as TRL gives them to rewards: conversations with a chat template, else strings."""
    if chat:
        return [_conversation(p) for p in prompts], [[{"role": "assistant", "content": c["text"]}] for c in candidates]
    return list(prompts), [c["text"] for c in candidates]


def score_candidates(prompts, samples, rewards: dict, chat: bool, columns: dict | None = None) -> None:
    """Add `scores` {criterion: float} to every candidate; one call per reward for the whole batch. A reward
    gets the prompts' other columns (`columns`: {name: one value per prompt}, e.g. the `answer` reward's
    reference) as keyword arguments holding one value per completion, as TRL passes dataset columns. A reward
    with an `answers` method (answers_method) also gives each candidate's answer key, stored as `answers`
    {criterion: key} (answer_key_json). A reward that gives NaN, None or inf raises ValueError naming the reward."""
    flat_prompts = [p for p, cands in zip(prompts, samples) for _ in cands]
    flat = [c for cands in samples for c in cands]
    prompts_in, completions = _completions_in(flat_prompts, flat, chat)
    per_completion = {}
    for name, values in (columns or {}).items():
        if len(values) != len(prompts):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(prompts)} prompts")
        per_completion[name] = [v for v, cands in zip(values, samples) for _ in cands]
    ids = [c["ids"] for c in flat]
    for name, fn in rewards.items():
        values = list(fn(prompts=prompts_in, completions=completions, completion_ids=ids,
                         **_reward_kwargs(fn, per_completion)))
        if len(values) != len(flat):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(flat)} completions")
        for c, v in zip(flat, values):
            v = math.nan if v is None else float(v)
            if not math.isfinite(v):
                raise ValueError(f"reward {name!r} returned {v} for the completion {c['text'][:60]!r}; "
                                 "evaluation needs a finite score for every candidate")
            c.setdefault("scores", {})[name] = v
        answers_of = answers_method(fn)
        if answers_of is not None:
            keys = list(answers_of(completions))
            if len(keys) != len(flat):
                raise ValueError(f"reward {name!r} gave {len(keys)} answers for {len(flat)} completions")
            for c, k in zip(flat, keys):
                c.setdefault("answers", {})[name] = answer_key_json(k)


def fill_answers(records, criteria, rewards: dict | None = None) -> set:
    """Add the missing answer keys of pool records (a pool written before answers were stored, or by another
    tool) from the candidates' texts, for every criterion whose reward gives answers: `rewards` ({name: built
    function}) or built from the criteria's specs (the `answer` reward loads nothing). Returns the names of the
    criteria every candidate now has an answer for."""
    from .rewards import build_reward

    have = set()
    for c in parse_criteria(criteria):
        missing = [r for r in records if any(c.name not in (x.get("answers") or {}) for x in r["candidates"])]
        if missing:
            fn = (rewards or {}).get(c.name)
            if fn is None and reward_gives_answers(c.reward):
                fn = build_reward(c.reward)
            answers_of = answers_method(fn) if fn is not None else None
            if answers_of is None:
                continue
            for r in missing:
                chat = bool((r.get("settings") or {}).get("chat_template"))
                _, completions = _completions_in([r["prompt"]] * len(r["candidates"]), r["candidates"], chat)
                for x, k in zip(r["candidates"], answers_of(completions)):
                    x.setdefault("answers", {})[c.name] = answer_key_json(k)
        have.add(c.name)
    return have


# ---------------------------------------------------------------------------------------------------------------
# pools: sample, save, read


def model_fingerprint(model) -> str:
    """What identifies the weights: for a local directory the names, sizes and modification times of its weight
    and config files (a retrained run in the same folder gets a new fingerprint), else the name itself."""
    import hashlib

    p = Path(str(model)).expanduser()
    if not p.is_dir():
        return str(model)
    h = hashlib.sha1()
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt", ".gguf") or f.name == "config.json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def chunk_seed(seed: int, label: str, start: int) -> int:
    """The torch seed of the chunk of prompts starting at `start`: a resumed pool draws what a fresh one would."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(label.encode()), int(start)]).generate_state(1)[0])


def _record(prompt, label, candidates, settings: dict, criteria, objective=None) -> dict:
    r = {"prompt": prompt, "model": label,
         "candidates": [{"text": c["text"], "num_tokens": c["num_tokens"], "finished": c["finished"],
                         "scores": c["scores"], **({"answers": c["answers"]} if "answers" in c else {}),
                         **({"ids": c["ids"]} if "ids" in c else {})} for c in candidates],
         "settings": settings,
         # the scores are the raw rewards: no calibration keys, whatever the criteria were trained with
         "criteria": [{"name": c.name, "reward": spec_text(c.reward), "algorithm": c.algorithm.spec,
                       "weight": c.weight} for c in criteria]}
    if objective:
        r["objective"] = dict(objective)
    return r


def write_pool(path, records) -> Path:
    """Write records as JSONL atomically (a crash leaves the previous file, never half of one)."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_pool(path) -> list[dict]:
    """The records of a pool file (JSONL, or gzipped JSONL named *.gz, as committed results keep them), checked:
    prompt, model, and candidates with num_tokens and finite scores for the same criteria everywhere. Raises
    ValueError naming the file and line."""
    import gzip

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"pool {str(path)!r} not found")
    records, names = [], None
    text = gzip.decompress(p.read_bytes()).decode("utf-8") if p.suffix == ".gz" else p.read_text(encoding="utf-8")
    # split on "\n" only: str.splitlines also breaks at U+2028, U+0085 ..., which JSON leaves unescaped in strings
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"pool {p.name!r} line {i}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), (str, list)):
            raise ValueError(f"{where}: a record needs 'prompt' and 'candidates'")
        cands = r.get("candidates")
        if not isinstance(cands, list) or not cands:
            raise ValueError(f"{where}: 'candidates' must be a non-empty list")
        for j, c in enumerate(cands):
            scores = c.get("scores") if isinstance(c, dict) else None
            if not isinstance(scores, dict) or not scores:
                raise ValueError(f"{where}: candidate {j} has no 'scores'")
            if names is None:
                names = list(scores)
            if sorted(scores) != sorted(names):
                raise ValueError(f"{where}: candidate {j} is scored on {sorted(scores)}, the pool on {sorted(names)}")
            for k, v in scores.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ValueError(f"{where}: candidate {j} has a non-finite score {v!r} for {k!r}")
            if "num_tokens" in c and (not isinstance(c["num_tokens"], int) or c["num_tokens"] < 0):
                raise ValueError(f"{where}: candidate {j} has an invalid num_tokens {c['num_tokens']!r}")
            answers = c.get("answers")
            if answers is not None:
                if not isinstance(answers, dict):
                    raise ValueError(f"{where}: candidate {j} has 'answers' that is not a mapping of criteria to "
                                     "answer keys")
                for k, v in answers.items():
                    if k not in scores:
                        raise ValueError(f"{where}: candidate {j} has an answer for {k!r}, which it has no score for")
                    if not _json_key(v):
                        raise ValueError(f"{where}: candidate {j} has an answer for {k!r} that is not a string, "
                                         f"number, list or null: {v!r}")
        r.setdefault("model", p.stem)
        records.append(r)
    if not records:
        raise ValueError(f"pool {str(path)!r} is empty")
    return records


def _json_key(v) -> bool:
    if isinstance(v, list):
        return all(_json_key(x) for x in v)
    return v is None or isinstance(v, (str, int, float, bool))


def sample_pool(backend, prompts, criteria, rewards: dict, *, m: int, settings: GenerationSettings, seed: int = 0,
                label: str = "model", path=None, resume: bool = True, progress: bool = True,
                model_arg: str | None = None, objective: dict | None = None) -> list[dict]:
    """M scored candidates for each prompt, as pool records in the order of `prompts`.

    With `path`, the file is rewritten atomically after every chunk, and (with resume) prompts already in it
    are not sampled again: a killed run continues where it stopped. A file drawn with other settings (M,
    generation, seed, criteria's rewards) is refused rather than mixed. `objective` ({aggregator, gamma}) is
    saved with the records, so that a report can be remade from the pool alone. The prompts' other columns
    (iama.data.Prompts.columns, e.g. a reference `answer`) reach the rewards as TRL passes them (score_candidates);
    a reward with an `answers` method also stores each candidate's answer key."""
    if int(m) != m or m < 1:
        raise ValueError(f"M (samples per prompt) must be a positive integer, got {m!r}")
    m, criteria = int(m), parse_criteria(criteria)
    setting = {"m": m, "seed": int(seed), **asdict(settings), "backend": backend.name,
               "chat_template": bool(backend.chat)}
    if model_arg is not None:
        setting["model"] = str(model_arg)
        setting["model_fingerprint"] = model_fingerprint(model_arg)
    reward_specs = {c.name: spec_text(c.reward) for c in criteria}
    done: dict[str, dict] = {}
    kept: list[dict] = []
    others: list[dict] = []  # other models' lines in the same file are kept as they are
    if path is not None and Path(path).is_file() and resume:
        for r in read_pool(path):
            if r.get("model") != label:
                others.append(r)
                continue
            old = {k: v for k, v in (r.get("settings") or {}).items() if k != "model"}
            new = {k: v for k, v in setting.items() if k != "model"}
            old_rewards = {c["name"]: c.get("reward") for c in r.get("criteria") or []}
            if old != new or old_rewards != reward_specs:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                changed += ["rewards"] if old_rewards != reward_specs else []
                raise ValueError(f"pool {str(path)!r} was drawn with other settings ({', '.join(changed)} differ, "
                                 "e.g. another model in the same place); remove it, or pass resume=False / "
                                 "another output folder")
            done[prompt_key(r["prompt"])] = r
            kept.append(r)
        fill_answers(kept, criteria, rewards)  # a pool written before answers were stored gets them from its texts
    columns = getattr(prompts, "columns", None) or {}
    unique, seen, origin = [], set(), []
    for j, p in enumerate(prompts):
        key = prompt_key(p)
        if key not in seen:
            seen.add(key)
            unique.append((len(unique), p))
            origin.append(j)  # where its columns are
    todo = [(i, p) for i, p in unique if prompt_key(p) not in done]
    per_call = max(1, backend.batch_size // m)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc=f"sampling {label} (M={m})",
                   unit="prompt")
    records = list(kept)
    for start in range(0, len(todo), per_call):
        chunk = todo[start:start + per_call]
        batch = [p for _, p in chunk]
        samples = backend.generate(batch, m, settings, chunk_seed(seed, label, chunk[0][0]))
        score_candidates(batch, samples, rewards, backend.chat,
                         {name: [values[origin[i]] for i, _ in chunk] for name, values in columns.items()})
        for p, cands in zip(batch, samples):
            r = _record(p, label, cands, setting, criteria, objective)
            done[prompt_key(p)] = r
            records.append(r)
        if path is not None:
            write_pool(path, others + records)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if path is not None and not Path(path).is_file():
        write_pool(path, others + records)
    return [done[prompt_key(p)] for _, p in unique]


# ---------------------------------------------------------------------------------------------------------------
# decode


def collect_prompts(prompts=(), source=None, *, column: str = "prompt", split: str = "train", limit=None,
                    offset: int = 0):
    """The prompts given as arguments, then `limit` prompts of `source` (iama.data.load_prompts: 'builtin', a
    file, 'hf:NAME') after skipping `offset` of them (e.g. the ones a run trained on). An iama.data.Prompts: the
    source's other columns come along (None for the prompts given as arguments), and `.source` says where the
    prompts came from (for error messages such as a missing reference column)."""
    from .data import Prompts

    given = [p for p in (prompts or ()) if str(p).strip()]
    given_columns = getattr(prompts, "columns", None) or {}
    if given_columns:  # a Prompts given: keep the columns of the prompts kept
        kept = [j for j, p in enumerate(prompts) if str(p).strip()]
        given_columns = {k: [v[j] for j in kept] for k, v in given_columns.items()}
    loaded = Prompts()
    if source is not None:
        from .data import load_prompts

        if int(offset) < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if limit is not None and int(limit) < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        loaded = load_prompts(source, column=column, split=split,
                              limit=None if limit is None else int(offset) + int(limit))[int(offset):]
        if not loaded:
            raise ValueError(f"prompts {source!r}: none left after skipping {offset}")
    if prompts and not given and source is None:
        raise ValueError("the prompts given are empty (--prompt ''): give a prompt's text")
    if not given and not loaded:
        raise ValueError("no prompts: give prompts as arguments or a prompt source (a file, 'builtin', 'hf:NAME')")
    names = list(dict.fromkeys([*given_columns, *loaded.columns]))
    out = Prompts(given + list(loaded), {
        name: list(given_columns.get(name, [None] * len(given))) + list(loaded.columns.get(name, [None] * len(loaded)))
        for name in names})
    out.source = (getattr(prompts, "source", None) or "the prompts given") if source is None else (
        str(source) if not given else f"the prompts given and {source}")
    return out


def check_decode_algorithm(algorithm) -> Algorithm:
    alg = parse_algorithm(algorithm)
    if isinstance(alg, Tilted):
        raise ValueError(f"{alg.spec} is not an N-sample algorithm; to deploy it use soft_bon:N:{alg.temperature:g}")
    return alg


def decode(prompts, model, rewards=None, *, algorithm="bon:4", select_by: str | None = None, config=None,
           label: str | None = None, out=None, max_new_tokens: int | None = None, temperature: float | None = None,
           top_p: float | None = None, top_k: int | None = None, seed: int = 0, backend: str = "hf",
           batch_size: int = 256, dtype=None, device=None, progress: bool = True) -> list[dict]:
    """Generate N candidates per prompt (N of `algorithm`), score them, select one; return the records and,
    with `out`, write them as JSONL (the pool format plus algorithm, select_by, selected, response).

    prompts: strings, or an iama.data.Prompts (collect_prompts) whose columns reach the rewards (the `answer`
    reward's reference: a missing column is one line naming it and the prompts' source).
    model:   a run directory, model directory, built-in name or hub id (or LABEL=PATH).
    rewards: {name: spec} or ['name=spec', ...]; default: the criteria of `config` or of the run.
    algorithm: sampling, bon:N, won:N, soft_bon:N:TAU or maj:N (majority vote over the answers that the
    `select_by` criterion's reward gives, e.g. 'answer'). select_by: the criterion to select by (default the
    first). Generation settings default to the run's (its TRL fields), else GenerationSettings' defaults.
    Selection is seeded (soft_bon draws, maj's ties); ties go to the first candidate for bon/won. A repeated
    prompt is decoded once. Under maj:N a criterion whose reward gives no answers is saved with `sampling` (it is
    not voted on), so that `iama eval --pool` reads the file."""
    if isinstance(prompts, str):
        prompts = [prompts]
    source = getattr(prompts, "source", None)
    columns = getattr(prompts, "columns", None) or {}
    if columns:
        from .data import Prompts

        prompts = Prompts(prompts, columns)
    else:
        prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to decode")
    if out is not None:
        check_output_file(out, "--out")  # before sampling: no work lost to a path that cannot take it
    check_device_and_dtype(device, dtype)
    alg = check_decode_algorithm(algorithm)
    spec = parse_model_arg(model)
    run_config = load_config(config, check_model=False) if config is not None else spec.config
    if rewards:
        reward_map = rewards if isinstance(rewards, dict) else parse_reward_args(rewards)
        criteria = parse_criteria([{"name": k, "reward": v} for k, v in reward_map.items()])
    elif run_config is not None:
        criteria = run_config.criteria
    else:
        raise ValueError("no rewards to select by: pass rewards (NAME=SPEC) or a config / run with criteria")
    names = [c.name for c in criteria]
    select_by = select_by or names[0]
    if select_by not in names:
        raise ValueError(f"select_by {select_by!r} is not a criterion; choose one of {names}")
    from .rewards import check_reward

    for c in criteria:
        check_reward(c.reward)
    # what the saved pool is evaluated under by `iama eval --pool`: the deployed algorithm (maj only where the
    # reward gives answers to vote on; the criterion selected by must)
    criteria = [Criterion(c.name, alg if not alg.needs_answers or c.name == select_by or
                          reward_gives_answers(c.reward) else "sampling", c.weight, c.reward) for c in criteria]
    check_voting(criteria)
    check_prompt_columns(criteria, prompts, source)
    settings = GenerationSettings.from_run_config(run_config, max_new_tokens=max_new_tokens,
                                                  temperature=temperature, top_p=top_p, top_k=top_k)
    gen = make_backend(spec.model, backend, dtype=dtype, device=device, batch_size=batch_size, seed=seed)
    reward_fns = build_rewards(criteria, gen.tokenizer)
    name = label or spec.label
    records = sample_pool(gen, prompts, criteria, reward_fns, m=alg.n, settings=settings, seed=seed, label=name,
                          path=None, progress=progress, model_arg=model)
    scores = np.array([[c["scores"][select_by] for c in r["candidates"]] for r in records])
    if alg.needs_answers:
        answers = [[answer_key_read(c["answers"][select_by]) for c in r["candidates"]] for r in records]
        chosen = alg.select(scores, generator=seed, answers=answers)
    else:
        chosen = alg.select(scores, generator=seed)
    for r, k in zip(records, np.atleast_1d(chosen)):
        r.update(algorithm=alg.spec, select_by=select_by, selected=int(k), response=r["candidates"][int(k)]["text"])
    if out is not None:
        write_pool(out, records)
    return records

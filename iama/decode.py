"""Deployment: draw N candidates per prompt, score them with the criteria's rewards, select one.

Generation is separate from estimation. A **pool** is, for each prompt, M candidates with their token counts
and one score per criterion; it is stored as JSONL, one line per prompt, in the format `iama decode` writes, so
decode output is `iama eval` input and eval's saved pools can be re-read without sampling (docs/report.md):

    {"prompt": "...", "model": "LABEL",
     "candidates": [{"text": "...", "num_tokens": 12, "finished": true, "scores": {"short": -0.01, ...}}, ...],
     "settings": {"m": 16, "seed": 0, "max_new_tokens": 64, "temperature": 1.0, ...},
     "criteria": [{"name": "short", "reward": "length:8:32", "algorithm": "bon:4", "weight": 0.5}, ...],
     "algorithm": "bon:4", "select_by": "short", "selected": 2}        <- decode only

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
import yaml

from .algorithms import Algorithm, Tilted, parse_algorithm
from .data import prompt_key
from .utils import atomic_write_text

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
    def from_run_config(cls, config: dict | None, **overrides) -> GenerationSettings:
        """Settings from a training run's config (its TRL fields), then the non-None overrides."""
        config = config or {}
        trl = {**config, **(config.get("trl") or {})}  # a saved run has them under trl, a YAML at the top level
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


def read_run_config(path) -> dict | None:
    """The config of a training run: OUTPUT/final/iama_config.yaml, OUTPUT/config.yaml, or iama_config.yaml in
    a final/ folder itself (a checkpoint folder reads its run's config.yaml). None when there is none."""
    p = Path(path).expanduser()
    for candidate in (p / "final" / "iama_config.yaml", p / "iama_config.yaml", p / "config.yaml",
                      p.parent / "config.yaml" if p.name.startswith("checkpoint-") else None):
        if candidate is not None and candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"{candidate.name} of {str(path)!r} is not valid YAML: "
                                 f"{str(e).splitlines()[0]}") from None
            if isinstance(data, dict) and "criteria" in data:
                return data
    return None


def load_config_file(path) -> dict:
    """A YAML with `criteria` (and optionally aggregator, gamma, trl): a training config or a run directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        config = read_run_config(p)
        if config is None:
            raise ValueError(f"config {str(path)!r}: a directory without iama_config.yaml or config.yaml")
        return config
    if not p.is_file():
        raise ValueError(f"config {str(path)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data.get("criteria"):
        raise ValueError(f"config {str(path)!r} has no `criteria:` list")
    return data


def normalise_criteria(criteria) -> list[dict]:
    """[{name, reward, algorithm, weight}]: from a list of dicts (a run's config), or {name: reward_spec}.
    Calibration keys are dropped: evaluation and deployment score the raw reward."""
    if isinstance(criteria, dict):
        criteria = [{"name": k, "reward": v} for k, v in criteria.items()]
    out = []
    for i, c in enumerate(criteria or []):
        if not isinstance(c, dict) or "name" not in c or "reward" not in c:
            raise ValueError(f"criterion {i} must be a mapping with at least 'name' and 'reward'")
        alg = parse_algorithm(c.get("algorithm", "sampling"))
        weight = float(c.get("weight", 1.0))
        out.append({"name": str(c["name"]), "reward": c["reward"], "algorithm": alg.spec, "weight": weight})
    names = [c["name"] for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"criterion names must be unique, got {names}")
    return out


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
    config: dict | None  # the training run's config, when the argument is a run


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
        config = read_run_config(p)
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
    """{name: TRL-style reward function} for normalised criteria."""
    from .rewards import build_reward

    return {c["name"]: build_reward(c["reward"], tokenizer=tokenizer) for c in criteria}


def _spec_text(spec):
    if isinstance(spec, (str, int, float)) or spec is None:
        return spec
    if isinstance(spec, dict):
        return {k: _spec_text(v) for k, v in spec.items()}
    return getattr(spec, "__name__", repr(spec))


def score_candidates(prompts, samples, rewards: dict, chat: bool) -> None:
    """Add `scores` {criterion: float} to every candidate; one call per reward for the whole batch.
    A reward that gives NaN, None or inf raises ValueError naming the reward."""
    flat_prompts = [p for p, cands in zip(prompts, samples) for _ in cands]
    flat = [c for cands in samples for c in cands]
    if chat:
        prompts_in = [_conversation(p) for p in flat_prompts]
        completions = [[{"role": "assistant", "content": c["text"]}] for c in flat]
    else:
        prompts_in, completions = flat_prompts, [c["text"] for c in flat]
    ids = [c["ids"] for c in flat]
    for name, fn in rewards.items():
        values = list(fn(prompts=prompts_in, completions=completions, completion_ids=ids))
        if len(values) != len(flat):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(flat)} completions")
        for c, v in zip(flat, values):
            v = math.nan if v is None else float(v)
            if not math.isfinite(v):
                raise ValueError(f"reward {name!r} returned {v} for the completion {c['text'][:60]!r}; "
                                 "evaluation needs a finite score for every candidate")
            c.setdefault("scores", {})[name] = v


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
                         "scores": c["scores"], **({"ids": c["ids"]} if "ids" in c else {})} for c in candidates],
         "settings": settings,
         "criteria": [{**c, "reward": _spec_text(c["reward"])} for c in criteria]}
    if objective:
        r["objective"] = dict(objective)
    return r


def write_pool(path, records) -> Path:
    """Write records as JSONL atomically (a crash leaves the previous file, never half of one)."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_pool(path) -> list[dict]:
    """The records of a pool file, checked: prompt, model, and candidates with num_tokens and finite scores
    for the same criteria everywhere. Raises ValueError naming the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"pool {str(path)!r} not found")
    records, names = [], None
    # split on "\n" only: str.splitlines also breaks at U+2028, U+0085 ..., which JSON leaves unescaped in strings
    for i, line in enumerate(p.read_text(encoding="utf-8").split("\n"), start=1):
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
        r.setdefault("model", p.stem)
        records.append(r)
    if not records:
        raise ValueError(f"pool {str(path)!r} is empty")
    return records


def sample_pool(backend, prompts, criteria, rewards: dict, *, m: int, settings: GenerationSettings, seed: int = 0,
                label: str = "model", path=None, resume: bool = True, progress: bool = True,
                model_arg: str | None = None, objective: dict | None = None) -> list[dict]:
    """M scored candidates for each prompt, as pool records in the order of `prompts`.

    With `path`, the file is rewritten atomically after every chunk, and (with resume) prompts already in it
    are not sampled again: a killed run continues where it stopped. A file drawn with other settings (M,
    generation, seed, criteria's rewards) is refused rather than mixed. `objective` ({aggregator, gamma}) is
    saved with the records, so that a report can be remade from the pool alone."""
    if int(m) != m or m < 1:
        raise ValueError(f"M (samples per prompt) must be a positive integer, got {m!r}")
    m = int(m)
    setting = {"m": m, "seed": int(seed), **asdict(settings), "backend": backend.name,
               "chat_template": bool(backend.chat)}
    if model_arg is not None:
        setting["model"] = str(model_arg)
        setting["model_fingerprint"] = model_fingerprint(model_arg)
    reward_specs = {c["name"]: _spec_text(c["reward"]) for c in criteria}
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
    unique, seen = [], set()
    for p in prompts:
        key = prompt_key(p)
        if key not in seen:
            seen.add(key)
            unique.append((len(unique), p))
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
        score_candidates(batch, samples, rewards, backend.chat)
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
                    offset: int = 0) -> list:
    """The prompts given as arguments, then `limit` prompts of `source` (iama.data.load_prompts: 'builtin', a
    file, 'hf:NAME') after skipping `offset` of them (e.g. the ones a run trained on)."""
    out = [p for p in (prompts or ()) if str(p).strip()]
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
        out += loaded
    if not out:
        raise ValueError("no prompts: give prompts as arguments or a prompt source (a file, 'builtin', 'hf:NAME')")
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

    model:   a run directory, model directory, built-in name or hub id (or LABEL=PATH).
    rewards: {name: spec} or ['name=spec', ...]; default: the criteria of `config` or of the run.
    algorithm: sampling, bon:N, won:N or soft_bon:N:TAU. select_by: the criterion to select by (default the
    first). Generation settings default to the run's (its TRL fields), else GenerationSettings' defaults.
    Selection is seeded (soft_bon draws); ties go to the first candidate for bon/won. A repeated prompt is
    decoded once."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to decode")
    alg = check_decode_algorithm(algorithm)
    spec = parse_model_arg(model)
    run_config = load_config_file(config) if config is not None else spec.config
    if rewards:
        reward_map = rewards if isinstance(rewards, dict) else parse_reward_args(rewards)
        criteria = normalise_criteria(reward_map)
    elif run_config is not None:
        criteria = normalise_criteria(run_config["criteria"])
    else:
        raise ValueError("no rewards to select by: pass rewards (NAME=SPEC) or a config / run with criteria")
    for c in criteria:  # what the saved pool is evaluated under by `iama eval --pool`: the deployed algorithm
        c["algorithm"] = alg.spec
    names = [c["name"] for c in criteria]
    select_by = select_by or names[0]
    if select_by not in names:
        raise ValueError(f"select_by {select_by!r} is not a criterion; choose one of {names}")
    settings = GenerationSettings.from_run_config(run_config, max_new_tokens=max_new_tokens,
                                                  temperature=temperature, top_p=top_p, top_k=top_k)
    from .rewards import check_reward

    for c in criteria:
        check_reward(c["reward"])
    gen = make_backend(spec.model, backend, dtype=dtype, device=device, batch_size=batch_size, seed=seed)
    reward_fns = build_rewards(criteria, gen.tokenizer)
    name = label or spec.label
    records = sample_pool(gen, prompts, criteria, reward_fns, m=alg.n, settings=settings, seed=seed, label=name,
                          path=None, progress=progress, model_arg=model)
    scores = np.array([[c["scores"][select_by] for c in r["candidates"]] for r in records])
    chosen = alg.select(scores, generator=seed)
    for r, k in zip(records, np.atleast_1d(chosen)):
        r.update(algorithm=alg.spec, select_by=select_by, selected=int(k), response=r["candidates"][int(k)]["text"])
    if out is not None:
        write_pool(out, records)
    return records

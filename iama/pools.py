"""Pools: M scored candidates per prompt, the data every later layer reads.

A **pool** is, for each prompt, M candidates with their token counts and one score per criterion; it is stored
as JSONL, one line per prompt, in the format `iama decode` writes, so decode output is `iama eval` input and
eval's saved pools can be re-read without sampling (docs/formats.md):

    {"prompt": "...", "model": "LABEL",
     "candidates": [{"text": "...", "num_tokens": 12, "finished": true, "scores": {"short": -0.01, ...},
                     "answers": {"correct": "12"}}, ...],     <- answers: only for rewards that give them
     "settings": {"m": 16, "seed": 0, "max_new_tokens": 64, "temperature": 1.0, ...},
     "criteria": [{"name": "short", "reward": "length:8:32", "algorithm": "bon:4", "weight": 0.5}, ...],
     "algorithm": "bon:4", "select_by": "short", "selected": 2}        <- decode only

Here: sampling a pool with a backend (iama.backends), scoring candidates with the criteria's raw rewards (the
one scoring path of decode, eval and CTRL's calibration), the file format, and a pool as arrays (Pool) for
iama.estimate. The prompts' other columns (a prompt file's extra fields, e.g. the reference `answer`) reach
the rewards as keyword arguments with one value per completion, as TRL passes dataset columns; a reward with
an `answers(completions)` method (the `answer` reward) also gives each candidate's answer key, which majority
voting (maj:N) selects by.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .algorithms import answer_array
from .backends import GenerationSettings, _conversation
from .data import prompt_key
from .objective import Criterion, parse_criteria
from .rewards import answers_method, reward_column, reward_gives_answers, spec_text, text_of
from .utils import atomic_write_text


# ---------------------------------------------------------------------------------------------------------------
# scoring: the criteria's raw rewards, called as TRL calls them


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


def score_completions(prompts, completions, rewards: dict, *, completion_ids=None, columns=None) -> dict:
    """{name: one float per completion}: each reward called once on the whole batch, as TRL calls it (prompts,
    completions, completion_ids when there are any, and the prompts' other columns by name: `columns` holds one
    value per completion). The one place completions are scored outside training: pools (decode, eval) and CTRL's
    calibration. A reward that returns another count, None, NaN or inf raises ValueError naming the reward."""
    out = {}
    for name, fn in rewards.items():
        kwargs = _reward_kwargs(fn, columns or {})
        if completion_ids is not None:
            kwargs["completion_ids"] = completion_ids
        values = [math.nan if v is None else float(v) for v in fn(prompts=prompts, completions=completions, **kwargs)]
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} must return one number per completion: it returned {len(values)} "
                             f"values for {len(completions)} completions")
        for completion, v in zip(completions, values):
            if not math.isfinite(v):
                raise ValueError(f"reward {name!r} returned {v} for the completion {text_of(completion)[:60]!r}; "
                                 "scoring needs one number per completion, a finite one")
        out[name] = values
    return out


def score_candidates(prompts, samples, rewards: dict, chat: bool, columns: dict | None = None) -> None:
    """Add `scores` {criterion: float} to every candidate (score_completions, one call per reward for the whole
    batch). A reward gets the prompts' other columns (`columns`: {name: one value per prompt}, e.g. the `answer`
    reward's reference) as keyword arguments holding one value per completion, as TRL passes dataset columns. A
    reward with an `answers` method (answers_method) also gives each candidate's answer key, stored as `answers`
    {criterion: key} (answer_key_json)."""
    flat_prompts = [p for p, cands in zip(prompts, samples) for _ in cands]
    flat = [c for cands in samples for c in cands]
    prompts_in, completions = _completions_in(flat_prompts, flat, chat)
    per_completion = {}
    for name, values in (columns or {}).items():
        if len(values) != len(prompts):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(prompts)} prompts")
        per_completion[name] = [v for v, cands in zip(values, samples) for _ in cands]
    scores = score_completions(prompts_in, completions, rewards, completion_ids=[c["ids"] for c in flat],
                               columns=per_completion)
    for name, fn in rewards.items():
        for c, v in zip(flat, scores[name]):
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
# the pool file


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


# ---------------------------------------------------------------------------------------------------------------
# sampling


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
# pools as arrays, for estimation


@dataclass
class Pool:
    """One model's pool: P prompts, M candidates each, m criteria."""

    label: str
    prompts: list
    rewards: np.ndarray  # (P, M, m)
    num_tokens: np.ndarray | None  # (P, M) or None when the pool has no token counts
    criteria: list[str]
    records: list = field(default_factory=list, repr=False)
    # {criterion: (P, M) object array of answer keys, None for no answer}, for criteria whose reward gives them
    answers: dict = field(default_factory=dict, repr=False)

    @property
    def m(self) -> int:
        return self.rewards.shape[1]

    @classmethod
    def from_records(cls, records, criteria: list[str] | None = None, label: str | None = None) -> Pool:
        if not records:
            raise ValueError("a pool needs at least one prompt")
        label = label or records[0].get("model", "model")
        names = criteria or list(records[0]["candidates"][0]["scores"])
        sizes = {len(r["candidates"]) for r in records}
        if len(sizes) != 1:
            raise ValueError(f"pool {label!r}: prompts have different numbers of candidates {sorted(sizes)}; "
                             "every prompt needs the same M")
        try:
            rewards = np.array([[[c["scores"][n] for n in names] for c in r["candidates"]] for r in records],
                               dtype=np.float64)
        except KeyError as e:
            raise ValueError(f"pool {label!r} has no scores for criterion {e.args[0]!r}; it has "
                             f"{sorted(records[0]['candidates'][0]['scores'])}") from None
        if not np.all(np.isfinite(rewards)):
            raise ValueError(f"pool {label!r} has NaN or infinite scores")
        tokens = None
        if all("num_tokens" in c for r in records for c in r["candidates"]):
            tokens = np.array([[c["num_tokens"] for c in r["candidates"]] for r in records], dtype=np.int64)
        answers = {}
        for n in names:
            has = [n in (c.get("answers") or {}) for r in records for c in r["candidates"]]
            if all(has):
                answers[n] = answer_array([[answer_key_read(c["answers"][n]) for c in r["candidates"]]
                                           for r in records], rewards.shape[:2])
            elif any(has):
                raise ValueError(f"pool {label!r}: {has.count(False)} of {len(has)} candidates have no answer for "
                                 f"criterion {n!r} (give every candidate one, null for no answer, or none)")
        return cls(label, [r["prompt"] for r in records], rewards, tokens, list(names), list(records), answers)

    def subset(self, keys) -> Pool:
        index = {prompt_key(p): i for i, p in enumerate(self.prompts)}
        idx = [index[k] for k in keys]
        return Pool(self.label, [self.prompts[i] for i in idx], self.rewards[idx],
                    None if self.num_tokens is None else self.num_tokens[idx], self.criteria,
                    [self.records[i] for i in idx] if self.records else [],
                    {k: v[idx] for k, v in self.answers.items()})


def pools_from_records(records, criteria_names=None) -> list[Pool]:
    """Group records by their `model` label (file order) into Pools."""
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r.get("model", "model"), []).append(r)
    return [Pool.from_records(rs, criteria_names, label) for label, rs in groups.items()]


def align_pools(pools: list[Pool], reference: str | None = None) -> tuple[list[Pool], dict]:
    """Restrict all pools to the prompts they share, in the reference's (default: the first pool's) order."""
    ref = next((p for p in pools if p.label == reference), pools[0])
    common = [prompt_key(p) for p in ref.prompts]
    for pool in pools:
        have = {prompt_key(p) for p in pool.prompts}
        common = [k for k in common if k in have]
    if not common:
        raise ValueError("the pools share no prompts; evaluate models on the same prompts")
    # a pool with a repeated prompt keeps its first occurrence
    common = list(dict.fromkeys(common))
    info = {p.label: len(p.prompts) for p in pools}
    return [p.subset(common) for p in pools], {"common_prompts": len(common), "prompts_per_pool": info}


def criteria_from_pool_records(records) -> list[Criterion]:
    """Criteria for a pool read without a config: the ones saved in it, else one per score, with the pool's
    decode algorithm (bon:N for N = min(4, M) if none) and weight 1."""
    saved = records[0].get("criteria")
    if saved:
        return parse_criteria(saved)
    m = len(records[0]["candidates"])
    alg = records[0].get("algorithm") or f"bon:{min(4, m)}"
    return [Criterion(n, alg) for n in records[0]["candidates"][0]["scores"]]


"""`iama decode`, deployment: draw N candidates per prompt, score them with the criteria's rewards, select one.

Sampling and scoring are iama.pools' (the candidates of a prompt are a pool record, generated as TRL's
GRPOTrainer generates, iama.backends); this module picks the deployed one by the algorithm and writes the
records in the pool format plus algorithm, select_by, selected and response, so that decode output is
`iama eval --pool` input. A prompt's other columns (e.g. the reference `answer`) reach the rewards as TRL
passes dataset columns; majority voting (maj:N) selects by the answers a reward with an `answers` method gives.
"""

from __future__ import annotations

import numpy as np

from .algorithms import Algorithm, Tilted, parse_algorithm
from .backends import GenerationSettings
from .config import check_voting, load_config, parse_model_arg
from .data import Prompts
from .models import check_device_and_dtype
from .objective import Criterion, parse_criteria
from .pools import answer_key_read, build_rewards, check_prompt_columns, sample_pool, write_pool
from .rewards import check_reward, reward_gives_answers
from .utils import check_output_file

# the sampling layer's public names, importable from iama.decode too
from .backends import HFBackend, VLLMBackend  # noqa: F401
from .data import collect_prompts  # noqa: F401
from .pools import answer_key_json, model_fingerprint, read_pool, score_candidates  # noqa: F401


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
    from .backends import make_backend  # looked up when called: a stub in iama.backends reaches it

    gen = make_backend(spec.model, backend, dtype=dtype, device=device, batch_size=batch_size, seed=seed)
    reward_fns = build_rewards(criteria, gen.tokenizer)
    name = label or spec.label
    records = sample_pool(gen, prompts, criteria, reward_fns, m=alg.n, settings=settings, seed=seed, label=name,
                          path=None, progress=progress, model_arg=model)
    scores = np.array([[c["scores"][select_by] for c in r["candidates"]] for r in records])
    # the group data: rewards and, where the reward gives them, answers (a vote reads them, the others do not)
    answers = ([[answer_key_read(c["answers"][select_by]) for c in r["candidates"]] for r in records]
               if all(select_by in c.get("answers", {}) for r in records for c in r["candidates"]) else None)
    chosen = alg.select(scores, generator=seed, answers=answers)
    for r, k in zip(records, np.atleast_1d(chosen)):
        r.update(algorithm=alg.spec, select_by=select_by, selected=int(k), response=r["candidates"][int(k)]["text"])
    if out is not None:
        write_pool(out, records)
    return records

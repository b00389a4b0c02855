"""Prompts: the built-in instruction set, local files, or a Hugging Face dataset, as a list of strings.

Sources for `load_prompts`:
    "builtin"           iama/prompts/instructions.jsonl, shipped with the package (436 varied instructions)
    "builtin:NAME"      iama/prompts/NAME.jsonl: builtin:questions (299 questions asking for one or two sentences, for
                        the length task on a small model), builtin:tiny (64 prompts in tiny-gpt2's words)
    a .jsonl file       one JSON object per line; the prompt is in `column` (a line may also be a bare string)
    a .json file        a list of strings, or a list of objects with `column`
    a .csv file         with a header row naming `column`
    a .txt file         one prompt per non-empty line
    "hf:NAME[:CONFIG]"  a Hugging Face dataset, `column` of `split` (needs the hub or its local cache)

TRL's GRPOTrainer reads the "prompt" column of its dataset: plain strings for a model without a chat template,
or conversations `[{"role": "user", "content": ...}]` that it renders with the template (`as_conversation`).
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

BUILTIN = "builtin"
SUFFIXES = (".jsonl", ".json", ".csv", ".txt")


def builtin_path(name: str = "instructions"):
    """A shipped prompt file (a Traversable; a real path for a normal install)."""
    return resources.files("iama") / "prompts" / f"{name}.jsonl"


def load_prompts(source=BUILTIN, column="prompt", split="train", limit=None) -> list[str]:
    """The first `limit` (all if None) prompts of `source`, in file order. Raises ValueError with one line."""
    source = str(source)
    if source == BUILTIN or source.startswith(BUILTIN + ":"):
        name = source.partition(":")[2] or "instructions"
        path = builtin_path(name)
        if not path.is_file():
            shipped = sorted(p.name[: -len(".jsonl")] for p in (resources.files("iama") / "prompts").iterdir()
                             if p.name.endswith(".jsonl"))
            raise ValueError(f"prompts {source!r}: no built-in prompt set {name!r}; shipped: {shipped}")
        prompts = _from_jsonl(path.read_text(encoding="utf-8"), column, f"the built-in prompt set {name!r}")
    elif source.startswith("hf:"):
        prompts = _from_hub(source, column, split)
    else:
        prompts = _from_file(Path(source).expanduser(), column)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"prompts {source!r}: limit must be >= 1, got {limit!r}")
        prompts = prompts[: int(limit)]
    if not prompts:
        raise ValueError(f"prompts {source!r}: no prompts found")
    return prompts


def prompt_key(prompt) -> str:
    """The one key of a prompt in pools, calibration stores and KL tables: its text, or for a conversation (a
    list of messages) its canonical JSON, non-ASCII kept as is (the stores are JSON files people read)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def as_conversation(prompts, tokenizer) -> list:
    """Prompts in TRL's conversational format when the tokenizer has a chat template, plain strings otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return [[{"role": "user", "content": p}] for p in prompts]
    return list(prompts)


def prompt_dataset(prompts, tokenizer=None):
    """A `datasets.Dataset` with TRL's "prompt" column (conversational if the tokenizer has a chat template)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": as_conversation(prompts, tokenizer)})


# ---------------------------------------------------------------------------------------------------------------


def _from_file(path: Path, column: str) -> list[str]:
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"prompts {str(path)!r}: unsupported file type; use 'builtin', 'hf:NAME[:CONFIG]' or a "
                         f"file ending in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"prompts {str(path)!r}: no such file")
    where = repr(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # its own message names neither the file nor what to do
        raise ValueError(f"prompts {where}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8"
                         ) from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _from_jsonl(text, column, where)
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompts {where}: invalid JSON ({e})") from None
        if not isinstance(rows, list):
            raise ValueError(f"prompts {where}: expected a JSON list of strings or objects, got {type(rows).__name__}")
        return [_prompt(row, column, f"{where} item {i}") for i, row in enumerate(rows)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if column not in (reader.fieldnames or []):
            raise ValueError(f"prompts {where}: no column {column!r}; the header has {reader.fieldnames}")
        return [_prompt(row, column, f"{where} row {i + 2}") for i, row in enumerate(reader)]
    return [line.strip() for line in text.split("\n") if line.strip()]


def _from_jsonl(text: str, column: str, where: str) -> list[str]:
    prompts = []
    # split on "\n" only: str.splitlines also breaks at U+2028, U+0085 ..., which JSON leaves unescaped in strings
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompts {where}: line {i} is not valid JSON ({e})") from None
        prompts.append(_prompt(row, column, f"{where} line {i}"))
    return prompts


def _prompt(row, column, where) -> str:
    """The prompt in one record: a bare string, or row[column]; it must be a non-empty string."""
    if isinstance(row, dict):
        if column not in row:
            raise ValueError(f"prompts {where}: no column {column!r}; it has {sorted(row)}")
        row = row[column]
    if not isinstance(row, str) or not row.strip():
        raise ValueError(f"prompts {where}: the prompt must be a non-empty string, got {row!r}")
    return row.strip()


def _from_hub(source: str, column: str, split: str) -> list[str]:
    name, _, config = source[len("hf:"):].partition(":")
    if not name:
        raise ValueError(f"prompts {source!r}: use 'hf:NAME[:CONFIG]'")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # the hub and datasets raise many types; the caller needs one clear line
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"prompts {source!r}: cannot load split {split!r} ({type(e).__name__}: {reason})") from None
    if column not in ds.column_names:
        raise ValueError(f"prompts {source!r}: no column {column!r}; it has {ds.column_names}")
    return [_prompt(row, column, f"{source!r} row {i}") for i, row in enumerate(ds[column])]

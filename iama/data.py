"""Prompts: the built-in instruction set, local files, or a Hugging Face dataset, as a list of strings that also
carries the source's other columns (`Prompts.columns`, e.g. a reference `answer` for the `answer` reward).

Sources for `load_prompts`:
    "builtin"           iama/prompts/instructions.jsonl, shipped with the package (436 varied instructions)
    "builtin:NAME"      iama/prompts/NAME.jsonl: builtin:questions (299 questions asking for one or two sentences, for
                        the length task on a small model), builtin:tiny (64 prompts in tiny-gpt2's words),
                        builtin:grim (356 sombre questions in 17 categories: 160 train, 60 test, then 136
                        "confirm" from row 220 on, added later for a confirmatory evaluation; a row's `split` and
                        `category` fields say which), builtin:arith (300 arithmetic word problems with an integer
                        `answer`, 240 train then 60 test; iama/prompts/arith.py), builtin:arith-hard (500 harder
                        ones, 300 train then 200 test; iama/prompts/arith_hard.py)
    a .jsonl file       one JSON object per line; the prompt is in `column` (a line may also be a bare string)
    a .json file        a list of strings, or a list of objects with `column`
    a .csv file         with a header row naming `column`
    a .txt file         one prompt per non-empty line
    "hf:NAME[:CONFIG]"  a Hugging Face dataset, `column` of `split` (needs the hub or its local cache)

TRL's GRPOTrainer reads the "prompt" column of its dataset: plain strings for a model without a chat template,
or conversations `[{"role": "user", "content": ...}]` that it renders with the template (`as_conversation`).

Every other field of a .jsonl/.json/.csv row or column of an hf: dataset is carried along: `load_prompts` returns a
`Prompts` list whose `columns[NAME][i]` belongs to prompt i (None where a row lacks the field, and for every
field of a bare-string row), slicing keeps them, and `prompt_dataset` puts them in the dataset beside "prompt", so
that TRL passes them to each reward function as keyword arguments (`reward(prompts, completions, answer=[...])`).
Names that TRL or a reward's signature use for something else (RESERVED) are not carried. A .txt file has none.
`require_column` checks that a column a reward needs is there, with a value for every prompt.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

BUILTIN = "builtin"
SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
# Not carried as columns: TRL's own dataset keys ("image"/"images" switch it to a vision model), the reward
# functions' parameters, and the keyword arguments TRL adds to every reward call.
RESERVED = frozenset({"prompt", "completion", "completion_ids", "prompts", "completions", "image", "images",
                      "trainer_state", "log_extra", "log_metric", "environments"})


class Prompts(list):
    """A list of prompt strings with the source's other columns: `columns[name]` is a list as long as the
    prompts, `columns[name][i]` the value for prompt i (None where a row lacks it). A slice is a Prompts with the
    columns sliced alike; anything else a list does (+, *, copy) gives a plain list of prompts."""

    def __init__(self, prompts=(), columns=None):
        super().__init__(prompts)
        self.columns = {str(k): list(v) for k, v in (columns or {}).items()}
        for name, values in self.columns.items():
            if len(values) != len(self):
                raise ValueError(f"column {name!r} has {len(values)} values for {len(self)} prompts")

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Prompts(list.__getitem__(self, index), {k: v[index] for k, v in self.columns.items()})
        return list.__getitem__(self, index)


def builtin_path(name: str = "instructions"):
    """A shipped prompt file (a Traversable; a real path for a normal install)."""
    return resources.files("iama") / "prompts" / f"{name}.jsonl"


def load_prompts(source=BUILTIN, column="prompt", split="train", limit=None) -> Prompts:
    """The first `limit` (all if None) prompts of `source`, in file order, with the source's other columns (see
    the module docstring). Raises ValueError with one line."""
    source = str(source)
    if limit is not None and int(limit) < 1:
        raise ValueError(f"prompts {source!r}: limit must be >= 1, got {limit!r}")
    if source == BUILTIN or source.startswith(BUILTIN + ":"):
        name = source.partition(":")[2] or "instructions"
        path = builtin_path(name)
        if not path.is_file():
            shipped = sorted(p.name[: -len(".jsonl")] for p in (resources.files("iama") / "prompts").iterdir()
                             if p.name.endswith(".jsonl"))
            raise ValueError(f"prompts {source!r}: no built-in prompt set {name!r}; shipped: {shipped}")
        prompts = _from_jsonl(path.read_text(encoding="utf-8"), column, f"the built-in prompt set {name!r}")
    elif source.startswith("hf:"):
        prompts = _from_hub(source, column, split, limit)
    else:
        prompts = _from_file(Path(source).expanduser(), column)
    if limit is not None:
        prompts = prompts[: int(limit)]
    if not prompts:
        raise ValueError(f"prompts {source!r}: no prompts found")
    return prompts


def collect_prompts(prompts=(), source=None, *, column: str = "prompt", split: str = "train", limit=None,
                    offset: int = 0) -> Prompts:
    """The prompts given as arguments, then `limit` prompts of `source` (load_prompts: 'builtin', a file,
    'hf:NAME') after skipping `offset` of them (e.g. the ones a run trained on), as Prompts: the
    source's other columns come along (None for the prompts given as arguments), and `.source` says where the
    prompts came from (for error messages such as a missing reference column)."""
    given = [p for p in (prompts or ()) if str(p).strip()]
    given_columns = getattr(prompts, "columns", None) or {}
    if given_columns:  # a Prompts given: keep the columns of the prompts kept
        kept = [j for j, p in enumerate(prompts) if str(p).strip()]
        given_columns = {k: [v[j] for j in kept] for k, v in given_columns.items()}
    loaded = Prompts()
    if source is not None:
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


def prompt_key(prompt) -> str:
    """The one key of a prompt in pools, calibration stores and KL tables: its text, or for a conversation (a
    list of messages) its canonical JSON, non-ASCII kept as is (the stores are JSON files people read)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def as_conversation(prompts, tokenizer) -> list:
    """Prompts in TRL's conversational format when the tokenizer has a chat template, plain strings otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return [[{"role": "user", "content": p}] for p in prompts]
    return list(prompts)


def require_column(prompts, column: str, source) -> None:
    """Check that `prompts` (from `load_prompts(source)`) carry `column` with a value for every prompt, e.g. the
    reference answers a reward reads. Raises ValueError with one line naming the column and the source."""
    columns = getattr(prompts, "columns", None) or {}
    if column not in columns:
        why = " (a name TRL uses for something else)" if column in RESERVED else ""
        raise ValueError(f"prompts {str(source)!r}: no column {column!r}{why}; it has "
                         f"{sorted(columns) or 'no columns besides the prompt'}")
    missing = [i for i, v in enumerate(columns[column]) if v is None or (isinstance(v, str) and not v.strip())]
    if missing:
        raise ValueError(f"prompts {str(source)!r}: column {column!r} is empty or missing for {len(missing)} of "
                         f"{len(prompts)} prompts (the first is prompt {missing[0]}, counting from 0)")


def prompt_dataset(prompts, tokenizer=None):
    """A `datasets.Dataset` with TRL's "prompt" column (conversational if the tokenizer has a chat template) and
    the prompts' other columns (`Prompts.columns`; none for a plain list). A column mixing strings with numbers
    or booleans is stored as strings (Arrow needs one type per column)."""
    from datasets import Dataset

    data = {"prompt": as_conversation(prompts, tokenizer)}
    for name, values in (getattr(prompts, "columns", None) or {}).items():
        if name not in RESERVED:
            data[name] = _one_type(values)
    try:
        return Dataset.from_dict(data)
    except Exception as e:  # Arrow cannot store a column (nested values of mixed shapes ...): name it
        for name, values in data.items():
            try:
                Dataset.from_dict({name: values})
            except Exception:
                reason = (str(e).strip().splitlines() or [""])[0]
                raise ValueError(f"prompts: cannot store column {name!r} in a dataset ({type(e).__name__}: "
                                 f"{reason})") from None
        raise


def _one_type(values: list) -> list:
    """Scalars of mixed types as strings (None kept); anything else as is."""
    kinds = {type(v) for v in values if v is not None}
    scalars = {str, int, float, bool}
    if len(kinds) > 1 and kinds <= scalars and kinds != {int, float}:
        return [None if v is None else str(v) for v in values]
    return list(values)


# ---------------------------------------------------------------------------------------------------------------


def _from_file(path: Path, column: str) -> Prompts:
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
        return _with_columns([(row, f"{where} item {i}") for i, row in enumerate(rows)], column)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if column not in (reader.fieldnames or []):
            raise ValueError(f"prompts {where}: no column {column!r}; the header has {reader.fieldnames}")
        return _with_columns([(row, f"{where} row {i + 2}") for i, row in enumerate(reader)], column)
    return Prompts(line.strip() for line in text.split("\n") if line.strip())


def _from_jsonl(text: str, column: str, where: str) -> Prompts:
    rows = []
    # split on "\n" only: str.splitlines also breaks at U+2028, U+0085 ..., which JSON leaves unescaped in strings
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompts {where}: line {i} is not valid JSON ({e})") from None
        rows.append((row, f"{where} line {i}"))
    return _with_columns(rows, column)


def _with_columns(rows, column) -> Prompts:
    """Prompts from (record, where) pairs, with every other field of the object records as columns (in order of
    first appearance; None where a record lacks one). A CSV's extra None key (a row longer than the header) and
    RESERVED names are left out."""
    prompts = [_prompt(row, column, where) for row, where in rows]
    names = {}
    for row, _ in rows:
        if isinstance(row, dict):
            names.update(dict.fromkeys(k for k in row if isinstance(k, str) and k != column and k not in RESERVED))
    columns = {name: [row.get(name) if isinstance(row, dict) else None for row, _ in rows] for name in names}
    return Prompts(prompts, columns)


def _prompt(row, column, where) -> str:
    """The prompt in one record: a bare string, or row[column]; it must be a non-empty string."""
    if isinstance(row, dict):
        if column not in row:
            raise ValueError(f"prompts {where}: no column {column!r}; it has {sorted(row)}")
        row = row[column]
    if not isinstance(row, str) or not row.strip():
        raise ValueError(f"prompts {where}: the prompt must be a non-empty string, got {row!r}")
    return row.strip()


def _from_hub(source: str, column: str, split: str, limit=None) -> Prompts:
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
    if limit is not None and int(limit) < len(ds):
        ds = ds.select(range(int(limit)))  # read no more of the other columns than needed
    data = ds.to_dict()
    prompts = [_prompt(row, column, f"{source!r} row {i}") for i, row in enumerate(data.pop(column))]
    return Prompts(prompts, {name: values for name, values in data.items() if name not in RESERVED})

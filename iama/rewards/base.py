"""What every reward shares: the text of TRL's prompts and completions, and the registry of reward kinds.

A reward kind is a `RewardKind` subclass decorated with `register_reward`, which puts one instance of it in
REWARDS under its name. The entry says everything iama knows of the kind: its spec syntax and help line, the keys
of its dict spec with their defaults, how a string spec becomes those keys, the check of their values, the check
of what it needs (packages, model folders, imports) without loading a model, how to build the reward function,
the range of its values and whether it gives each completion's answer. build_reward, check_reward,
reward_bounds, reward_gives_answers and reward_column read specs only through it, and the package docstring's
list of specs is made from it, so adding a reward is one decorated class (docs/usage.md has an example).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import textwrap
from typing import ClassVar

# ---------------------------------------------------------------------------------------------------------------
# text of a prompt or completion


def text_of(x) -> str:
    """A prompt or completion as text: a string as is; a conversation (list of messages) as its messages'
    contents joined by newlines (TRL's completions are one assistant message); content blocks by their text."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        x = [x]
    parts = []
    for message in x:
        content = message["content"] if isinstance(message, dict) else message
        if isinstance(content, list):  # multimodal content blocks: keep the text ones
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        parts.append(str(content))
    return "\n".join(parts)


def messages(x, role):
    """A prompt or completion as a list of messages, a string becoming one message of `role`."""
    return [{"role": role, "content": x}] if isinstance(x, str) else [x] if isinstance(x, dict) else list(x)


def per_text(fn):
    """Decorator: a plain `f(text) -> float` on the completion's text becomes a TRL reward function.
    Pickles by reference like any module-level function."""

    @functools.wraps(fn)
    def reward(prompts=None, completions=(), completion_ids=None, **kwargs):
        return [float(fn(text_of(c))) for c in completions]

    return reward


# ---------------------------------------------------------------------------------------------------------------
# the registry


REQUIRED = object()  # the "default" of a dict key the spec must give


class RewardKind:
    """One kind of reward, as specs name it. A subclass sets `name`, `syntax` and `help` and implements `build`;
    the rest has defaults for a kind that takes no argument, needs nothing and has no known range."""

    name: ClassVar[str]  # the "type" of a dict spec; a string spec is NAME or NAME:ARGUMENTS
    syntax: ClassVar[str]  # the string form for help and errors: "length:TARGET:MAX_LENGTH"
    help: ClassVar[str]  # what it scores, for the package docstring
    # the keys of a dict spec (besides "type" and "name") and their defaults; a missing key gets its default
    # before `validate`, except a REQUIRED one
    keys: ClassVar[dict] = {}
    bounds: ClassVar[tuple[float, float] | None] = None  # the range of its values, for intervals (iama.stats)

    def claims(self, text: str) -> bool:
        """Whether the string spec `text` is of this kind: NAME or NAME:..., unless the kind says otherwise."""
        return text.partition(":")[0] == self.name

    def from_string(self, text: str) -> dict:
        """The arguments of the string spec `text` (values checked later, by `validate`); ValueError (the reason
        alone) where its form is wrong. By default the kind takes none."""
        if text.partition(":")[2]:
            raise ValueError(f"{self.name!r} takes no arguments")
        return {}

    def validate(self, args: dict) -> None:
        """Check the arguments' values, cheaply (no package, file or model): ValueError with the reason alone,
        or KeyError naming a missing argument."""

    def check(self, args: dict, spec) -> None:
        """Check that the reward can be built (its packages, its model's folder, its import), loading no model:
        ValueError with one line naming `spec`."""

    def build(self, args: dict, name: str | None, tokenizer, spec):
        """The reward function. `name` (None: the kind's default) is its `__name__`; `tokenizer` is the policy's;
        `spec` is for error messages."""
        raise NotImplementedError

    def gives_answers(self, args: dict, spec) -> bool:
        """Whether the built reward has an `answers(completions)` method (answers_method), loading no model."""
        return False

    def column(self, args: dict) -> str | None:
        """The prompt column the reward reads (a reference answer), or None."""
        return None


# Every reward kind by its name, in the order they were registered: every spec is read through this table.
REWARDS: dict[str, RewardKind] = {}


def register_reward(cls):
    """Class decorator: register the RewardKind subclass `cls` under its name (remove it with
    `del REWARDS[name]`)."""
    if cls.name in REWARDS:
        raise ValueError(f"a reward kind {cls.name!r} is registered already")
    REWARDS[cls.name] = cls()
    return cls


def spec_help() -> str:
    """What a spec may be, for error messages."""
    syntaxes = ", ".join(repr(kind.syntax) for kind in REWARDS.values())
    return f"one of {syntaxes}, a dict with a 'type' in {tuple(REWARDS)}, or a callable"


def spec_list() -> str:
    """Each kind's string form, dict form (with the defaults) and help, as the package docstring lists them."""
    lines = []
    for kind in REWARDS.values():
        fields = [("type", f'"{kind.name}"')]
        fields += [(k, k.upper() if v is REQUIRED else json.dumps(v)) for k, v in kind.keys.items()]
        lines.append(f"    {kind.syntax}")
        lines.append("    {" + ", ".join(f'"{k}": {v}' for k, v in fields) + "}")
        lines += textwrap.wrap(kind.help, 112, initial_indent=" " * 8, subsequent_indent=" " * 8,
                               break_on_hyphens=False) + [""]
    return "\n".join(lines)


def parse(spec) -> tuple[RewardKind, dict, str | None]:
    """(kind, arguments, name) of a string or dict spec, the arguments with their defaults and checked
    (`validate`); nothing is imported or loaded."""
    if isinstance(spec, dict):
        args = dict(spec)
        type_, name = args.pop("type", None), args.pop("name", None)
        kind = REWARDS.get(type_) if isinstance(type_, str) else None
        if kind is None:
            raise ValueError(f"reward {spec!r}: unknown or missing 'type' {type_!r}; "
                             f"allowed types are {tuple(REWARDS)}")
        unknown = set(args) - set(kind.keys)
        if unknown:
            raise ValueError(f"reward {{'type': {kind.name!r}, ...}}: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(kind.keys) + ['name']}")
    elif isinstance(spec, str) and spec.strip():
        kind, args = _parse_string(spec.strip())
        name = None
    else:
        raise ValueError(f"reward {spec!r}: not a spec; use {spec_help()}")
    where = f"reward {spec!r}"
    args = {**{k: v for k, v in kind.keys.items() if v is not REQUIRED}, **args}
    try:
        kind.validate(args)
        missing = [k for k in kind.keys if k not in args]
        if missing:
            raise KeyError(missing[0])
    except KeyError as e:
        raise ValueError(f"{where}: missing argument {e.args[0]!r}; use {spec_help()}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if name is not None and not (isinstance(name, str) and name):
        raise ValueError(f"{where}: 'name' must be a non-empty string")
    return kind, args, name


def _parse_string(text):
    """(kind, arguments) of a string spec: the kind its first word names, else the first that claims it (a
    dotted path is a callable's)."""
    kind = REWARDS.get(text.partition(":")[0])
    if kind is None or not kind.claims(text):
        kind = next((k for k in REWARDS.values() if k.claims(text)), None)
    if kind is None:
        raise ValueError(f"reward {text!r}: unknown reward; use {spec_help()}")
    try:
        return kind, kind.from_string(text)
    except ValueError as e:
        raise ValueError(f"reward {text!r}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# what the rest of iama asks of a spec


def build_reward(spec, tokenizer=None):
    """A TRL reward function from a spec (see the package docstring). `tokenizer` is the policy's: the length
    reward counts tokens with it when the trainer gives no completion_ids."""
    if callable(spec):
        return spec
    kind, args, name = parse(spec)
    return kind.build(args, name, tokenizer, spec)


def check_reward(spec) -> None:
    """Validate a spec, loading no model. Raises ValueError with one line naming the spec and what is allowed."""
    if callable(spec):
        return
    kind, args, _ = parse(spec)
    kind.check(args, spec)


def spec_text(spec):
    """A reward spec as plain data for a report or pool file: a callable by its name."""
    if isinstance(spec, (str, int, float)) or spec is None:
        return spec
    if isinstance(spec, dict):
        return {k: spec_text(v) for k, v in spec.items()}
    return getattr(spec, "__name__", repr(spec))


def _attribute(fn, attr):
    """`fn.attr`, also through a renamed wrapper (Renamed), or None."""
    return getattr(fn, attr, None) or getattr(getattr(fn, "fn", None), attr, None)


def answers_method(fn):
    """The `answers(completions) -> [hashable key or None]` method of a built reward function (the `answer`
    reward has one; also through a renamed wrapper), or None: such a reward can be voted on (maj:N)."""
    for obj in (fn, getattr(fn, "fn", None)):
        method = getattr(obj, "answers", None)
        if obj is not None and callable(method) and not isinstance(obj, type):
            return method
    return None


def reward_gives_answers(spec) -> bool:
    """Whether the reward of `spec` gives each completion's answer (see answers_method), loading no model: a
    kind that says so (`answer`), a callable with an `answers` method, or a 'package.module:function' that has
    one."""
    if callable(spec):
        return answers_method(spec) is not None
    try:
        kind, args, _ = parse(spec)
        return kind.gives_answers(args, spec)
    except ValueError:  # a spec a pool saved for a callable (its name): not buildable here
        return False


def reward_column(spec) -> str | None:
    """The prompt column a reward reads a reference from (the `answer` reward's COLUMN), or None; a built reward
    names it as its `column` attribute."""
    if callable(spec):
        column = _attribute(spec, "column")
        return column if isinstance(column, str) else None
    try:
        kind, args, _ = parse(spec)
    except ValueError:
        return None
    return kind.column(args)


def reward_bounds(spec):
    """(low, high) of a reward's values where known (its kind's `bounds`, or a callable's `bounds` attribute),
    else None; loads no model. The length reward's floor depends on how long completions may be, so it has
    none."""
    if callable(spec):
        b = _attribute(spec, "bounds")
        return tuple(map(float, b)) if b is not None else None
    try:
        kind, _, _ = parse(spec)
    except (ValueError, TypeError):
        return None
    return kind.bounds


# ---------------------------------------------------------------------------------------------------------------
# helpers for the kinds


class Renamed:
    """fn under another __name__ (a class, not a closure, so that it pickles)."""

    def __init__(self, fn, name):
        self.fn, self.__name__ = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def renamed(fn, name):
    """`fn` itself, or under the spec's `name` where it gives one."""
    return fn if name is None else Renamed(fn, name)


def need_module(module, package, spec):
    """ValueError naming `spec` and the pip package to install where `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"reward {spec!r} needs the {package} package: pip install {package}")


def checked_number(x, what, minimum=None, strict=False, integer=False):
    """x as a float (or int), checked finite and >= minimum (> with strict); ValueError names `what`."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if integer:
        if isinstance(x, bool) or not v.is_integer():
            raise ValueError(f"{what} must be an integer, got {x!r}")
        v = int(v)
    if not math.isfinite(v) or (minimum is not None and (v <= minimum if strict else v < minimum)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{what} must be a finite number {bound}, got {x!r}")
    return v

"""A reward function of the user's, named by its dotted path: a string spec that names no kind is read as one."""

from __future__ import annotations

import importlib

from .base import REQUIRED, RewardKind, answers_method, register_reward, renamed


def import_callable(path, spec):
    """'package.module:attr.sub' or 'package.module.attr' -> the object, which must be callable."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"reward {spec!r}: a dotted path is 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module itself failing to run
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {spec!r}: {path!r} is a {type(obj).__name__}, not a callable")
    return obj


@register_reward
class CallableKind(RewardKind):
    name = "callable"
    syntax = "package.module:function"
    help = ("a callable with TRL's reward signature (also \"package.module.function\"); decorate a plain "
            "f(text) -> float with `per_text` to give it that signature")
    keys = {"path": REQUIRED}
    # no bounds read from the path: a callable object passed as the spec may declare its own (reward_bounds)

    def claims(self, text):
        return ":" in text or "." in text

    def from_string(self, text):
        return {"path": text}

    def validate(self, args):
        if not isinstance(args.get("path"), str):
            raise ValueError("needs 'path': 'package.module:function'")

    def check(self, args, spec):
        import_callable(args["path"], spec)

    def build(self, args, name, tokenizer, spec):
        return renamed(import_callable(args["path"], spec), name)

    def gives_answers(self, args, spec):
        try:
            return answers_method(import_callable(args["path"], spec)) is not None
        except ValueError:
            return False

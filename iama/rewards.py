"""Reward functions with TRL's signature: `fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]`.

TRL passes prompts and completions as strings, or for conversational data as lists of message dicts
(`[{"role": "assistant", "content": ...}]`); every function here takes both. Each has a readable `__name__`,
which TRL logs rewards by. Failures raise; a reward may return None/NaN for a sample, the trainer drops those.

Specs accepted by `build_reward` and `check_reward`:

    "length:16:64"             -((|y| - 16) / 64)^2, |y| in tokens (the IAMA paper's length reward)
    "sentiment"                VADER compound score in [-1, 1]
    "harmlessness"             1 - P(offensive) from alt-profanity-check
    "hf:ID_OR_PATH[:INDEX]"    a sequence-classification reward model on prompt + completion, logits[:, INDEX]
    "package.module:function"  a callable with TRL's reward signature (also "package.module.function");
                               decorate a plain f(text) -> float with `per_text` to give it that signature
    a callable                 used as is

or the same as a dict with a "type" key and the arguments by name (an optional "name" overrides `__name__`):

    {"type": "length", "target": 16, "max_length": 64}
    {"type": "sentiment"}
    {"type": "harmlessness"}
    {"type": "hf", "model": "ID_OR_PATH", "index": 0, "batch_size": 16}
    {"type": "callable", "path": "package.module:function"}
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from pathlib import Path

TYPES = ("length", "sentiment", "harmlessness", "hf", "callable")
_SPEC_HELP = ("one of 'length:TARGET:MAX_LENGTH', 'sentiment', 'harmlessness', 'hf:ID_OR_PATH[:INDEX]', "
              "'package.module:function', a dict with a 'type' in " + str(TYPES) + ", or a callable")
_DICT_KEYS = {"length": {"target", "max_length"}, "sentiment": set(), "harmlessness": set(),
              "hf": {"model", "index", "batch_size"}, "callable": {"path"}}


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


def _messages(x, role):
    return [{"role": role, "content": x}] if isinstance(x, str) else [x] if isinstance(x, dict) else list(x)


def per_text(fn):
    """Decorator: a plain `f(text) -> float` on the completion's text becomes a TRL reward function.
    Pickles by reference like any module-level function."""

    @functools.wraps(fn)
    def reward(prompts=None, completions=(), completion_ids=None, **kwargs):
        return [float(fn(text_of(c))) for c in completions]

    return reward


# ---------------------------------------------------------------------------------------------------------------
# built-in rewards


class Length:
    """-((|y| - target) / max_length)^2. |y| is len(completion_ids) when given (TRL gives them; they include the
    EOS token that ended the completion, as in TRL's completion-length metric), else the number of tokens of the
    completion text under `tokenizer` (no special tokens)."""

    def __init__(self, target, max_length, tokenizer=None, name=None):
        self.target, self.max_length = _number(target, "target", 0), _number(max_length, "max_length", 0, strict=True)
        self.tokenizer = tokenizer
        self.__name__ = name or f"length_{self.target:g}"

    def lengths(self, completions, completion_ids=None) -> list[int]:
        if completion_ids is not None:
            return [len(ids) for ids in completion_ids]
        if self.tokenizer is None:
            raise ValueError(f"{self.__name__}: needs completion_ids or a tokenizer (build_reward(spec, tokenizer))")
        texts = [text_of(c) for c in completions]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def __call__(self, prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float]:
        return [-(((n - self.target) / self.max_length) ** 2) for n in self.lengths(completions, completion_ids)]


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float]:
    """VADER compound sentiment of the completion, in [-1, 1] (positive is good)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text_of(c))["compound"]) for c in completions]


def harmlessness(prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float]:
    """1 - probability that the completion is offensive language (alt-profanity-check's linear SVM), in [0, 1]."""
    from profanity_check import predict_prob

    texts = [text_of(c) for c in completions]
    return [] if not texts else [float(1.0 - p) for p in predict_prob(texts)]


class HFRewardModel:
    """A Hugging Face sequence-classification model scoring prompt + completion: logits[:, index].

    A conversation is rendered with the reward tokenizer's chat template when it has one (as TRL does for
    reward models); otherwise the prompt and completion texts are concatenated (with a newline between the two
    for a conversation)."""

    def __init__(self, model, index=0, batch_size=16, device=None, name=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import resolve_model

        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if self.tokenizer.pad_token is None:  # decoder reward models often have none; the model needs one to
            self.tokenizer.pad_token = self.tokenizer.eos_token  # find each row's last token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        num_labels = self.model.config.num_labels
        self.index = int(index)
        if not -num_labels <= self.index < num_labels:
            raise ValueError(f"reward model {model!r} has {num_labels} labels; index {self.index} is out of range")
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.__name__ = name or Path(str(model).rstrip("/")).name

    def texts(self, prompts, completions) -> tuple[list[str], bool]:
        """(texts, rendered): rendered says the chat template already added the special tokens."""
        conversational = not isinstance(prompts[0], str) or not isinstance(completions[0], str)
        if conversational and getattr(self.tokenizer, "chat_template", None):
            pairs = zip(prompts, completions, strict=True)
            chats = [_messages(p, "user") + _messages(c, "assistant") for p, c in pairs]
            return [self.tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats], True
        sep = "\n" if conversational else ""  # plain strings: the completion continues the prompt, as in TRL
        return [text_of(p) + sep + text_of(c) for p, c in zip(prompts, completions, strict=True)], False

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        import torch

        if len(completions) == 0:
            return []
        texts, rendered = self.texts(prompts, completions)
        scores = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, padding_side="right", add_special_tokens=not rendered)
                logits = self.model(**batch.to(self.device)).logits
                scores += logits[:, self.index].float().cpu().tolist()
        return scores


# ---------------------------------------------------------------------------------------------------------------
# specs


def build_reward(spec, tokenizer=None):
    """A TRL reward function from a spec (see the module docstring). `tokenizer` is the policy's: the length
    reward counts tokens with it when the trainer gives no completion_ids."""
    if callable(spec):
        return spec
    kind, args, name = _parse(spec)
    if kind == "length":
        return Length(args["target"], args["max_length"], tokenizer=tokenizer, name=name)
    if kind in ("sentiment", "harmlessness"):
        fn = sentiment if kind == "sentiment" else harmlessness
        return fn if name is None else _Renamed(fn, name)
    if kind == "hf":
        return HFRewardModel(args["model"], index=args.get("index", 0), batch_size=args.get("batch_size", 16),
                             name=name)
    fn = _import_callable(args["path"], spec)
    return fn if name is None else _Renamed(fn, name)


def check_reward(spec) -> None:
    """Validate a spec, loading no model. Raises ValueError with one line naming the spec and what is allowed."""
    if callable(spec):
        return
    kind, args, _ = _parse(spec)
    if kind == "sentiment":
        _need_module("vaderSentiment", "vadersentiment", spec)
    elif kind == "harmlessness":
        _need_module("profanity_check", "alt-profanity-check", spec)
    elif kind == "hf":
        from .models import check_pretrained

        try:
            check_pretrained(str(args["model"]), "model")
        except ValueError as e:
            raise ValueError(f"reward {spec!r}: {e}") from None
    elif kind == "callable":
        _import_callable(args["path"], spec)


def _parse(spec):
    """(kind, args, name) from a string or dict spec; argument values are checked, nothing is loaded."""
    if isinstance(spec, dict):
        args = dict(spec)
        kind, name = args.pop("type", None), args.pop("name", None)
        if kind not in TYPES:
            raise ValueError(f"reward {spec!r}: unknown or missing 'type' {kind!r}; allowed types are {TYPES}")
        unknown = set(args) - _DICT_KEYS[kind]
        if unknown:
            raise ValueError(f"reward {{'type': {kind!r}, ...}}: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_DICT_KEYS[kind]) + ['name']}")
    elif isinstance(spec, str) and spec.strip():
        kind, args, name = _parse_string(spec.strip())
    else:
        raise ValueError(f"reward {spec!r}: not a spec; use {_SPEC_HELP}")
    where = f"reward {spec!r}"
    try:
        if kind == "length":
            _number(args["target"], "target", 0)
            _number(args["max_length"], "max_length", 0, strict=True)
        elif kind == "hf":
            if not str(args.get("model", "")).strip():
                raise ValueError("needs a model id or path")
            _number(args.get("index", 0), "index", integer=True)
            _number(args.get("batch_size", 16), "batch_size", 1, integer=True)
        elif kind == "callable" and not isinstance(args.get("path"), str):
            raise ValueError("needs 'path': 'package.module:function'")
    except KeyError as e:
        raise ValueError(f"{where}: missing argument {e.args[0]!r}; use {_SPEC_HELP}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if name is not None and not (isinstance(name, str) and name):
        raise ValueError(f"{where}: 'name' must be a non-empty string")
    return kind, args, name


def _parse_string(spec):
    head, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if head == "length":
        if len(parts) != 2:
            raise ValueError(f"reward {spec!r}: the length reward is 'length:TARGET:MAX_LENGTH', e.g. 'length:16:64'")
        return "length", {"target": parts[0], "max_length": parts[1]}, None
    if head in ("sentiment", "harmlessness"):
        if parts:
            raise ValueError(f"reward {spec!r}: {head!r} takes no arguments")
        return head, {}, None
    if head == "hf":
        model, sep, index = rest.rpartition(":")
        if sep and _is_int(index):
            return "hf", {"model": model, "index": int(index)}, None
        return "hf", {"model": rest}, None
    if ":" in spec or "." in spec:
        return "callable", {"path": spec}, None
    raise ValueError(f"reward {spec!r}: unknown reward; use {_SPEC_HELP}")


def _import_callable(path, spec):
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


class _Renamed:
    """fn under another __name__ (a class, not a closure, so that it pickles)."""

    def __init__(self, fn, name):
        self.fn, self.__name__ = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _need_module(module, package, spec):
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"reward {spec!r} needs the {package} package: pip install {package}")


def _is_int(s) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def _number(x, what, minimum=None, strict=False, integer=False):
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

"""The rewards that load no model: the completion's length, its sentiment (VADER) and its harmlessness
(alt-profanity-check)."""

from __future__ import annotations

import functools

from .base import REQUIRED, RewardKind, checked_number, need_module, register_reward, renamed, text_of

# ---------------------------------------------------------------------------------------------------------------
# length


class Length:
    """-((|y| - target) / max_length)^2. |y| is len(completion_ids) when given (TRL gives them; they include the
    EOS token that ended the completion, as in TRL's completion-length metric), else the number of tokens of the
    completion text under `tokenizer` (no special tokens)."""

    def __init__(self, target, max_length, tokenizer=None, name=None):
        self.target = checked_number(target, "target", 0)
        self.max_length = checked_number(max_length, "max_length", 0, strict=True)
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


@register_reward
class LengthKind(RewardKind):
    name = "length"
    syntax = "length:TARGET:MAX_LENGTH"
    help = "-((|y| - TARGET) / MAX_LENGTH)^2, |y| in tokens (the IAMA paper's length reward)"
    keys = {"target": REQUIRED, "max_length": REQUIRED}
    # no bounds: its floor depends on how long completions may be

    def from_string(self, text):
        rest = text.partition(":")[2]
        parts = rest.split(":") if rest else []
        if len(parts) != 2:
            raise ValueError("the length reward is 'length:TARGET:MAX_LENGTH', e.g. 'length:16:64'")
        return {"target": parts[0], "max_length": parts[1]}

    def validate(self, args):
        checked_number(args["target"], "target", 0)
        checked_number(args["max_length"], "max_length", 0, strict=True)

    def build(self, args, name, tokenizer, spec):
        return Length(args["target"], args["max_length"], tokenizer=tokenizer, name=name)


# ---------------------------------------------------------------------------------------------------------------
# sentiment


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float]:
    """VADER compound sentiment of the completion, in [-1, 1] (positive is good)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text_of(c))["compound"]) for c in completions]


@register_reward
class SentimentKind(RewardKind):
    name = syntax = "sentiment"
    help = "VADER compound score in [-1, 1]"
    bounds = (-1.0, 1.0)

    def check(self, args, spec):
        need_module("vaderSentiment", "vadersentiment", spec)

    def build(self, args, name, tokenizer, spec):
        return renamed(sentiment, name)


# ---------------------------------------------------------------------------------------------------------------
# harmlessness


def harmlessness(prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float]:
    """1 - probability that the completion is offensive language (alt-profanity-check's linear SVM), in [0, 1]."""
    from profanity_check import predict_prob

    texts = [text_of(c) for c in completions]
    return [] if not texts else [float(1.0 - p) for p in predict_prob(texts)]


@register_reward
class HarmlessnessKind(RewardKind):
    name = syntax = "harmlessness"
    help = "1 - P(offensive) from alt-profanity-check, in [0, 1]"
    bounds = (0.0, 1.0)

    def check(self, args, spec):
        need_module("profanity_check", "alt-profanity-check", spec)

    def build(self, args, name, tokenizer, spec):
        return renamed(harmlessness, name)

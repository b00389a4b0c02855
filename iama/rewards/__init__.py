"""Reward functions with TRL's signature: `fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]`.

TRL passes prompts and completions as strings, or for conversational data as lists of message dicts
(`[{"role": "assistant", "content": ...}]`); every function here takes both. Each has a readable `__name__`,
which TRL logs rewards by. Failures raise; a reward may return None/NaN for a sample, the trainer drops those.

`build_reward` and `check_reward` take a spec: a string, the same as a dict with a "type" key and the arguments
by name (an optional "name" overrides `__name__`), or a callable, used as is. Each kind of reward is one entry
of the registry REWARDS (iama.rewards.base), which this list of the kinds is made from (string form, dict form
with the defaults, what it scores):

"""

from __future__ import annotations

from .base import (REQUIRED, REWARDS, Renamed, RewardKind, answers_method, build_reward, check_reward,
                   checked_number, need_module, per_text, register_reward, renamed, reward_bounds, reward_column,
                   reward_gives_answers, spec_help, spec_list, spec_text, text_of)

# Each module registers its kinds as it is imported: this order is REWARDS' order, which help and errors list
# the kinds in.
# isort: off
from .simple import Length, harmlessness, sentiment
from .hf import HFRewardModel
from .embedding import MINILM_INSTALL, MINILM_PACKAGE, OnTopic, Relevance, copied_words, minilm_dir, strip_copied
from .answer import Answer
from .dotted import import_callable
# isort: on

if __doc__ is not None:  # python -OO drops docstrings
    __doc__ += spec_list()

__all__ = ["MINILM_INSTALL", "MINILM_PACKAGE", "REQUIRED", "REWARDS", "Answer", "HFRewardModel", "Length", "OnTopic",
           "Relevance", "Renamed", "RewardKind", "answers_method", "build_reward", "check_reward", "checked_number",
           "copied_words", "harmlessness", "import_callable", "minilm_dir", "need_module", "per_text",
           "register_reward", "renamed", "reward_bounds", "reward_column", "reward_gives_answers", "sentiment",
           "spec_help", "spec_list", "spec_text", "strip_copied", "text_of"]

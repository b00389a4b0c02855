"""Generate builtin:arith, short arithmetic problems with integer answers, for the `answer` reward.

    python -m iama.prompts.arith            # rewrites iama/prompts/arith.jsonl (deterministic: seed SEED)
    python -m iama.prompts.arith --check    # exits 1 if the shipped file differs from what this script writes

Each line is `{"prompt": ..., "answer": "N", "kind": ..., "split": "train" | "test"}`: the first TRAIN (240)
rows are for training (`max_prompts: 240`), the last TEST (60) held out (`iama eval --offset 240 --limit 60`), as
the "split" field says. The problems are sums, differences and products of small whole numbers, most in one step
and written with symbols ("What is 7 + 4?"), some as word problems or in two steps (KINDS says how many of each);
every answer is a non-negative integer, given as a string (the way a dataset's reference answer usually is), and
every prompt ends with INSTRUCTION. No two prompts are the same, though with so few digit pairs the held-out
split shares number facts with the training split ("3 + 5" in one, "How much is 5 + 3?" in the other). Pure
Python: the problems depend only on the seed and this file.

Difficulty is set for SmolLM2-135M-Instruct, so that a group of samples usually mixes right and wrong answers:
sampled at temperature 1.0 (top-k and top-p off, as TRL samples) with its chat template and up to 64 new tokens,
it solves about 30% of them (pass@1 0.31 under the `answer` reward, measured on the first 40 training prompts x 4
samples, with each of two sampling seeds).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20260
TRAIN, TEST = 240, 60
INSTRUCTION = "Give the final answer as a number."
PATH = Path(__file__).with_name("arith.jsonl")

NAMES = ("Anna", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Leo", "Maya",
         "Nils", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yuki", "Zoe")
THINGS = ("apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards", "books", "coins")
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"), ("pack", "packs"))


def _ask(rng, expression):
    return rng.choice(ASK).format(expression)


def _add(rng):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return "add", _ask(rng, f"{a} + {b}"), a + b


def _sub(rng):
    a = rng.randint(2, 10)
    b = rng.randint(1, a - 1)
    return "sub", _ask(rng, f"{a} - {b}"), a - b


def _mul(rng):
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    return "mul", _ask(rng, f"{a} * {b}"), a * b


def _word(rng):
    return _word_add(rng) if rng.random() < 0.5 else _word_mul(rng)


def _word_add(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return "word_add", f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b


def _word_mul(rng):
    thing, (one, many) = rng.choice(THINGS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, 6), rng.randint(2, 6)
    return "word_mul", f"There are {a} {many} with {b} {thing} in each {one}. How many {thing} are there?", a * b


def _two_step(rng):
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    c = rng.randint(1, a + b - 1)
    return "two_step", f"What is {a} + {b} - {c}?", a + b - c


# Taken in turn: five sixths are one-step sums and differences of digits and products of numbers up to 6, written
# with symbols (SmolLM2-135M-Instruct gets roughly 40%, 30% and 35% of them right), the rest word problems and
# two-step sums, which it gets right less often (0-25%, from few samples) and which leave room to improve.
# Spelled-out operations ("7 plus 4", "the sum of 7 and 4") and "7 + 4 = ?" are markedly harder for it than
# "What is 7 + 4?", and larger numbers too, so the one-step questions ask in these ways:
ASK = ("What is {}?", "How much is {}?", "Calculate {}.")
KINDS = (_add, _mul, _sub, _add, _mul, _sub, _add, _mul, _add, _add, _word, _two_step)


def generate(seed: int = SEED, train: int = TRAIN, test: int = TEST, kinds=KINDS) -> list[dict]:
    """The rows of arith.jsonl: `train + test` distinct problems, the `kinds` taken in turn and then shuffled
    within each run of len(kinds) rows, so that every stretch of the file (the first 40 prompts, the test split)
    mixes the kinds in the same proportions."""
    rng = random.Random(seed)
    rows, seen, attempts = [], set(), 0
    while len(rows) < train + test:
        attempts += 1
        if attempts > 100 * (train + test):
            raise RuntimeError(f"only {len(rows)} distinct problems of {train + test}: widen the number ranges")
        kind, question, answer = kinds[len(rows) % len(kinds)](rng)
        prompt = f"{question} {INSTRUCTION}"
        if prompt in seen:
            continue
        assert isinstance(answer, int) and answer >= 0, (prompt, answer)
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": str(answer), "kind": kind})
    shuffled = []
    for start in range(0, len(rows), len(kinds)):
        block = rows[start:start + len(kinds)]
        rng.shuffle(block)
        shuffled += block
    for i, row in enumerate(shuffled):
        row["split"] = "train" if i < train else "test"
    return shuffled


def render(rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv=None) -> int:
    return command_line(argv, __doc__, generate, PATH)


def command_line(argv, doc, generate_rows, path) -> int:
    """A generator module's command line: write `generate_rows()` to `path`, or with --check compare."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    parser.add_argument("--out", type=Path, default=path, help=f"where to write (default {path})")
    args = parser.parse_args(argv)
    rows = generate_rows()
    text = render(rows)
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from the generator'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(rows)} problems to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

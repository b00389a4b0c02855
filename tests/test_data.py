import csv
import hashlib
import json
import re
from collections import Counter

import pytest

from iama.data import as_conversation, builtin_path, load_prompts, prompt_dataset
from iama.models import tiny_gpt2


def test_builtin_prompts():
    prompts = load_prompts()
    assert len(prompts) >= 300 and len(set(prompts)) == len(prompts)
    assert len({p.lower().rstrip(".?!") for p in prompts}) == len(prompts)
    assert all(isinstance(p, str) and p == p.strip() and 10 <= len(p) <= 400 for p in prompts)
    rows = [json.loads(line) for line in builtin_path().read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"prompt", "category"} for row in rows)
    categories = Counter(row["category"] for row in rows)
    assert len(categories) >= 12 and max(categories.values()) < 0.15 * len(rows)
    for kind in ("review", "opinion", "story", "email", "joke", "how_to", "summary", "list", "advice"):
        assert categories[kind] >= 10
    assert load_prompts("builtin", limit=5) == prompts[:5]
    assert len({row["category"] for row in rows[:40]}) >= 10  # shuffled: a prefix covers many kinds


def test_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": " first ", "id": 1}\n\n{"text": "second"}\n"third"\n')
    assert load_prompts(str(path), column="text") == ["first", "second", "third"]
    assert load_prompts(path, column="text", limit=2) == ["first", "second"]
    with pytest.raises(ValueError, match="line 1: no column 'prompt'"):
        load_prompts(str(path))
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_prompts(str(path))
    path.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match="non-empty string"):
        load_prompts(str(path))


def test_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["a prompt", "another"]))
    assert load_prompts(str(path)) == ["a prompt", "another"]
    path.write_text(json.dumps([{"q": "x?"}, {"q": "y?"}]))
    assert load_prompts(str(path), column="q") == ["x?", "y?"]
    path.write_text(json.dumps({"q": ["x"]}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_prompts(str(path))


def test_csv(tmp_path):
    path = tmp_path / "p.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "instruction"])
        writer.writerow([1, "Write a poem, please."])
        writer.writerow([2, 'Say "hi"'])
    assert load_prompts(str(path), column="instruction") == ["Write a poem, please.", 'Say "hi"']
    with pytest.raises(ValueError, match=r"no column 'prompt'; the header has \['id', 'instruction'\]"):
        load_prompts(str(path))


def test_txt(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\n\n  two  \n")
    assert load_prompts(str(path)) == ["one", "two"]


@pytest.mark.parametrize("name, content, match", [
    ("missing.jsonl", None, "no such file"),
    ("empty.txt", "\n\n", "no prompts found"),
    ("data.parquet", "x", "unsupported file type"),
])
def test_file_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        load_prompts(str(path))
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"prompts '.*latin1\.txt': not UTF-8 text \(byte 3") as e:
        load_prompts(str(path))
    assert "\n" not in str(e.value)


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="limit"):
        load_prompts(limit=0)


def test_hf_dataset_from_a_local_directory(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "a?"}\n{"question": "b?"}\n')
    assert load_prompts(f"hf:{tmp_path}", column="question") == ["a?", "b?"]
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompts(f"hf:{tmp_path}")


def test_hf_dataset_errors():
    with pytest.raises(ValueError, match="hf:NAME"):
        load_prompts("hf:")
    with pytest.raises(ValueError, match="cannot load") as e:  # offline: not on disk, not downloadable
        load_prompts("hf:iama-test-org/no-such-dataset")
    assert "\n" not in str(e.value)


def test_as_conversation_follows_the_chat_template():
    _, tok = tiny_gpt2()
    assert as_conversation(["a", "b"], tok) == ["a", "b"]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert as_conversation(["a"], tok) == [[{"role": "user", "content": "a"}]]
    ds = prompt_dataset(["a", "b"], tok)
    assert ds.column_names == ["prompt"] and ds[1]["prompt"] == [{"role": "user", "content": "b"}]
    assert prompt_dataset(["a"])[0] == {"prompt": "a"}


def test_named_builtin_prompt_sets():
    questions = load_prompts("builtin:questions")
    assert len(questions) >= 250 and len(set(questions)) == len(questions)
    assert not set(questions) & set(load_prompts("builtin"))
    # the length task needs SmolLM2's answers to spread below the 64-token cap: each asks for a short answer
    assert all(q.endswith("sentences.") for q in questions)
    with pytest.raises(ValueError, match="no built-in prompt set 'nope'"):
        load_prompts("builtin:nope")


def test_prompt_files_keep_unicode_line_separators(tmp_path):
    odd = "first\u2028second\x85third"
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": odd}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "p.jsonl")) == [odd]
    (tmp_path / "p.txt").write_text(f"{odd}\r\nplain\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "p.txt")) == [odd, "plain"]
    (tmp_path / "p.csv").write_text(f'prompt\n"{odd}"\nplain\n', encoding="utf-8")
    assert load_prompts(str(tmp_path / "p.csv")) == [odd, "plain"]


def test_grim_prompt_set_has_a_fixed_split():
    """builtin:grim, sombre subjects for the on-topic vs upbeat sweep: the first 160 prompts are for training
    (`max_prompts: 160`), the next 60 held out (`iama eval --offset 160 --limit 60`), then the "confirm" prompts,
    added after the first sweep, for a confirmatory evaluation (`--offset 220`), as the "split" field says."""
    from iama.data import collect_prompts

    prompts = load_prompts("builtin:grim")
    lines = builtin_path("grim").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(prompts) == len(rows) and prompts == [row["prompt"] for row in rows]
    # earlier results depend on the first 220 rows: new prompts go after them, these never change
    first = ("\n".join(lines[:220]) + "\n").encode()
    assert hashlib.sha256(first).hexdigest() == "0f3460ab4b314c9e283b497a9afc071f6de8c76c2e9e16de2769facfb7ec2bb4"
    assert len({" ".join(re.findall(r"\w+", p.lower())) for p in prompts}) == len(prompts)  # no duplicates
    assert all(set(row) == {"prompt", "category", "split"} for row in rows)
    confirm = len(rows) - 220
    assert confirm >= 120
    assert [row["split"] for row in rows] == ["train"] * 160 + ["test"] * 60 + ["confirm"] * confirm
    train = load_prompts("builtin:grim", limit=160)
    held_out = collect_prompts(source="builtin:grim", offset=160, limit=60)
    fresh = collect_prompts(source="builtin:grim", offset=220)
    assert len(held_out) == 60 and not set(train) & set(held_out) and train + held_out + fresh == prompts
    assert fresh.columns["split"] == ["confirm"] * confirm
    categories = Counter(row["category"] for row in rows)
    assert len(categories) == 17
    for part in (rows[160:220], rows[220:]):  # every subject held out, and every one again among the new prompts
        assert {row["category"] for row in part} == set(categories)
    assert min(Counter(row["category"] for row in rows[220:]).values()) >= confirm // 17 - 1
    assert not set(prompts) & (set(load_prompts("builtin")) | set(load_prompts("builtin:questions")))


def test_one_prompt_key_for_pools_and_calibration_stores(tmp_path):
    """A non-ASCII conversation keys a calibration store and a pool alike, through their files and back."""
    from iama.ctrl import CalibrationStore
    from iama.data import prompt_key
    from iama.pools import Pool, read_pool, write_pool

    conv = [{"role": "system", "content": "Réponds brièvement."}, {"role": "user", "content": "Über Tōkyō — 東京?"}]
    store = CalibrationStore(tmp_path / "calibration.json")
    store.add(conv, "r", [0.1, 0.5, 0.9])
    store.save()
    write_pool(tmp_path / "pool.jsonl", [{"prompt": conv, "model": "m", "candidates": [
        {"text": "ja", "num_tokens": 1, "finished": True, "scores": {"r": 0.5}}]}])
    record = read_pool(tmp_path / "pool.jsonl")[0]
    assert prompt_key(record["prompt"]) in CalibrationStore(tmp_path / "calibration.json").rewards["r"]
    assert CalibrationStore(tmp_path / "calibration.json").lookup([record["prompt"]], "r", [[0.5]]).tolist() == [[0.5]]
    pool = Pool.from_records([record], ["r"], "m")
    assert pool.subset([prompt_key(conv)]).rewards.shape[0] == 1
    assert "東京" in prompt_key(conv)  # not escaped: the key is the text people read in the store


# ---- extra columns (reference answers and the like) ---------------------------------------------------------


def test_jsonl_columns_are_carried_beside_the_prompts(tmp_path):
    from iama.data import Prompts

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "2 + 2?", "answer": "4", "level": 1}\n{"prompt": "3 * 3?", "answer": 9}\n"bare?"\n'
                    '{"prompt": "x?", "answer": "7", "completions": "no", "images": []}\n')
    prompts = load_prompts(str(path))
    assert isinstance(prompts, Prompts) and prompts == ["2 + 2?", "3 * 3?", "bare?", "x?"]
    # a missing field or a bare-string row is None; names TRL uses for something else are left out
    assert prompts.columns == {"answer": ["4", 9, None, "7"], "level": [1, None, None, None]}
    assert load_prompts(str(path), limit=2).columns == {"answer": ["4", 9], "level": [1, None]}
    head = prompts[1:3]
    assert isinstance(head, Prompts) and head == ["3 * 3?", "bare?"] and head.columns["answer"] == [9, None]
    assert prompts[0] == "2 + 2?" and type(prompts + ["y"]) is list


def test_prompt_dataset_carries_the_columns_for_the_rewards(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "2 + 2?", "answer": "4"}\n{"prompt": "3 * 3?", "answer": 9}\n')
    prompts = load_prompts(str(path))
    ds = prompt_dataset(prompts)
    assert ds.column_names == ["prompt", "answer"]
    assert ds.to_list() == [{"prompt": "2 + 2?", "answer": "4"}, {"prompt": "3 * 3?", "answer": "9"}]  # one type
    _, tok = tiny_gpt2()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    conv = prompt_dataset(prompts[1:], tok)
    assert conv[0] == {"prompt": [{"role": "user", "content": "3 * 3?"}], "answer": 9}
    # a file without extra fields gives the dataset it always gave
    (tmp_path / "plain.jsonl").write_text('{"prompt": "a"}\n"b"\n')
    assert prompt_dataset(load_prompts(str(tmp_path / "plain.jsonl"))).to_list() == [{"prompt": "a"}, {"prompt": "b"}]
    (tmp_path / "plain.txt").write_text("a\nb\n")
    assert load_prompts(str(tmp_path / "plain.txt")).columns == {}


def test_json_and_csv_columns(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"q": "x?", "answer": "1"}, {"q": "y?"}]))
    assert load_prompts(str(tmp_path / "p.json"), column="q").columns == {"answer": ["1", None]}
    (tmp_path / "p.csv").write_text("prompt,answer\nx?,1\ny?,2\n")
    assert load_prompts(str(tmp_path / "p.csv")).columns == {"answer": ["1", "2"]}


def test_hf_dataset_columns(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "a?", "answer": "1", "id": 0}\n'
                                          '{"question": "b?", "answer": "2", "id": 1}\n')
    prompts = load_prompts(f"hf:{tmp_path}", column="question")
    assert prompts == ["a?", "b?"] and prompts.columns == {"answer": ["1", "2"], "id": [0, 1]}
    assert load_prompts(f"hf:{tmp_path}", column="question", limit=1).columns == {"answer": ["1"], "id": [0]}
    assert prompt_dataset(prompts).column_names == ["prompt", "answer", "id"]


def test_require_column_names_the_column_and_the_source(tmp_path):
    from iama.data import require_column

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a?", "answer": "1"}\n{"prompt": "b?", "answer": " "}\n{"prompt": "c?"}\n')
    prompts = load_prompts(str(path))
    require_column(prompts[:1], "answer", path)
    with pytest.raises(ValueError, match=r"p\.jsonl': column 'answer' is empty or missing for 2 of 3 prompts "
                                         r"\(the first is prompt 1") as e:
        require_column(prompts, "answer", path)
    with pytest.raises(ValueError, match=r"prompts '.*p\.jsonl': no column 'solution'; it has \['answer'\]"):
        require_column(prompts, "solution", path)
    (tmp_path / "p.txt").write_text("a?\n")
    with pytest.raises(ValueError, match="no column 'answer'; it has no columns besides the prompt") as e:
        require_column(load_prompts(str(tmp_path / "p.txt")), "answer", tmp_path / "p.txt")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"no column 'answer'; it has \['category'\]"):
        require_column(load_prompts("builtin:tiny"), "answer", "builtin:tiny")
    with pytest.raises(ValueError, match="no column 'answer'"):
        require_column(["a plain list"], "answer", "mine")
    require_column(load_prompts("builtin:arith"), "answer", "builtin:arith")


def test_grpo_passes_the_columns_to_the_rewards(tiny_gpt2_dir, tmp_path):
    """TRL's GRPOTrainer gives each reward function the dataset's other columns, aligned with the completions."""
    from trl import GRPOConfig, GRPOTrainer

    from iama.models import load_model
    from iama.rewards import build_reward

    path = tmp_path / "p.jsonl"
    rows = [{"prompt": f"the day {i} was", "answer": str(i)} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = load_model(tiny_gpt2_dir)
    seen = []

    def spy(prompts, completions, completion_ids=None, answer=None, **kwargs):
        seen.extend(zip(prompts, answer))
        return [0.0] * len(prompts)

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, max_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=args, reward_funcs=[spy, build_reward("answer")],
                          train_dataset=prompt_dataset(load_prompts(str(path)), tok))
    trainer.train()
    assert len(seen) == 8 and all(p == f"the day {a} was" for p, a in seen)
    assert "rewards/answer/mean" in trainer.state.log_history[0]


# ---- builtin:arith -------------------------------------------------------------------------------------------


def test_arith_prompt_set_is_what_its_generator_writes(tmp_path):
    """builtin:arith is iama/prompts/arith.jsonl, which `python -m iama.prompts.arith` rewrites from a fixed seed:
    regenerating gives the shipped file byte for byte, and the first 240 rows are train, the last 60 test."""
    from iama.data import collect_prompts
    from iama.prompts import arith

    assert arith.render(arith.generate()) == arith.render(arith.generate())  # no hidden state
    assert builtin_path("arith").read_text(encoding="utf-8") == arith.render(arith.generate())
    assert arith.main(["--check"]) == 0
    assert arith.main(["--out", str(tmp_path / "a.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == builtin_path("arith").read_bytes()
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert arith.main(["--check", "--out", str(tmp_path / "a.jsonl")]) == 1

    rows = [json.loads(line) for line in builtin_path("arith").read_text(encoding="utf-8").splitlines()]
    prompts = load_prompts("builtin:arith")
    assert len(rows) == len(prompts) == 300 and prompts == [row["prompt"] for row in rows]
    assert all(set(row) == {"prompt", "answer", "kind", "split"} for row in rows)
    assert [row["split"] for row in rows] == ["train"] * 240 + ["test"] * 60
    assert len(set(prompts)) == 300 and all(p.endswith(arith.INSTRUCTION) for p in prompts)
    assert all(isinstance(row["answer"], str) and row["answer"].isdigit() for row in rows)
    assert prompts.columns["answer"] == [row["answer"] for row in rows]
    assert {row["kind"] for row in rows[240:]} == {row["kind"] for row in rows}  # every kind held out
    assert {row["kind"] for row in rows[:40]} == {row["kind"] for row in rows}  # and in a short prefix
    held_out = collect_prompts(source="builtin:arith", offset=240, limit=60)
    assert held_out == prompts[240:] and not set(held_out) & set(prompts[:240])


def test_arith_answers_are_right():
    """Each reference answer is the value of the problem's arithmetic, and the answer reward accepts it."""
    from iama.rewards import build_reward

    prompts = load_prompts("builtin:arith")
    for prompt, answer in zip(prompts, prompts.columns["answer"]):
        numbers = [int(n) for n in re.findall(r"\d+", prompt)]
        expression = re.search(r"(\d+ [-+*] \d+(?: [-+*] \d+)?)[?.]", prompt)
        if expression:
            assert int(answer) == eval(expression.group(1), {"__builtins__": {}}), prompt
        elif "more" in prompt:
            assert int(answer) == numbers[0] + numbers[1], prompt
        else:
            assert "in each" in prompt and int(answer) == numbers[0] * numbers[1], prompt
    reward = build_reward("answer")
    assert reward(prompts=prompts[:20], completions=prompts.columns["answer"][:20],
                  answer=prompts.columns["answer"][:20]) == [1.0] * 20


# ---- builtin:arith-hard --------------------------------------------------------------------------------------


def test_arith_hard_prompt_set_is_what_its_generator_writes(tmp_path):
    """builtin:arith-hard is iama/prompts/arith-hard.jsonl, which `python -m iama.prompts.arith_hard` rewrites from
    a fixed seed: the first 300 rows train, the last 200 held out, every kind in both and in the first 40."""
    from iama.data import collect_prompts
    from iama.prompts import arith, arith_hard

    text = arith.render(arith_hard.generate())
    assert builtin_path("arith-hard").read_text(encoding="utf-8") == text == arith.render(arith_hard.generate())
    assert arith_hard.main(["--check"]) == 0
    assert arith_hard.main(["--out", str(tmp_path / "h.jsonl")]) == 0
    assert (tmp_path / "h.jsonl").read_bytes() == builtin_path("arith-hard").read_bytes()
    (tmp_path / "h.jsonl").write_text(builtin_path("arith").read_text(encoding="utf-8"))
    assert arith_hard.main(["--check", "--out", str(tmp_path / "h.jsonl")]) == 1
    assert arith.main(["--check"]) == 0  # builtin:arith, which earlier results depend on, is unchanged

    rows = [json.loads(line) for line in text.splitlines()]
    prompts = load_prompts("builtin:arith-hard")
    assert len(rows) == len(prompts) == 500 and prompts == [row["prompt"] for row in rows]
    assert all(set(row) == {"prompt", "answer", "kind", "split"} for row in rows)
    assert [row["split"] for row in rows] == ["train"] * 300 + ["test"] * 200
    assert len(set(prompts)) == 500 and all(p.endswith(arith.INSTRUCTION) for p in prompts)
    shared = set(prompts) & set(load_prompts("builtin:arith"))  # only products of two numbers up to 6
    assert all(max(map(int, re.findall(r"\d+", p))) <= 6 and "*" in p for p in shared)
    kinds = {row["kind"] for row in rows}
    assert len(kinds) == 5 and {row["kind"] for row in rows[300:]} == {row["kind"] for row in rows[:40]} == kinds
    for row in rows:  # repeating a number of the question is never right
        assert row["answer"].isdigit() and row["answer"] not in re.findall(r"\d+", row["prompt"])
    held_out = collect_prompts(source="builtin:arith-hard", offset=300, limit=200)
    assert held_out == prompts[300:] and not set(held_out) & set(prompts[:300])


def test_arith_hard_answers_are_right():
    from iama.rewards import build_reward

    prompts = load_prompts("builtin:arith-hard")
    for prompt, answer, kind in zip(prompts, prompts.columns["answer"], prompts.columns["kind"]):
        numbers = [int(n) for n in re.findall(r"\d+", prompt)]
        if kind in ("mul_teen", "mul_big", "add3"):
            expression = re.search(r"(\d+(?: [+*] \d+)+)[?.]", prompt).group(1)
            assert int(answer) == eval(expression, {"__builtins__": {}}), prompt
        elif kind == "word_sub":
            assert "gives" in prompt and int(answer) == numbers[0] - numbers[1] > 0, prompt
        else:
            assert kind == "word_mul_teen" and int(answer) == numbers[0] * numbers[1], prompt
    reward = build_reward("answer")
    assert reward(prompts=prompts[:20], completions=[f"The answer is {a}." for a in prompts.columns["answer"][:20]],
                  answer=prompts.columns["answer"][:20]) == [1.0] * 20


def test_arith_hard_config_trains_on_the_training_split():
    from pathlib import Path

    from iama.config import load_config
    from iama.data import require_column

    cfg = load_config(Path(__file__).resolve().parents[1] / "iama" / "configs" / "arith-hard-grpo.yaml",
                      check_model=False)
    assert cfg.prompts == "builtin:arith-hard" and cfg.max_prompts == 300
    prompts = load_prompts(cfg.prompts, limit=cfg.max_prompts)
    require_column(prompts, "answer", cfg.prompts)
    assert set(prompts.columns["split"]) == {"train"} and cfg.criteria[0].reward == "answer"


def test_collect_prompts():
    from iama.data import collect_prompts, load_prompts

    assert collect_prompts(["a", " "], None) == ["a"]
    assert collect_prompts(["a"], "builtin", limit=2, offset=3) == ["a"] + load_prompts(limit=5)[3:]
    with pytest.raises(ValueError, match="no prompts"):
        collect_prompts([], None)

"""Evaluation and decoding of verifiable rewards: maj@k and pass@k for every k <= M from one pool (against direct
MajorityVote estimates, brute force over subsets and Chen et al.'s formula), answer keys through pool files,
prompt columns reaching the rewards, `iama decode` selecting the majority answer, and bad input in one line.
No model is loaded: a fake backend writes the candidates."""

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
import yaml

from iama.algorithms import BestOfN, MajorityVote
from iama.data import Prompts, load_prompts
from iama.data import collect_prompts
from iama.decode import decode
from iama.estimate import criteria_families, estimate
from iama.evaluate import evaluate
from iama.pools import Pool, answer_key_json, read_pool, score_candidates, write_pool


def chen(c, m, k):
    """pass@k of Chen et al. (2021): 1 - C(M - c, k) / C(M, k) for c correct of M."""
    return 1.0 - math.comb(m - c, k) / math.comb(m, k)


def brute_maj(rewards, answers, k):
    """Mean over all k-subsets of the reward of the answer most of them give (ties: the mean over the tied
    answers; no votes: the abstainers' reward); rewards are a function of the answer here."""
    reward_of = {a: r for a, r in zip(answers, rewards)}
    total = 0.0
    subsets = list(itertools.combinations(range(len(rewards)), k))
    for s in subsets:
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            total += reward_of[None]
            continue
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += np.mean([reward_of[a] for a in winners])
    return total / len(subsets)


def voting_pool(label, seed, p=12, m=6, skill=0.4):
    """P prompts, M samples each: answers 'a'..'c' or None; 'a' is correct (reward 1), the rest 0."""
    rng = np.random.default_rng(seed)
    answers = rng.choice(np.array(["a", "b", "c", None], dtype=object), size=(p, m),
                         p=[skill, (1 - skill) * 0.5, (1 - skill) * 0.3, (1 - skill) * 0.2])
    correct = (answers == "a").astype(float)
    length = rng.normal(size=(p, m))
    rewards = np.stack([correct, length], axis=-1)
    return Pool(label, [f"q{i}" for i in range(p)], rewards, np.full((p, m), 5), ["correct", "len"],
                answers={"correct": answers})


CRITERIA = [{"name": "correct", "reward": "answer", "algorithm": "maj:4", "weight": 1.0},
            {"name": "len", "reward": "length:4:8", "algorithm": "bon:2", "weight": 0.5}]


def test_maj_and_pass_at_k_for_every_k_equal_direct_estimates(tmp_path):
    base, better = voting_pool("base", 0, skill=0.35), voting_pool("better", 1, skill=0.6)
    report = estimate([base, better], CRITERIA, reference="base", bootstrap=200, seed=0)
    c0 = report["criteria"][0]
    assert c0["families"] == ["maj", "sampling", "bon"] and c0["answers"] and c0["binary"]
    assert report["criteria"][1]["families"] == ["bon", "sampling"] and not report["criteria"][1]["answers"]
    for pool in (base, better):
        values = report["models"][pool.label]["values"]["correct"]
        r, a = pool.rewards[:, :, 0], pool.answers["correct"]
        m = pool.m
        assert values["maj"]["n"] == values["bon"]["n"] == list(range(1, m + 1))
        for k in range(1, m + 1):
            direct = MajorityVote(k).estimate_value(r, answers=a)
            assert values["maj"]["mean"][k - 1] == pytest.approx(direct.mean(), abs=1e-12)
            brute = [brute_maj(r[i], list(a[i]), k) for i in range(len(r))]
            np.testing.assert_allclose(direct, brute, atol=1e-12)
            passk = np.mean([chen(int(c), m, k) for c in r.sum(1)])
            assert values["bon"]["mean"][k - 1] == pytest.approx(passk, abs=1e-12)
            # the interval is the normal one over prompts, as for every family
            se = direct.std(ddof=1) / math.sqrt(len(direct))
            assert values["maj"]["se"][k - 1] == pytest.approx(se)
        assert values["maj"]["mean"][0] == pytest.approx(r.mean())  # maj@1 is sampling
    # the objective at the configured algorithms: maj@4 of correct and bon@2 of len
    cfg = report["models"]["better"]["objective_configured"]
    assert cfg["values"]["correct"] == pytest.approx(report["models"]["better"]["values"]["correct"]["maj"]["mean"][3])
    # effective k against the reference, for maj (configured) and pass@k (bon)
    eff = report["effective_n"]["better"]
    assert eff["criteria"]["correct"]["family"] == "maj"
    assert eff["families"]["correct"]["maj"]["effective_n"] == eff["criteria"]["correct"]["effective_n"]
    assert eff["families"]["correct"]["maj"]["ci_low"] == eff["criteria"]["correct"]["ci_low"]
    assert set(eff["families"]["correct"]) == {"maj", "bon"} and set(eff["families"]["len"]) == {"bon"}
    assert eff["families"]["correct"]["bon"]["model_value"] == report["models"]["better"]["values"]["correct"]["bon"]["mean"]
    # win rates under maj for a 0/1 reward: (1 + maj_model - maj_ref) / 2, prompt by prompt
    win = report["win_rates"]["better"]["correct"]
    assert set(win) == {"bon", "won", "maj"} and set(report["win_rates"]["better"]["len"]) == {"bon", "won"}
    vm = report["models"]["better"]["values"]["correct"]["maj"]["mean"]
    vr = report["models"]["base"]["values"]["correct"]["maj"]["mean"]
    np.testing.assert_allclose(win["maj"]["mean"], 0.5 + 0.5 * (np.array(vm) - np.array(vr)))
    # the rest of the report still works: cross-effects by rewards, Pareto fronts
    assert report["models"]["base"]["cross_effects"]["correct"]["bon"]["len"]["n"] == list(range(1, 7))
    assert "4" in report["pareto"]["fronts"]
    json.dumps(report, allow_nan=False)

    from iama.report import write_report

    files = write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "**correct** under maj (maj@N):" in md and "**correct** under bon (pass@N):" in md
    assert "(correct [maj (maj@N)])" in md and "(correct [bon (pass@N)])" in md
    assert "Selection by majority vote (maj) is not among them" in md
    assert (tmp_path / files["values"]).stat().st_size > 1000 and (tmp_path / files["win_rates"]).is_file()


def test_families_add_maj_and_bon_for_answered_criteria_only():
    crit = [{"name": "ok", "reward": "answer", "algorithm": "bon:4"},
            {"name": "len", "reward": "length:4:8", "algorithm": "won:2"}]
    fams = criteria_families(crit, ["maj", "won"], answered=["ok"])
    assert fams == {"ok": ["bon", "sampling", "maj", "won"], "len": ["won", "sampling"]}
    pool = voting_pool("a", 3)
    pool.criteria = ["ok", "len"]
    pool.answers = {"ok": pool.answers["correct"]}
    report = estimate([pool], crit, algorithms=["maj"], bootstrap=0)
    assert list(report["models"]["a"]["values"]["ok"]) == ["bon", "sampling", "maj"]
    assert "maj" not in report["models"]["a"]["values"]["len"]
    # maj asked for, and no criterion has answers: one line
    del pool.answers["ok"]
    with pytest.raises(ValueError, match="votes on answers, and no criterion has them") as e:
        estimate([pool], crit, algorithms=["maj"], bootstrap=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="'ok' uses maj:4, which votes on answers, but pool 'a' has none"):
        estimate([pool], [dict(crit[0], algorithm="maj:4"), crit[1]], bootstrap=0)


def test_pool_records_round_trip_answers(tmp_path):
    records = [{"prompt": f"q{i}", "model": "m", "criteria": [
        {"name": "correct", "reward": "answer", "algorithm": "maj:3", "weight": 1.0}],
        "candidates": [{"text": t, "num_tokens": 2, "scores": {"correct": float(a == "1")},
                        "answers": {"correct": answer_key_json(a)}} for t, a in zip("xyzw", keys)]}
        for i, keys in enumerate([["1", "1", "2", None], ["2", ("t", 1), ("t", 1), None], [None] * 4])]
    assert records[1]["candidates"][1]["answers"]["correct"] == "('t', 1)"  # a tuple key stored as its text
    path = tmp_path / "pool.jsonl"
    write_pool(path, records)
    back = read_pool(path)
    assert [c["answers"]["correct"] for c in back[0]["candidates"]] == ["1", "1", "2", None]
    pool = Pool.from_records(back, ["correct"])
    assert pool.answers["correct"].shape == (3, 4) and pool.answers["correct"][1, 1] == pool.answers["correct"][1, 2]
    from iama.data import prompt_key

    sub = pool.subset([prompt_key("q2"), prompt_key("q0")])
    assert list(sub.answers["correct"][1]) == ["1", "1", "2", None]
    report = evaluate(pools=[path], out=tmp_path / "out", plots=False, bootstrap=0)
    values = report["models"]["m"]["values"]["correct"]
    r = pool.rewards[:, :, 0]
    for k in (1, 2, 3, 4):
        assert values["maj"]["mean"][k - 1] == pytest.approx(MajorityVote(k).estimate_value(
            r, answers=pool.answers["correct"]).mean())
        assert values["bon"]["mean"][k - 1] == pytest.approx(BestOfN(k).estimate_value(r).mean())
    # a JSON list written by another tool reads back as a hashable tuple
    back[0]["candidates"][0]["answers"]["correct"] = [1, 2]
    assert Pool.from_records(back, ["correct"]).answers["correct"][0, 0] == (1, 2)
    # some candidates with an answer and some without: one line
    del back[0]["candidates"][0]["answers"]
    with pytest.raises(ValueError, match="1 of 12 candidates have no answer for criterion 'correct'"):
        Pool.from_records(back, ["correct"])
    bad = dict(records[0], candidates=[dict(records[0]["candidates"][0], answers={"other": "1"})])
    write_pool(path, [bad])
    with pytest.raises(ValueError, match="an answer for 'other', which it has no score for"):
        read_pool(path)


def test_a_pool_without_answers_is_evaluated_as_before_and_refused_for_maj(tmp_path):
    lines = [{"prompt": f"q{i}", "model": "m", "candidates": [
        {"text": "t", "num_tokens": 1, "scores": {"c": float(j % 2)}} for j in range(4)]} for i in range(3)]
    path = tmp_path / "old.jsonl"
    write_pool(path, lines)
    report = evaluate(pools=[path], out=tmp_path / "a", plots=False, bootstrap=0)
    assert list(report["models"]["m"]["values"]["c"]) == ["bon", "sampling"] and not report["criteria"][0]["answers"]
    for line in lines:
        line["algorithm"] = "maj:2"  # a decode file of maj without answers
    write_pool(path, lines)
    with pytest.raises(ValueError, match="'c' uses maj:2, which votes on answers, but pool 'm' has none") as e:
        evaluate(pools=[path], out=tmp_path / "b", plots=False, bootstrap=0)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# prompt columns, a fake backend, decode


class LastWord:
    """An answer-like reward without math-verify: the completion's last word is its answer (none if the text is
    empty), correct if it equals the prompt's `answer` column."""

    __name__ = "last_word"

    def __init__(self):
        self.seen = []

    def answers(self, completions):
        return [c.split()[-1] if c.split() else None for c in completions]

    def __call__(self, prompts, completions, answer, **kwargs):
        self.seen.append(list(answer))
        return [float(a == ref) for a, ref in zip(self.answers(completions), answer)]


class FakeBackend:
    """Candidates from a table {prompt: [texts]} (the first n), or drawn from `choices` per prompt, seeded."""

    name, chat, batch_size, tokenizer = "fake", False, 64, None

    def __init__(self, table=None, choices=None):
        self.table, self.choices = table or {}, choices

    def generate(self, prompts, n, settings, seed):
        rng = np.random.default_rng(seed)
        out = []
        for p in prompts:
            texts = self.table[p][:n] if p in self.table else list(rng.choice(self.choices(p), size=n))
            out.append([{"text": t, "ids": [1] * (len(t.split()) + 1), "num_tokens": len(t.split()) + 1,
                         "finished": True} for t in texts])
        return out


def test_prompt_columns_reach_the_rewards_one_value_per_completion():
    reward = LastWord()
    seen_plain = {}

    def plain(prompts, completions, completion_ids=None):  # takes no **kwargs: gets no columns
        seen_plain["called"] = True
        return [0.0] * len(completions)

    samples = [[{"text": "so 3", "ids": [1]}, {"text": "4", "ids": [1]}], [{"text": "", "ids": [1]}] * 2]
    score_candidates(["q1", "q2"], samples, {"ok": reward, "plain": plain}, chat=False,
                     columns={"answer": ["3", "9"], "kind": ["x", "y"]})
    assert reward.seen == [["3", "3", "9", "9"]] and seen_plain["called"]
    assert [c["scores"]["ok"] for c in samples[0]] == [1.0, 0.0]
    assert [c["answers"] for c in samples[0]] == [{"ok": "3"}, {"ok": "4"}]  # plain gives no answers
    assert samples[1][0]["answers"] == {"ok": None}
    # collect_prompts keeps the source's columns, None for the prompts given as arguments
    got = collect_prompts(["my own"], "builtin:arith", limit=3, offset=2)
    arith = load_prompts("builtin:arith", limit=5)
    assert got == ["my own", *arith[2:5]] and got.columns["answer"] == [None, *arith.columns["answer"][2:5]]
    assert got.source == "the prompts given and builtin:arith"
    assert collect_prompts(source="builtin:arith", limit=2).source == "builtin:arith"


def test_a_resumed_pool_written_without_answers_gets_them_from_its_texts(tmp_path):
    from iama.backends import GenerationSettings
    from iama.pools import sample_pool

    backend = FakeBackend(choices=lambda p: ["a 1", "b 2", ""])
    prompts = Prompts([f"q{i}" for i in range(6)], {"answer": ["1", "2"] * 3})
    criteria = [{"name": "ok", "reward": LastWord(), "algorithm": "maj:3"}]
    path = tmp_path / "pool.jsonl"
    kwargs = {"m": 3, "settings": GenerationSettings(max_new_tokens=4), "label": "x", "path": path,
              "progress": False}
    first = sample_pool(backend, prompts[:3], criteria, {"ok": LastWord()}, **kwargs)
    old = read_pool(path)
    for r in old:
        for c in r["candidates"]:
            del c["answers"]
    write_pool(path, old)
    resumed = sample_pool(backend, prompts, criteria, {"ok": LastWord()}, **kwargs)
    assert [r["candidates"] for r in resumed[:3]] == [r["candidates"] for r in first]
    assert all("ok" in c["answers"] for r in read_pool(path) for c in r["candidates"])
    assert Pool.from_records(read_pool(path), ["ok"]).answers["ok"].shape == (6, 3)


def test_decode_with_maj_selects_the_majority_answer(tmp_path, monkeypatch):
    table = {"q1": ["so 3", "maybe 4", "it is 4", "7"], "q2": ["5", "5", "", "x 6"], "q3": ["", "", "", ""]}
    monkeypatch.setattr("iama.backends.make_backend", lambda *a, **k: FakeBackend(table))
    prompts = Prompts(["q1", "q2", "q3"], {"answer": ["3", "6", "1"]})
    out = tmp_path / "maj.jsonl"
    reward = LastWord()
    records = decode(prompts, "fake", {"ok": reward, "len": "length:2:8"}, algorithm="maj:4", out=out,
                     progress=False, seed=0)
    assert reward.seen[0] == ["3"] * 4 + ["6"] * 4 + ["1"] * 4
    r1, r2, r3 = records
    assert r1["selected"] in (1, 2) and r1["response"].endswith("4")  # majority "4" (wrong), not best-of-4's "3"
    assert r2["selected"] in (0, 1) and r2["response"] == "5"  # "" does not vote
    assert 0 <= r3["selected"] < 4  # nobody votes: any candidate
    assert r1["algorithm"] == "maj:4" and r1["select_by"] == "ok"
    assert [c["algorithm"] for c in r1["criteria"]] == ["maj:4", "sampling"]  # len gives no answers to vote on
    # seeded: the same choice among the tied candidates again
    again = decode(prompts, "fake", {"ok": LastWord(), "len": "length:2:8"}, algorithm="maj:4", progress=False,
                   seed=0)
    assert [r["selected"] for r in again] == [r["selected"] for r in records]
    # the file is an eval pool: maj@4 on it averages the reward of the voted answer
    report = evaluate(pools=[out], out=tmp_path / "eval", plots=False, bootstrap=0)
    maj = report["models"]["fake"]["values"]["ok"]["maj"]
    assert maj["mean"][-1] == pytest.approx(np.mean([0.0, 0.0, 0.0]))
    assert report["models"]["fake"]["values"]["ok"]["bon"]["mean"][-1] == pytest.approx(2 / 3)  # pass@4
    assert list(report["models"]["fake"]["values"]["len"]) == ["sampling"]


def test_decode_with_maj_uses_the_answer_reward_and_the_prompt_column(monkeypatch):
    pytest.importorskip("math_verify")
    table = {"Add 2 and 3.": ["It is 5.", "The answer is \\boxed{5}", "6", "I think 6"],
             "Add 1 and 1.": ["2", "2.0", "3", "no idea"]}
    monkeypatch.setattr("iama.backends.make_backend", lambda *a, **k: FakeBackend(table))
    prompts = Prompts(list(table), {"answer": ["5", "2"]})
    records = decode(prompts, "fake", {"correct": "answer"}, algorithm="maj:4", progress=False, seed=1)
    assert [c["scores"]["correct"] for c in records[0]["candidates"]] == [1.0, 1.0, 0.0, 0.0]
    assert [c["answers"]["correct"] for c in records[1]["candidates"]][:2] == ["2", "2"]  # "2.0" keyed as "2"
    assert records[1]["response"] in ("2", "2.0")
    assert records[0]["candidates"][records[0]["selected"]]["answers"]["correct"] in ("5", "6")


def arith_backend():
    """Candidates for builtin:arith: the right answer, one off, or no number, with fixed chances per prompt."""
    arith = load_prompts("builtin:arith")
    reference = dict(zip(arith, arith.columns["answer"]))

    def choices(p):
        ref = int(reference[p])
        return [f"The answer is {ref}.", f"The answer is {ref}.", f"So {ref + 1}", "I do not know"]

    return FakeBackend(choices=choices)


def test_eval_end_to_end_with_the_answer_reward_and_maj(tmp_path, monkeypatch):
    pytest.importorskip("math_verify")
    monkeypatch.setattr("iama.backends.make_backend", lambda *a, **k: arith_backend())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"criteria": [
        {"name": "correct", "reward": "answer", "algorithm": "maj:3", "weight": 1.0}]}))
    out = tmp_path / "eval"
    report = evaluate(["a=fake", "b=fake"], config=cfg, prompts="builtin:arith", limit=6, offset=240, m=5, out=out,
                      bootstrap=50, progress=False)
    records = read_pool(out / "pools" / "a.jsonl")
    r = np.array([[c["scores"]["correct"] for c in rec["candidates"]] for rec in records])
    a = [[c["answers"]["correct"] for c in rec["candidates"]] for rec in records]
    for rec in records:  # the right answer scores 1, and every candidate has its answer key
        for c in rec["candidates"]:
            assert c["scores"]["correct"] == float(c["text"].startswith("The answer is"))
            assert (c["answers"]["correct"] is None) == (c["text"] == "I do not know")
    values = report["models"]["a"]["values"]["correct"]
    for k in range(1, 6):
        assert values["maj"]["mean"][k - 1] == pytest.approx(MajorityVote(k).estimate_value(r, answers=a).mean())
        assert values["bon"]["mean"][k - 1] == pytest.approx(np.mean([chen(int(c), 5, k) for c in r.sum(1)]))
    assert report["effective_n"]["b"]["families"]["correct"]["maj"]["n"] == [1, 2, 3, 4, 5]
    assert (out / "values_vs_n.png").is_file()
    # remade from the pools alone, and from pools saved before answers were stored (keys from the texts)
    again = evaluate(pools=[out / "pools" / "a.jsonl", out / "pools" / "b.jsonl"], out=tmp_path / "again",
                     bootstrap=50, plots=False)
    assert again["models"]["a"]["values"] == report["models"]["a"]["values"]
    for rec in records:
        for c in rec["candidates"]:
            del c["answers"]
    write_pool(tmp_path / "old.jsonl", records)
    old = evaluate(pools=[tmp_path / "old.jsonl"], out=tmp_path / "old", bootstrap=0, plots=False)
    assert old["models"]["a"]["values"]["correct"]["maj"]["mean"] == values["maj"]["mean"]


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, before any model loads


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")


@pytest.mark.parametrize("argv,match", [
    (["decode", "fake", "--prompt", "hi", "--reward", "len=length:4:8", "--algorithm", "maj:2"],
     "criterion 'len' uses maj:2, which votes on answers, but its reward 'length:4:8' gives none"),
    (["decode", "fake", "--prompt", "hi", "--reward", "correct=answer", "--algorithm", "maj:2"],
     "prompts 'the prompts given': no column 'answer'"),
    (["decode", "fake", "--prompts", "builtin", "--limit", "2", "--reward", "correct=answer:solution",
      "--algorithm", "bon:2"], "prompts 'builtin': no column 'solution'"),
    (["eval", "fake", "-M", "2", "--limit", "2", "--prompts", "builtin"],
     "prompts 'builtin': no column 'answer'"),
    (["eval", "fake", "-M", "2", "--limit", "2", "--prompts", "builtin:arith", "--algorithms", "maj",
      "--config", "LENGTH"], "algorithm maj votes on answers, and no criterion's reward gives them"),
    (["eval", "fake", "-M", "2", "--limit", "2", "--prompts", "builtin:arith", "--config", "MAJ_LENGTH"],
     "criterion 'len' uses maj:2, which votes on answers, but its reward 'length:4:8' gives none"),
])
def test_bad_input_is_one_line_and_exit_2(argv, match, tmp_path, monkeypatch, capsys):
    pytest.importorskip("math_verify")
    from iama.cli import main

    monkeypatch.setattr("iama.backends.make_backend", no_model)
    configs = {"ANSWER": [{"name": "correct", "reward": "answer", "algorithm": "maj:2"}],
               "LENGTH": [{"name": "len", "reward": "length:4:8", "algorithm": "bon:2"}],
               "MAJ_LENGTH": [{"name": "len", "reward": "length:4:8", "algorithm": "maj:2"}]}
    for name, criteria in configs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"criteria": criteria}))
    argv = [str(tmp_path / f"{a}.yaml") if a in configs else a for a in argv]
    if argv[0] == "eval" and "--config" not in argv:
        argv += ["--config", str(tmp_path / "ANSWER.yaml")]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iama: error: ") and "\n" not in err
    assert match in err, err

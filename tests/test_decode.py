"""Deployment decoding on the tiny model: selection, token counting as in TRL, the JSONL round trip into eval,
resumable pools, run directories, the chat path, the vLLM backend's interface (faked), and bad input."""

import json
import math
import shutil
import sys
import types

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from iama.backends import GenerationSettings, HFBackend  # noqa: E402
from iama.config import parse_model_arg  # noqa: E402
from iama.data import collect_prompts  # noqa: E402
from iama.decode import decode, parse_reward_args  # noqa: E402
from iama.evaluate import evaluate  # noqa: E402
from iama.pools import build_rewards, read_pool, sample_pool  # noqa: E402

REWARDS = {"short": "length:4:16", "long": "length:12:16"}
PROMPTS = ["the day is good", "tell me a story", "what is time ?", "say something happy", "i think so",
           "we like people", "go see the day", "very bad time"]


@pytest.fixture(scope="module")
def tiny():
    from iama.models import load_model

    torch.set_num_threads(1)
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def backend(tiny):
    return HFBackend(*tiny, batch_size=64)


def test_candidates_are_cut_after_the_first_eos_and_counted_with_it(backend):
    samples = backend.generate(PROMPTS[:4], 8, GenerationSettings(max_new_tokens=16), seed=0)
    assert [len(s) for s in samples] == [8] * 4
    eos = set(backend.eos_ids)
    flat = [c for s in samples for c in s]
    assert any(c["finished"] for c in flat) and any(not c["finished"] for c in flat)  # the test sees both kinds
    for c in flat:
        assert c["num_tokens"] == len(c["ids"]) >= 1
        assert not eos & set(c["ids"][:-1])  # no EOS before the end: cut at the first one
        if c["finished"]:
            assert c["ids"][-1] in eos  # ... and the EOS is counted, as TRL's completion_ids do
        else:
            assert c["num_tokens"] == 16
    # the length reward sees those ids: -((|y| - 4) / 16)^2 with |y| = num_tokens
    fn = build_rewards([{"name": "short", "reward": "length:4:16"}], backend.tokenizer)["short"]
    values = fn(prompts=[""] * len(flat), completions=[c["text"] for c in flat],
                completion_ids=[c["ids"] for c in flat])
    np.testing.assert_allclose(values, [-((c["num_tokens"] - 4) / 16) ** 2 for c in flat])


def test_generation_is_seeded(backend):
    s = GenerationSettings(max_new_tokens=8)
    a = backend.generate(PROMPTS[:2], 3, s, seed=5)
    b = backend.generate(PROMPTS[:2], 3, s, seed=5)
    c = backend.generate(PROMPTS[:2], 3, s, seed=6)
    assert [x["ids"] for s_ in a for x in s_] == [x["ids"] for s_ in b for x in s_]
    assert [x["ids"] for s_ in a for x in s_] != [x["ids"] for s_ in c for x in s_]


@pytest.mark.parametrize("algorithm,pick", [("bon:4", np.argmax), ("won:4", np.argmin)])
def test_decode_selects_by_the_chosen_reward_and_round_trips_into_eval(tmp_path, algorithm, pick):
    out = tmp_path / "decoded.jsonl"
    records = decode(PROMPTS, "tiny-gpt2", REWARDS, algorithm=algorithm, select_by="long", out=out,
                     max_new_tokens=16, seed=3, progress=False)
    assert len(records) == len(PROMPTS)
    lines = read_pool(out)
    assert [r["prompt"] for r in lines] == PROMPTS
    for r in lines:
        assert len(r["candidates"]) == 4 and r["algorithm"] == algorithm and r["select_by"] == "long"
        scores = [c["scores"]["long"] for c in r["candidates"]]
        assert r["selected"] == int(pick(scores))
        assert r["response"] == r["candidates"][r["selected"]]["text"]
        assert set(r["candidates"][0]["scores"]) == {"short", "long"}
    # the decode file is eval input: a pool of M = N = 4, evaluated under the deployed algorithm
    report = evaluate(pools=[out], out=tmp_path / "eval", plots=False, bootstrap=50, algorithms=["bon", "won"])
    long = np.array([[c["scores"]["long"] for c in r["candidates"]] for r in lines])
    fam = algorithm.split(":")[0]
    curve = report["models"]["tiny-gpt2"]["values"]["long"][fam]
    assert curve["n"] == [1, 2, 3, 4]
    kernel = np.max if fam == "bon" else np.min
    assert curve["mean"][-1] == pytest.approx(kernel(long, axis=1).mean())  # N = M: the pool's max / min
    assert curve["mean"][0] == pytest.approx(long.mean())
    assert report["criteria"][1]["algorithm"] == algorithm
    # what was selected is what the value at N = 4 averages
    chosen = np.array([r["candidates"][r["selected"]]["scores"]["long"] for r in lines])
    assert chosen.mean() == pytest.approx(curve["mean"][-1])


def test_soft_best_of_n_decodes_and_is_evaluated_as_its_family(tmp_path):
    out = tmp_path / "soft.jsonl"
    records = decode(PROMPTS[:4], "tiny-gpt2", REWARDS, algorithm="soft_bon:3:0.05", select_by="short", out=out,
                     max_new_tokens=16, seed=1, progress=False)
    assert all(0 <= r["selected"] < 3 and r["algorithm"] == "soft_bon:3:0.05" for r in records)
    report = evaluate(pools=[out], out=tmp_path / "eval", plots=False, bootstrap=20)
    curve = report["models"]["tiny-gpt2"]["values"]["short"]["soft_bon:0.05"]
    assert curve["n"] == [1, 2, 3]
    short = np.array([[c["scores"]["short"] for c in r["candidates"]] for r in records])
    assert curve["mean"][0] == pytest.approx(short.mean())
    assert short.max(1).mean() + 1e-12 >= curve["mean"][-1] >= short.mean() - 1e-12


def test_decode_from_a_run_directory_uses_its_criteria_and_generation_settings(tmp_path):
    from iama.models import resolve_model

    run = tmp_path / "my-run"
    shutil.copytree(resolve_model("tiny-gpt2"), run / "final")
    config = {"model": "tiny-gpt2", "criteria": [{"name": "len", "reward": "length:6:8", "algorithm": "bon:2",
                                                  "weight": 1.0}],
              "trl": {"max_completion_length": 5, "temperature": 1.0}}
    (run / "final" / "iama_config.yaml").write_text(yaml.safe_dump(config))
    spec = parse_model_arg(str(run))
    assert spec.label == "my-run" and spec.model.endswith("final") and spec.config.criteria[0].name == "len"
    assert parse_model_arg(f"mine={run}").label == "mine"
    records = decode(PROMPTS[:3], str(run), algorithm="bon:3", progress=False)
    assert all(c["num_tokens"] <= 5 for r in records for c in r["candidates"])  # the run's max_completion_length
    assert records[0]["model"] == "my-run" and records[0]["select_by"] == "len"
    assert records[0]["settings"]["max_new_tokens"] == 5
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="no final/ model"):
        parse_model_arg(str(unfinished))


def test_pool_sampling_resumes_where_it_stopped(tmp_path, backend, monkeypatch):
    criteria = [{"name": "short", "reward": "length:4:16", "algorithm": "bon:2", "weight": 1.0}]
    rewards = build_rewards(criteria, backend.tokenizer)
    settings = GenerationSettings(max_new_tokens=8)
    small = HFBackend(backend.model, backend.tokenizer, batch_size=16)  # 4 prompts per call at M = 4
    fresh = sample_pool(small, PROMPTS, criteria, rewards, m=4, settings=settings, seed=0, label="x",
                        progress=False)
    path = tmp_path / "pool.jsonl"
    sample_pool(small, PROMPTS[:4], criteria, rewards, m=4, settings=settings, seed=0, label="x", path=path,
                progress=False)  # "killed" after the first half
    seen = []
    original = small.generate
    monkeypatch.setattr(small, "generate", lambda prompts, *a, **k: seen.extend(prompts) or original(prompts, *a, **k))
    resumed = sample_pool(small, PROMPTS, criteria, rewards, m=4, settings=settings, seed=0, label="x", path=path,
                          progress=False)
    assert seen == PROMPTS[4:]  # only what was missing
    assert resumed == fresh  # and the same draws as an uninterrupted run
    assert [r["prompt"] for r in read_pool(path)] == PROMPTS
    with pytest.raises(ValueError, match="other settings \\(m differ"):
        sample_pool(small, PROMPTS, criteria, rewards, m=8, settings=settings, seed=0, label="x", path=path,
                    progress=False)
    with pytest.raises(ValueError, match="model_fingerprint differ"):  # another model under the same label
        sample_pool(small, PROMPTS, criteria, rewards, m=4, settings=settings, seed=0, label="x", path=path,
                    progress=False, model_arg="tiny-gpt2")


def test_model_fingerprint_changes_when_the_weights_do(tmp_path):
    import os

    from iama.pools import model_fingerprint

    (tmp_path / "model.safetensors").write_bytes(b"12345")
    (tmp_path / "config.json").write_text("{}")
    before = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == before and model_fingerprint("tiny-gpt2") == "tiny-gpt2"
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(tmp_path) != before


def test_chat_template_path_gives_conversational_prompts_and_completions(tiny):
    model, tok = tiny
    chat_tok = tok.__class__.from_pretrained(tok.name_or_path) if tok.name_or_path else None
    if chat_tok is None:
        pytest.skip("tokenizer cannot be reloaded")
    chat_tok.padding_side, chat_tok.pad_token = "left", tok.pad_token
    chat_tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                              "{% if add_generation_prompt %}assistant : {% endif %}")
    b = HFBackend(model, chat_tok, batch_size=8)
    assert b.chat
    ids = b.prompt_ids(["the day"])[0]
    assert ids == chat_tok.apply_chat_template([{"role": "user", "content": "the day"}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
    seen = {}

    def spy(prompts, completions, completion_ids=None, **kw):
        seen.update(prompts=prompts, completions=completions)
        return [float(len(i)) for i in completion_ids]

    criteria = [{"name": "spy", "reward": spy}]
    records = sample_pool(b, ["the day"], criteria, {"spy": spy}, m=2, settings=GenerationSettings(max_new_tokens=4),
                          label="chat", progress=False)
    assert seen["prompts"][0] == [{"role": "user", "content": "the day"}]
    assert seen["completions"][0][0]["role"] == "assistant"
    assert records[0]["settings"]["chat_template"] is True
    assert records[0]["criteria"][0]["reward"] == "spy"


def test_vllm_backend_uses_the_documented_interface(monkeypatch, tiny):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            calls.setdefault("params", []).append(kw)
            self.n = kw["n"]

    class Out:
        def __init__(self, ids, reason):
            self.text, self.token_ids, self.finish_reason = "x" * len(ids), ids, reason

    class LLM:
        def __init__(self, model, **kw):
            calls["llm"] = dict(model=model, **kw)

        def get_tokenizer(self):
            return tiny[1]

        def generate(self, prompts, params, use_tqdm=False):
            calls["generate"] = prompts
            assert len(params) == len(prompts)
            n = params[0].n
            return [types.SimpleNamespace(outputs=[Out([5, 0], "stop")] * (n - 1) + [Out([5, 6, 7], "length")])
                    for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    criteria = [{"name": "short", "reward": "length:2:4", "algorithm": "bon:3"}]
    records = decode(["a", "b"], "tiny-gpt2", {"short": "length:2:4"}, algorithm="bon:3", backend="vllm",
                     max_new_tokens=3, temperature=0.7, seed=11, progress=False)
    assert calls["generate"] == ["a", "b"]  # no chat template: llm.generate on strings
    p = calls["params"][0]
    assert (p["n"], p["max_tokens"], p["temperature"], p["top_k"], p["top_p"]) == (3, 3, 0.7, -1, 1.0)
    assert len({q["seed"] for q in calls["params"]}) == 2  # a seed per prompt
    assert calls["llm"]["seed"] == 11
    r = records[0]
    assert [c["num_tokens"] for c in r["candidates"]] == [2, 2, 3]
    assert [c["finished"] for c in r["candidates"]] == [True, True, False]
    assert r["selected"] == 0  # length 2 hits the target; ties go to the first
    assert criteria  # the spec above is what decode normalised


def test_vllm_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="pip install"):
        decode(["a"], "tiny-gpt2", {"short": "length:2:4"}, algorithm="bon:2", backend="vllm", progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(algorithm="bestof:4"), "unknown algorithm"),
    (dict(algorithm="tilted:0.1"), "not an N-sample algorithm"),
    (dict(algorithm="bon:2", select_by="nope"), "select_by 'nope'"),
    (dict(algorithm="bon:2", backend="tpu"), "unknown backend"),
    (dict(algorithm="bon:2", temperature=0.0), "temperature must be > 0"),
])
def test_bad_decode_input_is_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        decode(["the day"], "tiny-gpt2", REWARDS, progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_nan_reward_is_one_line():
    def bad(prompts, completions, **kw):
        return [math.nan] * len(completions)

    with pytest.raises(ValueError, match="reward 'bad' returned nan") as e:
        decode(["the day"], "tiny-gpt2", {"bad": bad}, algorithm="bon:2", max_new_tokens=4, progress=False)
    assert "\n" not in str(e.value)


def test_eval_refuses_n_above_m_before_sampling(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"criteria": [{"name": "s", "reward": "length:4:16", "algorithm": "bon:8"}]}))
    with pytest.raises(ValueError, match="M=4 .* N=8") as e:
        evaluate(["tiny-gpt2"], config=cfg, m=4, out=tmp_path / "o", progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown algorithm"):
        evaluate(["tiny-gpt2"], config=cfg, m=8, algorithms=["best"], out=tmp_path / "o", progress=False)


def test_collect_prompts():
    from iama.data import load_prompts

    assert collect_prompts(["a", " "], None) == ["a"]
    assert collect_prompts(["a"], "builtin", limit=2, offset=3) == ["a"] + load_prompts(limit=5)[3:]
    with pytest.raises(ValueError, match="no prompts"):
        collect_prompts([], None)


def test_parse_reward_args():
    assert parse_reward_args(["a=length:4:8", "sentiment"]) == {"a": "length:4:8", "sentiment": "sentiment"}
    with pytest.raises(ValueError, match="twice"):
        parse_reward_args(["a=x", "a=y"])


def test_eval_end_to_end_on_the_tiny_model_saves_pools_and_a_report(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"criteria": [
        {"name": "short", "reward": "length:4:16", "algorithm": "bon:2", "weight": 0.5},
        {"name": "long", "reward": "length:12:16", "algorithm": "bon:2", "weight": 0.5}],
        "aggregator": "min", "max_completion_length": 16}))
    out = tmp_path / "eval"
    report = evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                      progress=False, kl=True)
    assert report["setup"]["generation"]["max_new_tokens"] == 16  # from the config's TRL field
    assert sorted(p.name for p in (out / "pools").iterdir()) == ["base.jsonl", "other.jsonl"]
    assert json.loads((out / "report.json").read_text())["reference"] == "base"
    for name in ("values_vs_n.png", "objective_vs_n.png", "pareto.png", "lengths.png", "win_rates.png"):
        assert (out / name).is_file()
    v = report["models"]["other"]["values"]
    expected = np.minimum(v["short"]["bon"]["mean"], v["long"]["bon"]["mean"])  # aggregator: min
    np.testing.assert_allclose(report["models"]["other"]["objective"]["mean"], expected)
    # the same weights under two labels: KL(other || base) from other's pool is zero
    assert report["kl"]["reference"] == "base" and list(report["kl"]["models"]) == ["other"]
    assert report["kl"]["models"]["other"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert "## KL to the reference" in (out / "report.md").read_text()
    # the report is remade from the saved pools alone (criteria and aggregator saved in them), same numbers
    again = evaluate(pools=[out / "pools" / "base.jsonl", out / "pools" / "other.jsonl"], out=tmp_path / "again",
                     bootstrap=100, plots=False)
    assert again["models"]["other"]["objective"]["mean"] == report["models"]["other"]["objective"]["mean"]
    assert again["effective_n"] == report["effective_n"]
    # run again on the same pools: the KL comes from OUT/kl.json, with no forward pass; a changed pool is redone
    import iama.kl

    calls = []
    real_pool_kl = iama.kl.pool_kl
    monkeypatch.setattr(iama.kl, "pool_kl", lambda *a, **k: calls.append(1) or real_pool_kl(*a, **k))
    rerun = evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                     progress=False, kl=True, plots=False)
    assert calls == [] and rerun["kl"] == report["kl"]
    saved = json.loads((out / "kl.json").read_text())
    saved["other"]["key"] = "a pool drawn before"
    (out / "kl.json").write_text(json.dumps(saved))
    assert evaluate(["base=tiny-gpt2", "other=tiny-gpt2"], config=cfg, limit=6, m=4, out=out, bootstrap=100,
                    progress=False, kl=True, plots=False)["kl"] == report["kl"]
    assert calls == [1]


def test_pool_texts_with_unicode_line_separators_round_trip(tmp_path):
    from iama.pools import write_pool

    text = "one\u2028two\x85three\u2029four\x0bfive\r\nsix"  # str.splitlines would cut each of these
    record = {"prompt": "p\u2028q", "model": "m",
              "candidates": [{"text": text, "num_tokens": 3, "scores": {"a": 1.0}}]}
    write_pool(tmp_path / "pool.jsonl", [record, record])
    back = read_pool(tmp_path / "pool.jsonl")
    assert len(back) == 2 and back[0]["candidates"][0]["text"] == text and back[1]["prompt"] == "p\u2028q"

"""Generation backends on the tiny model: token counting as in TRL (cut after the first EOS, counted with it),
seeding, the chat template path, and the vLLM backend's interface (faked)."""

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from iama.backends import GenerationSettings, HFBackend  # noqa: E402
from iama.decode import decode  # noqa: E402
from iama.pools import build_rewards, sample_pool  # noqa: E402

from conftest import PROMPTS  # noqa: E402


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

"""Pools: sampling resumes where it stopped with the same draws, a model's fingerprint, and texts that survive the
JSONL round trip."""

import pytest

torch = pytest.importorskip("torch")

from iama.backends import GenerationSettings, HFBackend  # noqa: E402
from iama.pools import build_rewards, model_fingerprint, read_pool, sample_pool, write_pool  # noqa: E402

from conftest import PROMPTS  # noqa: E402


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

    (tmp_path / "model.safetensors").write_bytes(b"12345")
    (tmp_path / "config.json").write_text("{}")
    before = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == before and model_fingerprint("tiny-gpt2") == "tiny-gpt2"
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(tmp_path) != before

def test_pool_texts_with_unicode_line_separators_round_trip(tmp_path):
    text = "one\u2028two\x85three\u2029four\x0bfive\r\nsix"  # str.splitlines would cut each of these
    record = {"prompt": "p\u2028q", "model": "m",
              "candidates": [{"text": text, "num_tokens": 3, "scores": {"a": 1.0}}]}
    write_pool(tmp_path / "pool.jsonl", [record, record])
    back = read_pool(tmp_path / "pool.jsonl")
    assert len(back) == 2 and back[0]["candidates"][0]["text"] == text and back[1]["prompt"] == "p\u2028q"


def test_score_completions_is_the_one_scoring_path():
    """Pools and CTRL's calibration score through score_completions: one call per reward, TRL's keywords
    (completion_ids only when there are any, a column only for a reward that names it), and one line naming the
    reward for a wrong count or a non-finite score."""
    import pytest

    from iama.pools import score_completions

    calls = []

    def plain(prompts, completions):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    def with_ids(prompts, completions, completion_ids, answer):
        return [float(len(i)) + float(a) for i, a in zip(completion_ids, answer)]

    out = score_completions(["p", "p"], ["ab", "abc"], {"plain": plain})
    assert out == {"plain": [2.0, 3.0]} and calls == [2]
    out = score_completions(["p", "p"], ["ab", "abc"], {"ids": with_ids}, completion_ids=[[1], [1, 2]],
                            columns={"answer": ["1", "2"], "unused": [0, 0]})
    assert out == {"ids": [2.0, 4.0]}
    with pytest.raises(ValueError, match="reward 'short' must return one number per completion: it returned 1 "):
        score_completions(["p", "p"], ["a", "b"], {"short": lambda prompts, completions: [1.0]})
    with pytest.raises(ValueError, match="reward 'bad' returned nan for the completion 'b'"):
        score_completions(["p", "p"], ["a", "b"], {"bad": lambda prompts, completions: [1.0, None]})

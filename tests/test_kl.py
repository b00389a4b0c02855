"""The KL of a model to its reference from its own pool (iama.kl), pinned by exact enumeration on the tiny model:
with at most two new tokens every completion can be listed, so log-likelihoods must sum to one and the exact KL
is a finite sum."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from iama.backends import GenerationSettings, HFBackend  # noqa: E402
from iama.kl import completion_logprobs, plain_sampling, pool_kl  # noqa: E402
from iama.models import tiny_gpt2  # noqa: E402

PROMPT = "tell me a story"


@pytest.fixture(scope="module")
def backends():
    torch.set_num_threads(1)
    return HFBackend(*tiny_gpt2(0)), HFBackend(*tiny_gpt2(1))


def all_completions(backend):
    """Every completion of at most two tokens: [eos], and [a, b] for a != eos (b = eos ends it, else cut)."""
    eos, vocab = backend.eos_ids[0], len(backend.tokenizer)
    return [[eos]] + [[a, b] for a in range(vocab) if a != eos for b in range(vocab)]


def test_likelihoods_of_all_completions_sum_to_one(backends):
    policy, _ = backends
    seqs = all_completions(policy)
    lp = completion_logprobs(policy, [PROMPT] * len(seqs), seqs, batch_size=512)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)


def test_batching_and_padding_do_not_change_likelihoods(backends):
    policy, _ = backends
    rng = np.random.default_rng(0)
    prompts = ["tell me a story", "the day is good and very happy", "go"] * 3
    comps = [rng.integers(1, len(policy.tokenizer), size=rng.integers(1, 9)).tolist() for _ in prompts]
    one = completion_logprobs(policy, prompts, comps, batch_size=1)
    np.testing.assert_allclose(completion_logprobs(policy, prompts, comps, batch_size=4), one, atol=1e-5)


def test_pool_kl_is_unbiased_for_the_exact_kl(backends):
    policy, reference = backends
    seqs = all_completions(policy)
    lp = completion_logprobs(policy, [PROMPT] * len(seqs), seqs, batch_size=512)
    lq = completion_logprobs(reference, [PROMPT] * len(seqs), seqs, batch_size=512)
    exact = float(np.sum(np.exp(lp) * (lp - lq)))
    assert exact > 0.05  # two different random models
    settings = GenerationSettings(max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0)
    cands = policy.generate([PROMPT], 2000, settings, seed=0)[0]
    # 50 "prompts" (the same one) of 40 draws each: the per-prompt estimates are i.i.d., unbiased for `exact`
    records = [{"prompt": PROMPT, "candidates": cands[i:i + 40]} for i in range(0, 2000, 40)]
    per_prompt = pool_kl(records, policy, reference)
    se = per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))
    assert abs(per_prompt.mean() - exact) < 4 * se
    assert pool_kl(records[:3], policy, policy) == pytest.approx(np.zeros(3), abs=1e-6)  # KL to itself


def test_pool_without_token_ids_is_refused(backends):
    policy, reference = backends
    with pytest.raises(ValueError, match="no token ids"):
        pool_kl([{"prompt": PROMPT, "candidates": [{"text": "go", "num_tokens": 1}]}], policy, reference)


def test_plain_sampling_only():
    assert plain_sampling({"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None, "repetition_penalty": 1.0})
    assert not plain_sampling({"temperature": 0.7})
    assert not plain_sampling({"top_k": 50})
    assert not plain_sampling({"top_p": 0.9})

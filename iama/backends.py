"""Generation backends: M sampled completions per prompt from a model, as TRL's GRPOTrainer draws them.

Generation matches TRL's GRPOTrainer, so that what is evaluated or deployed is the distribution that was
trained: a fresh GenerationConfig (do_sample, temperature, top_p, top_k=0 i.e. off, min_p, repetition_penalty;
the model's own generation_config sampling defaults are not used), the chat template with
add_generation_prompt=True when the tokenizer has one (plain tokenisation otherwise), and completion ids cut
after the first EOS token, *including* it (any of the tokenizer's and the model's EOS ids). num_tokens is the
length of those ids, and the rewards get them as `completion_ids`, as in training; texts are decoded with
skip_special_tokens=True, and a conversational prompt gets conversational completions, as TRL does.

A backend has `name`, `tokenizer`, `chat` (whether prompts go through the chat template), `batch_size` and
`generate(prompts, n, settings, seed)`; iama.pools samples and scores pools with any object that has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig

BACKENDS = ("hf", "vllm")


@dataclass
class GenerationSettings:
    """Sampling settings; the defaults are TRL GRPOConfig's, except max_new_tokens (TRL: 256)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off, as in TRL (Hugging Face's own default would be 50)
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if int(self.max_new_tokens) != self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        self.max_new_tokens, self.top_k = int(self.max_new_tokens), int(self.top_k)
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)

    @classmethod
    def from_run_config(cls, config: TrainConfig | None, **overrides) -> GenerationSettings:
        """Settings from a training config's TRL fields (what the run sampled with), then the non-None overrides."""
        trl = config.trl if config is not None else {}
        values = {}
        for ours, theirs in [("max_new_tokens", "max_completion_length"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                             ("repetition_penalty", "repetition_penalty")]:
            if trl.get(theirs) is not None:
                values[ours] = trl[theirs]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _conversation(prompt):
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class HFBackend:
    """Hugging Face `generate`: all M candidates of a batch of prompts in one call (num_return_sequences=M)."""

    name = "hf"

    def __init__(self, model, tokenizer=None, *, dtype=None, device=None, batch_size: int = 256):
        import torch

        from .models import has_chat_template, load_model

        if isinstance(model, (str, Path)):
            model, tokenizer = load_model(str(model), dtype=dtype)
        elif tokenizer is None:
            raise ValueError("HFBackend needs the tokenizer with a model object")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat = has_chat_template(tokenizer)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos = [tokenizer.eos_token_id, *eos]
        self.eos_ids = eos  # as TRL: every EOS id the model declares ends a completion
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)

    def prompt_ids(self, prompts) -> list[list[int]]:
        """Token ids of each prompt as TRL builds them: chat template + generation prompt, or plain text."""
        if self.chat:
            out = self.tokenizer.apply_chat_template([_conversation(p) for p in prompts], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
            return [list(ids) for ids in out["input_ids"]]
        texts = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
        return [list(ids) for ids in self.tokenizer(text=texts)["input_ids"]]

    def generate(self, prompts, n: int, settings: GenerationSettings, seed: int) -> list[list[dict]]:
        """For each prompt, n candidates {text, ids, num_tokens, finished}."""
        import torch
        from transformers import GenerationConfig

        ids = self.prompt_ids(prompts)
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=True, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, min_p=settings.min_p,
            repetition_penalty=settings.repetition_penalty, num_return_sequences=n, pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.eos_ids,
        )
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        completion = out[:, width:].cpu()
        is_eos = torch.isin(completion, torch.tensor(self.eos_ids, dtype=completion.dtype))
        has_eos = is_eos.any(dim=1)
        end = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, completion.shape[1])  # through the first EOS
        rows = [completion[i, : int(end[i])].tolist() for i in range(completion.shape[0])]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        flat = [{"text": t, "ids": r, "num_tokens": len(r), "finished": bool(f)}
                for t, r, f in zip(texts, rows, has_eos.tolist())]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]  # generate keeps each prompt's n together


class VLLMBackend:
    """vLLM's offline engine, same interface: `LLM(model=...)`, `SamplingParams(n=M, ...)`, `llm.chat` for a
    tokenizer with a chat template (add_generation_prompt=True), else `llm.generate`. vLLM's token_ids include
    the EOS token that ended a completion, as the HF backend's do. Needs `pip install vllm` (and a GPU)."""

    name = "vllm"

    def __init__(self, model, *, dtype=None, seed: int = 0, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError:
            raise ValueError("backend 'vllm' needs the vllm package: pip install 'iama[vllm]'") from None
        from .models import has_chat_template, resolve_model

        self.llm = LLM(model=resolve_model(model), dtype=dtype or "auto", seed=seed, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = has_chat_template(self.tokenizer)
        self.batch_size = 1 << 30  # vLLM schedules its own batches

    def generate(self, prompts, n: int, settings: GenerationSettings, seed: int) -> list[list[dict]]:
        from vllm import SamplingParams

        # one seed per prompt: prompts must not share random numbers (the intervals assume independent prompts)
        params = [SamplingParams(n=n, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                 top_p=settings.top_p, top_k=settings.top_k or -1, min_p=settings.min_p or 0.0,
                                 repetition_penalty=settings.repetition_penalty, seed=(seed + i) % (1 << 63))
                  for i in range(len(prompts))]
        if self.chat:
            outputs = self.llm.chat([_conversation(p) for p in prompts], params, add_generation_prompt=True,
                                    use_tqdm=False)
        else:
            outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[{"text": o.text, "ids": list(o.token_ids), "num_tokens": len(o.token_ids),
                  "finished": o.finish_reason == "stop"} for o in request.outputs] for request in outputs]


def make_backend(model, backend: str = "hf", *, dtype=None, device=None, batch_size: int = 256, seed: int = 0):
    if backend == "hf":
        return HFBackend(model, dtype=dtype, device=device, batch_size=batch_size)
    if backend == "vllm":
        return VLLMBackend(model, dtype=dtype, seed=seed)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

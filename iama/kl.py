"""KL of a model to its reference, estimated from the model's own pool (what InfAlign plots win rate against).

    KL(pi || ref) = E_x E_{y ~ pi(.|x)} [ log pi(y|x) - log ref(y|x) ]

A pool drawn by plain sampling (temperature 1, no top-p, top-k, min-p or repetition penalty) holds draws from
pi itself, and keeps each candidate's token ids, so the estimate needs no sampling: one forward pass of each
model over the pool. The mean over a prompt's M candidates is unbiased for that prompt's KL; prompts are
independent, so the interval is mean +- z * SE over prompts. It is the KL of completions as generated: cut at
max_new_tokens when they did not end, with their EOS when they did.
"""

from __future__ import annotations

import numpy as np


def plain_sampling(settings: dict | None) -> bool:
    """Whether a pool drawn with these generation settings holds draws from the model's own distribution."""
    s = settings or {}
    return (float(s.get("temperature", 1.0)) == 1.0 and float(s.get("top_p", 1.0)) == 1.0
            and int(s.get("top_k") or 0) == 0 and not s.get("min_p")
            and float(s.get("repetition_penalty") or 1.0) == 1.0)


def completion_logprobs(backend, prompts, completions, batch_size: int = 16) -> np.ndarray:
    """log p(y | x) of each completion's token ids under `backend.model` (an HFBackend), summed over its tokens.

    prompts: one per completion (a string or chat messages, tokenised as in generation)."""
    import torch

    from .data import prompt_key

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    keys = [prompt_key(p) for p in prompts]
    first = dict(zip(keys, prompts))  # each distinct prompt is tokenised once
    prompt_ids = dict(zip(first, backend.prompt_ids(list(first.values()))))
    pad = backend.tokenizer.pad_token_id or 0
    out = np.zeros(len(completions))
    model = backend.model
    for start in range(0, len(completions), batch_size):
        rows = [(prompt_ids[k], list(c)) for k, c in
                zip(keys[start:start + batch_size], completions[start:start + batch_size])]
        # prompts left-padded so that every completion starts at position `lp`: the LM head and the log-softmax over
        # the vocabulary then run on the completion positions only; position ids skip the padding
        lp, lc = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
        if lc == 0:
            continue
        ids = torch.tensor([[pad] * (lp - len(p)) + p + c + [pad] * (lc - len(c)) for p, c in rows],
                           device=backend.device)
        mask = torch.tensor([[0] * (lp - len(p)) + [1] * (len(p) + len(c)) + [0] * (lc - len(c)) for p, c in rows],
                            device=backend.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = torch.arange(lp - 1, lp + lc - 1, device=backend.device)  # the logits at t predict token t + 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, lp:, None])[..., 0]  # (B, lc)
            in_completion = torch.arange(lc, device=backend.device)[None, :] < torch.tensor(
                [len(c) for _, c in rows], device=backend.device)[:, None]
            out[start:start + len(rows)] = (token_lp * in_completion).sum(-1).cpu().numpy()
    return out


def pool_kl(records, policy, reference, batch_size: int = 16) -> np.ndarray:
    """Per prompt, the mean over its candidates of log pi(y|x) - log ref(y|x): shape (P,).

    records: the policy's pool records, each candidate with its token `ids`; policy, reference: HFBackends."""
    prompts, completions, owner = [], [], []
    for i, r in enumerate(records):
        for c in r["candidates"]:
            if "ids" not in c:
                raise ValueError("the pool's candidates have no token ids (pools written before ids were kept); "
                                 "sample it again to estimate the KL")
            prompts.append(r["prompt"])
            completions.append(c["ids"])
            owner.append(i)
    diff = (completion_logprobs(policy, prompts, completions, batch_size)
            - completion_logprobs(reference, prompts, completions, batch_size))
    return np.bincount(owner, weights=diff, minlength=len(records)) / np.bincount(owner, minlength=len(records))

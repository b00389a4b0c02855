"""The KL's forward passes (iama.kl.completion_logprobs): the LM head on the completion positions only, against the
head on every position (the earlier implementation, kept here as the baseline).

It draws one pool as `iama sweep` evaluates (SmolLM2-135M-Instruct, builtin:grim's held-out prompts, 8 samples of
at most 32 tokens), then times both on the same samples side by side, `--repeats` times each, and checks that they
agree.

    python benchmarks/kl_logprobs.py --out benchmarks/results/kl_logprobs-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.data import prompt_key
from iama.backends import GenerationSettings, HFBackend
from iama.data import collect_prompts
from iama.kl import completion_logprobs
from iama.utils import atomic_write_json, machine_info


def every_position(backend, prompts, completions, batch_size=16) -> np.ndarray:
    """The baseline: right-padded rows, logits at every position, the completion's read from them."""
    keys = [prompt_key(p) for p in prompts]
    first = dict(zip(keys, prompts))
    prompt_ids = dict(zip(first, backend.prompt_ids(list(first.values()))))
    pad = backend.tokenizer.pad_token_id or 0
    out = np.zeros(len(completions))
    for start in range(0, len(completions), batch_size):
        rows = [(prompt_ids[k], list(c)) for k, c in
                zip(keys[start:start + batch_size], completions[start:start + batch_size])]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.tensor([p + c + [pad] * (width - len(p) - len(c)) for p, c in rows])
        mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in rows])
        with torch.inference_mode():
            logits = backend.model(input_ids=ids, attention_mask=mask).logits
        for i, (p, c) in enumerate(rows):
            if c:
                lp = torch.log_softmax(logits[i, len(p) - 1:len(p) + len(c) - 1].float(), dim=-1)
                out[start + i] = float(lp.gather(-1, ids[i, len(p):len(p) + len(c)].unsqueeze(-1)).sum())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=20, help="held-out builtin:grim prompts")
    ap.add_argument("-M", "--m", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    backend = HFBackend(args.model)
    prompts = list(collect_prompts(source="builtin:grim", limit=args.prompts, offset=160))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0)
    pools = backend.generate(prompts, args.m, settings, seed=0)
    flat_prompts = [p for p, cands in zip(prompts, pools) for _ in cands]
    flat = [c["ids"] for cands in pools for c in cands]

    times = {"every position (before)": [], "completion positions (now)": []}
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        for name, fn in (("every position (before)", every_position),
                         ("completion positions (now)", completion_logprobs)):
            t0 = time.perf_counter()
            values = fn(backend, flat_prompts, flat, batch_size=16)
            times[name].append(time.perf_counter() - t0)
            if name.startswith("every"):
                before = values
            else:
                now = values
    diff = float(np.max(np.abs(before - now)))
    median = {k: statistics.median(v) for k, v in times.items()}
    base = median["every position (before)"]
    print(f"{len(flat)} completions ({args.prompts} prompts x {args.m}), {args.model}, {args.threads} threads; "
          f"median of {args.repeats}")
    print("| implementation | seconds | ratio |\n|---|---|---|")
    for k, v in median.items():
        print(f"| {k} | {v:.2f} | {v / base:.2f}x |")
    print(f"largest difference in log p(y|x): {diff:.2e}")
    if args.out:
        atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "machine": machine_info(),
                                     "completions": len(flat), "seconds": times, "median": median,
                                     "ratio": median["completion positions (now)"] / base,
                                     "max_abs_difference": diff})


if __name__ == "__main__":
    main()

"""The IAMA paper's length task on tiny-gpt2, end to end (about two minutes): IAMA's lengths split towards the
two targets, GRPO's collapse between them, and IAMA's best-of-4 objective is the better one."""

from pathlib import Path

import numpy as np
import pytest

from iama import BestOfN
from iama.config import load_config
from iama.backends import GenerationSettings, HFBackend
from iama.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def lengths(model_dir, prompts, n=64):
    backend = HFBackend(str(model_dir))
    samples = backend.generate(prompts, n, GenerationSettings(max_new_tokens=32), seed=0)
    return np.array([[c["num_tokens"] for c in row] for row in samples])  # (prompts, n)


def shape(L):
    near = lambda t: (np.abs(L - t) <= 3).mean(1)  # noqa: E731
    short, long, mid = near(8), near(24), near(16)
    bo4 = BestOfN(4)
    objective = 0.5 * bo4.estimate_value(-((L - 8) / 32) ** 2) + 0.5 * bo4.estimate_value(-((L - 24) / 32) ** 2)
    return dict(short=short.mean(), long=long.mean(), mid=mid.mean(), bimodal=int(((short > mid) & (long > mid)).sum()),
                objective=objective.mean())


@pytest.mark.slow
def test_iama_splits_and_grpo_collapses(tmp_path):
    from iama.data import load_prompts

    prompts = load_prompts("builtin:tiny", limit=16)
    result = {}
    for name in ["length-tiny", "length-tiny-baseline"]:
        cfg = load_config(ROOT / "iama" / "configs" / f"{name}.yaml",
                          [f"output_dir={tmp_path / name}", "report_to=none"])
        result[name] = shape(lengths(train(cfg), prompts))
    iama, grpo = result["length-tiny"], result["length-tiny-baseline"]
    print(result)
    # IAMA: more mass near each target than at the compromise, prompt by prompt
    assert iama["short"] > 1.3 * iama["mid"] and iama["long"] > 1.3 * iama["mid"], iama
    assert iama["bimodal"] >= 10, iama
    # GRPO on the mean reward: one mode, between the targets
    assert grpo["mid"] > 0.7 and grpo["short"] < 0.1 and grpo["long"] < 0.1, grpo
    # what the model is for: best-of-4 decoding serves both criteria
    assert iama["objective"] > grpo["objective"] + 0.02, (iama, grpo)

"""examples/trl_script.py: the Python path for TRL users, run as a user runs it (tiny model, a local dataset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_trl_script_trains_with_lora_and_writes_a_model_card(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "prompts"
    data.mkdir()
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "iama" / "prompts" / "tiny.jsonl").read_text().splitlines()]
    (data / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:16]))
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "examples" / "trl_script.py"), "--model_name_or_path", str(tiny_gpt2_dir),
           "--dataset_name", str(data), "--reward_funcs", "length:8:32", "length:24:32",
           "--algorithms", "bon:4", "won:2", "--weights", "0.7", "0.3", "--num_generations", "8",
           "--per_device_train_batch_size", "8", "--max_completion_length", "32", "--max_steps", "2",
           "--learning_rate", "1e-4", "--use_peft", "--lora_r", "4", "--lora_target_modules", "all-linear",
           "--output_dir", str(out), "--report_to", "none", "--logging_steps", "1", "--use_cpu", "--save_strategy", "no",
           "--activation_checkpointing", "false"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()  # merged
    card = (final / "README.md").read_text()
    assert "| `bon:4` | 0.7 |" in card and "| `won:2` | 0.3 |" in card and "steps: 2" in card
    assert f"base_model: {tiny_gpt2_dir}" in card
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 3 and "iama/objective" in rows[0]  # the CSV log comes with the trainer


def test_the_readmes_python_blocks_run_as_written(tiny_gpt2_dir, tmp_path):
    """The ```python blocks of README.md in order, in one fresh interpreter, as a reader pastes them into one
    session; the TRL one on the tiny built-in model for two steps instead of SmolLM2 for forty."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    trl = [i for i, b in enumerate(blocks) if "IAMATrainer(" in b]
    assert len(blocks) >= 3 and len(trl) == 1
    assert '"smollm2-135m-instruct"' in blocks[trl[0]] and "max_steps=40" in blocks[trl[0]]
    blocks[trl[0]] = blocks[trl[0]].replace('"smollm2-135m-instruct"', '"tiny-gpt2"').replace("max_steps=40",
                                                                                             "max_steps=2")
    result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "runs" / "x" / "final" / "README.md").read_text()
    assert "base_model: tiny-gpt2" in card and "scale_rewards=group" in card and "- steps: 2" in card

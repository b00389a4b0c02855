"""CTRL through the real pipeline: `iama calibrate` fills the store with the keys the trainer looks up, and a
calibrated, transformed criterion trains; its rewards are Phi(C) of the raw ones."""

import csv
import json
import math
from pathlib import Path

import numpy as np

from iama.cli import main
from iama.config import load_config
from iama.ctrl import CalibrationStore, calibrate, calibrated_reward

ROOT = Path(__file__).resolve().parents[1]


def test_calibrate_then_train_on_the_transformed_reward(tmp_path):
    store_path = tmp_path / "calibration.json"
    overrides = [
        "criteria=[{name: pos, reward: sentiment, algorithm: 'bon:4', calibrated: true, transform: 'exp:3'}]",
        f"calibration={store_path}", "max_prompts=4", "max_steps=1", "per_device_train_batch_size=16",
        f"output_dir={tmp_path / 'run'}", "scale_rewards=none", "beta=0.1",
    ]
    cfg = load_config(ROOT / "iama" / "configs" / "length-tiny.yaml", overrides)
    store = calibrate(cfg, k=8, batch_size=2, progress=False)
    assert len(store.rewards["pos"]) == 4 and all(len(v) == 8 for v in store.rewards["pos"].values())
    again = calibrate(cfg, k=8, batch_size=2, progress=False)  # resumable: nothing left to sample
    assert again.rewards == CalibrationStore.load(store_path).rewards

    assert main(["train", str(ROOT / "iama" / "configs" / "length-tiny.yaml"), *overrides]) == 0
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r.get("loss")]
    mean = float(rows[0]["rewards/pos/mean"])
    assert math.exp(0) <= mean <= math.exp(3)  # Phi(C) = exp(3 C) with C in [0, 1]
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["model_type"] == "gpt2"


def test_reference_samples_calibrate_to_uniform():
    """Fresh samples from the reference distribution itself get calibrated rewards uniform on [0, 1]."""
    rng = np.random.default_rng(0)
    k = 9  # with K references, K * C is uniform on {0, 1, ..., K} for a continuous reward
    reference = rng.normal(size=(2000, k))
    fresh = rng.normal(size=(2000, 50))
    c = calibrated_reward(reference, fresh).ravel()
    assert abs(c.mean() - 0.5) < 0.01
    freq = np.bincount(np.rint(c * k).astype(int), minlength=k + 1) / c.size
    np.testing.assert_allclose(freq, 1 / (k + 1), atol=0.01)

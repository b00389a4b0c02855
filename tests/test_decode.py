"""Deployment decoding on the tiny model: selection, the JSONL round trip into eval, run directories, and bad
input."""

import math
import shutil

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from iama.config import parse_model_arg  # noqa: E402
from iama.decode import decode, parse_reward_args  # noqa: E402
from iama.evaluate import evaluate  # noqa: E402
from iama.pools import read_pool  # noqa: E402

REWARDS = {"short": "length:4:16", "long": "length:12:16"}
PROMPTS = ["the day is good", "tell me a story", "what is time ?", "say something happy", "i think so",
           "we like people", "go see the day", "very bad time"]


@pytest.mark.parametrize("algorithm,pick", [("bon:4", np.argmax), ("won:4", np.argmin)])
def test_decode_selects_by_the_chosen_reward_and_round_trips_into_eval(tmp_path, algorithm, pick):
    out = tmp_path / "decoded.jsonl"
    records = decode(PROMPTS, "tiny-gpt2", REWARDS, algorithm=algorithm, select_by="long", out=out,
                     max_new_tokens=16, seed=3, progress=False)
    assert len(records) == len(PROMPTS)
    lines = read_pool(out)
    assert [r["prompt"] for r in lines] == PROMPTS
    for r in lines:
        assert len(r["candidates"]) == 4 and r["algorithm"] == algorithm and r["select_by"] == "long"
        scores = [c["scores"]["long"] for c in r["candidates"]]
        assert r["selected"] == int(pick(scores))
        assert r["response"] == r["candidates"][r["selected"]]["text"]
        assert set(r["candidates"][0]["scores"]) == {"short", "long"}
    # the decode file is eval input: a pool of M = N = 4, evaluated under the deployed algorithm
    report = evaluate(pools=[out], out=tmp_path / "eval", plots=False, bootstrap=50, algorithms=["bon", "won"])
    long = np.array([[c["scores"]["long"] for c in r["candidates"]] for r in lines])
    fam = algorithm.split(":")[0]
    curve = report["models"]["tiny-gpt2"]["values"]["long"][fam]
    assert curve["n"] == [1, 2, 3, 4]
    kernel = np.max if fam == "bon" else np.min
    assert curve["mean"][-1] == pytest.approx(kernel(long, axis=1).mean())  # N = M: the pool's max / min
    assert curve["mean"][0] == pytest.approx(long.mean())
    assert report["criteria"][1]["algorithm"] == algorithm
    # what was selected is what the value at N = 4 averages
    chosen = np.array([r["candidates"][r["selected"]]["scores"]["long"] for r in lines])
    assert chosen.mean() == pytest.approx(curve["mean"][-1])


def test_soft_best_of_n_decodes_and_is_evaluated_as_its_family(tmp_path):
    out = tmp_path / "soft.jsonl"
    records = decode(PROMPTS[:4], "tiny-gpt2", REWARDS, algorithm="soft_bon:3:0.05", select_by="short", out=out,
                     max_new_tokens=16, seed=1, progress=False)
    assert all(0 <= r["selected"] < 3 and r["algorithm"] == "soft_bon:3:0.05" for r in records)
    report = evaluate(pools=[out], out=tmp_path / "eval", plots=False, bootstrap=20)
    curve = report["models"]["tiny-gpt2"]["values"]["short"]["soft_bon:0.05"]
    assert curve["n"] == [1, 2, 3]
    short = np.array([[c["scores"]["short"] for c in r["candidates"]] for r in records])
    assert curve["mean"][0] == pytest.approx(short.mean())
    assert short.max(1).mean() + 1e-12 >= curve["mean"][-1] >= short.mean() - 1e-12


def test_decode_from_a_run_directory_uses_its_criteria_and_generation_settings(tmp_path):
    from iama.models import resolve_model

    run = tmp_path / "my-run"
    shutil.copytree(resolve_model("tiny-gpt2"), run / "final")
    config = {"model": "tiny-gpt2", "criteria": [{"name": "len", "reward": "length:6:8", "algorithm": "bon:2",
                                                  "weight": 1.0}],
              "trl": {"max_completion_length": 5, "temperature": 1.0}}
    (run / "final" / "iama_config.yaml").write_text(yaml.safe_dump(config))
    spec = parse_model_arg(str(run))
    assert spec.label == "my-run" and spec.model.endswith("final") and spec.config.criteria[0].name == "len"
    assert parse_model_arg(f"mine={run}").label == "mine"
    records = decode(PROMPTS[:3], str(run), algorithm="bon:3", progress=False)
    assert all(c["num_tokens"] <= 5 for r in records for c in r["candidates"])  # the run's max_completion_length
    assert records[0]["model"] == "my-run" and records[0]["select_by"] == "len"
    assert records[0]["settings"]["max_new_tokens"] == 5
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="no final/ model"):
        parse_model_arg(str(unfinished))


@pytest.mark.parametrize("kwargs,match", [
    (dict(algorithm="bestof:4"), "unknown algorithm"),
    (dict(algorithm="tilted:0.1"), "not an N-sample algorithm"),
    (dict(algorithm="bon:2", select_by="nope"), "select_by 'nope'"),
    (dict(algorithm="bon:2", backend="tpu"), "unknown backend"),
    (dict(algorithm="bon:2", temperature=0.0), "temperature must be > 0"),
])
def test_bad_decode_input_is_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        decode(["the day"], "tiny-gpt2", REWARDS, progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_nan_reward_is_one_line():
    def bad(prompts, completions, **kw):
        return [math.nan] * len(completions)

    with pytest.raises(ValueError, match="reward 'bad' returned nan") as e:
        decode(["the day"], "tiny-gpt2", {"bad": bad}, algorithm="bon:2", max_new_tokens=4, progress=False)
    assert "\n" not in str(e.value)


def test_parse_reward_args():
    assert parse_reward_args(["a=length:4:8", "sentiment"]) == {"a": "length:4:8", "sentiment": "sentiment"}
    with pytest.raises(ValueError, match="twice"):
        parse_reward_args(["a=x", "a=y"])



"""The verl plugin (iama.integrations.verl), checked against verl itself: its plugin loading, its own
`compute_advantage` dispatcher, its reward step (reward manager, agent loop batching, extract_reward) as
RayPPOTrainer.fit runs it, and the v1 trainer's advantage step on a TransferQueue.

verl lives in an environment of its own, `.venv-verl` at the repository root (IAMA_VERL_VENV moves it):

    python -m venv .venv-verl && .venv-verl/bin/pip install torch==<the main torch> -e '.[verl,dev]'

Tests marked `@in_verl_env` run directly where verl is installed. Run from the main environment, the first of
them builds .venv-verl when it is missing (about 3 minutes, once), runs this file there with pytest, and each
then reports its own result from that run. The environment is reused as long as what it was installed from (the
torch pin and pyproject.toml's dependencies with the verl and dev extras) is unchanged; when that changes, pip
installs the new requirements into it once. If the environment cannot be built (no network, say), they skip
and say why; IAMA_REQUIRE_VERL=1 turns that skip into a failure.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

from iama import BestOfN, Criterion, Objective, Sampling, SoftBestOfN, Tilted, WorstOfN

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / os.environ.get("IAMA_VERL_VENV", ".venv-verl")
HAVE_VERL = importlib.util.find_spec("verl") is not None
PLUGIN = "iama.integrations.verl"
NAMES = ["iama", "iama_bon", "iama_soft_bon", "iama_tilted", "iama_won"]
BUILD_TIMEOUT, RUN_TIMEOUT = 1800, 1200
# the variables through which verl loads plugins; the inner run and the route probes start from none of them
VERL_VARS = ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")

if HAVE_VERL:
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import iama.integrations.verl as plugin


# ---------------------------------------------------------------------------------------------------------------
# running the verl tests in .venv-verl from the main environment


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in VERL_VARS + ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _python():
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


PROBE = ("import json, importlib.metadata as md, verl, iama, pytest; print(json.dumps({'verl': verl.__version__, "
         "'iama': iama.__file__, 'plugins': {e.name: e.value for e in md.entry_points(group='verl.plugins')}}))")


def _probe():
    """What .venv-verl holds (verl's version, where iama comes from, verl's plugins), or None if it is unusable."""
    if not _python().exists():
        return None
    out = subprocess.run([str(_python()), "-c", PROBE], check=False, capture_output=True, text=True, env=_clean_env(),
                         timeout=300)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _current(info):
    """The environment runs this checkout's iama, with the entry point that pyproject.toml declares now."""
    return Path(info["iama"]).resolve().is_relative_to(ROOT) and info["plugins"].get("iama") == PLUGIN


def _pip(*args, timeout=BUILD_TIMEOUT):
    out = subprocess.run([str(_python()), "-m", "pip", "install", "--quiet", *args], check=False, capture_output=True,
                         text=True, env=_clean_env(), timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        tail = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()][-6:]
        raise RuntimeError(f"pip install {' '.join(args)} failed: " + " | ".join(tail))


def _requirements() -> tuple[str, str]:
    """The torch requirement .venv-verl is installed with, and a digest of everything it is installed from."""
    # torch in the same pip command as verl, pinned to the main environment's: alone, pip may pull another build
    torch_req = os.environ.get("IAMA_VERL_TORCH") or "torch==" + importlib.metadata.version("torch").split("+")[0]
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib

        project = tomllib.loads(text)["project"]
        text = json.dumps([project["dependencies"], project["optional-dependencies"]["verl"],
                           project["optional-dependencies"]["dev"]])
    except ImportError:  # Python 3.10: the whole file, so an unrelated edit costs one pip run, never a stale env
        pass
    return torch_req, hashlib.sha256(f"{torch_req}\n{text}".encode()).hexdigest()


def ensure_verl_env():
    """Build .venv-verl if missing or broken, install into it again if its requirements changed, refresh this
    checkout's metadata in it if stale; return its python.
    One build at a time per environment path: concurrent test runs of one checkout wait for each other."""
    lock = Path(tempfile.gettempdir()) / f"iama-verl-{hashlib.sha1(str(VENV).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        return _ensure_verl_env()


def _ensure_verl_env():
    info = _probe()
    torch_req, digest = _requirements()
    stamp = VENV / "iama-requirements.sha256"  # the digest it was last installed from
    if info is None or not stamp.is_file() or stamp.read_text() != digest:
        if not _python().exists():
            out = subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False, capture_output=True,
                                 text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"python -m venv {VENV.name} failed: {(out.stderr or out.stdout).strip()[-500:]}")
        _pip(torch_req, "-e", f"{ROOT}[verl,dev]")
        info = _probe()
        if info is None:
            raise RuntimeError(f"{VENV.name} was installed but `import verl, iama, pytest` fails in it")
        stamp.write_text(digest)
    if not _current(info):
        _pip("--no-deps", "-e", str(ROOT), timeout=600)
        info = _probe()
        if info is None or not _current(info):
            raise RuntimeError(f"{VENV.name} does not run this checkout's iama with its verl.plugins entry point")
    return _python()


def _results(xml_path):
    """{test function name: [(test id, outcome, message)]} from a junit XML report."""
    results = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = (child.get("message") or "") + "\n" + (child.text or "")
                break
        results.setdefault(name.split("[")[0], []).append((name, outcome, message.strip()))
    return results


@pytest.fixture(scope="session")
def verl_results(tmp_path_factory):
    """Build or reuse .venv-verl and run this file's verl tests in it, once per session."""
    try:
        python = ensure_verl_env()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        reason = f"verl environment {VENV.name} unavailable: {e}"
        if os.environ.get("IAMA_REQUIRE_VERL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    xml_path = tmp_path_factory.mktemp("verl") / "verl.xml"
    out = subprocess.run([str(python), "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
                          f"--junitxml={xml_path}"], check=False, capture_output=True, text=True, cwd=ROOT,
                         env=_clean_env(), timeout=RUN_TIMEOUT)
    if not xml_path.exists():
        pytest.fail(f"pytest in {VENV.name} wrote no report (exit {out.returncode}):\n{out.stdout[-3000:]}"
                    f"{out.stderr[-3000:]}")
    return _results(xml_path), out.stdout


def in_verl_env(fn):
    """Where verl is installed, the test itself; elsewhere, a stand-in that reports the test's result from the
    run in .venv-verl (all its parametrizations together). Put it above any parametrize."""
    if HAVE_VERL:
        return fn

    def stand_in(verl_results):
        results, log = verl_results
        cases = results.get(fn.__name__)
        if not cases:
            pytest.fail(f"{fn.__name__} did not run in {VENV.name}:\n{log[-3000:]}")
        failed = [(name, message) for name, outcome, message in cases if outcome == "failed"]
        if failed:
            pytest.fail(f"in {VENV.name}, {len(failed)} of {len(cases)} failed:\n" +
                        "\n\n".join(f"{name}: {message[:1500]}" for name, message in failed[:5]))
        if all(outcome == "skipped" for _, outcome, _ in cases):
            pytest.skip(f"skipped in {VENV.name}: {cases[0][2][:300]}")

    stand_in.__name__ = stand_in.__qualname__ = fn.__name__
    stand_in.__doc__ = fn.__doc__
    return pytest.mark.slow(stand_in)  # its fixture may build .venv-verl: not in `make test-quick`


# ---------------------------------------------------------------------------------------------------------------
# the core never needs verl


def test_importing_iama_does_not_import_verl():
    code = ("import sys, iama, iama.integrations; "
            "print(sorted(m for m in sys.modules if m == 'verl' or m.startswith('verl.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAVE_VERL, reason="verl is installed here")
def test_plugin_without_verl_says_how_to_install_it():
    with pytest.raises(ImportError, match=re.escape("pip install 'iama[verl]'")):
        importlib.import_module(PLUGIN)


def test_pyproject_declares_the_entry_point_and_the_extra():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["verl.plugins"] == {"iama": PLUGIN}
    assert any(req.startswith("verl[verl-core]") for req in project["optional-dependencies"]["verl"])


# ---------------------------------------------------------------------------------------------------------------
# loading routes: verl's own import, in a fresh process each


REGISTERED = ("import json, sys, verl; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; "
              "print(json.dumps({'names': sorted(k for k in R if k.startswith('iama')), "
              "'modules': sorted({R[k].__module__ for k in R if k.startswith('iama')}), "
              f"'imported': {PLUGIN!r} in sys.modules}}))")


def _registered(**env):
    out = subprocess.run([sys.executable, "-c", REGISTERED], check=False, capture_output=True, text=True,
                         env=_clean_env(**env), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@in_verl_env
def test_registered_through_the_entry_point():
    """`import verl` loads the plugin through the verl.plugins entry point: by default, and when named."""
    eps = {e.name: e.value for e in importlib.metadata.entry_points(group="verl.plugins")}
    assert eps.get("iama") == PLUGIN
    for env in ({}, {"VERL_USE_EXTERNAL_PLUGINS": "iama"}):
        assert _registered(**env) == {"names": NAMES, "modules": [PLUGIN], "imported": True}, env


@in_verl_env
def test_registered_through_verl_use_external_modules():
    """With entry points off, VERL_USE_EXTERNAL_MODULES alone loads it."""
    got = _registered(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES=PLUGIN)
    assert got == {"names": NAMES, "modules": [PLUGIN], "imported": True}


@in_verl_env
def test_not_registered_with_external_plugins_none():
    assert _registered(VERL_USE_EXTERNAL_PLUGINS="none") == {"names": [], "modules": [], "imported": False}


@in_verl_env
def test_importing_the_plugin_again_is_harmless():
    import importlib

    importlib.reload(plugin)
    plugin.register()
    assert all(getattr(ADV_ESTIMATOR_REGISTRY[name], "_iama_plugin", False) for name in NAMES)


# ---------------------------------------------------------------------------------------------------------------
# verl's dispatcher against the objective


def _batch(rewards, rng, shuffle, dtype="float32", width=16):
    """A verl batch on the CPU for groups of rewards (a list of (M_g, m) arrays; column 0 is verl's reward, the
    others go to non_tensor_batch as crit1, crit2, ...): outcome reward on each response's last valid token,
    a uid per group. Returns the DataProto, the rows' (group, position), the response mask and the fields."""
    rows = [(g, j) for g, r in enumerate(rewards) for j in range(len(r))]
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    lengths = rng.integers(1, width + 1, size=len(rows))
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.float32)
    tlr = np.zeros((len(rows), width), dtype=np.float64)
    tlr[np.arange(len(rows)), lengths - 1] = [rewards[g][j, 0] for g, j in rows]
    uids = np.array([f"prompt-{g:03d}-{g * 7919 % 1000}" for g, _ in rows], dtype=object)
    fields = {f"crit{i}": np.array([rewards[g][j, i] for g, j in rows], dtype=np.float64)
              for i in range(1, rewards[0].shape[1])}
    data = DataProto.from_dict(
        tensors={"token_level_rewards": torch.tensor(tlr, dtype=getattr(torch, dtype)),
                 "response_mask": torch.tensor(mask)},
        non_tensors={"uid": uids, **fields})
    return data, rows, mask, fields


def _rounded(rewards, dtype):
    """The rewards as the estimator sees them: verl's reward column through the batch's dtype."""
    out = [r.copy() for r in rewards]
    for r in out:
        r[:, 0] = r[:, 0].astype(dtype).astype(np.float64)
    return out


def _check(advantages, expected, rows, mask):
    """Each response's advantage on each of its tokens, 0 on padding; to 1e-6 (relative above 1)."""
    adv = np.asarray(advantages, dtype=np.float64)
    want = np.array([expected[g][j] for g, j in rows])[:, None] * mask
    err = np.abs(adv - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 1e-6, f"largest difference {err.max():.3g}"


def _groups(rng, sizes, criteria=1):
    """Random reward groups; the first is binary (ties, as verifiable rewards have), the rest continuous."""
    groups = [rng.uniform(-1, 1, size=(m, criteria)) for m in sizes]
    groups[0][:, 0] = rng.integers(0, 2, size=sizes[0])
    return groups


@pytest.fixture(scope="module")
def base_algorithm():
    """verl's own `algorithm` config (ppo_trainer.yaml), editable."""
    cfg = copy.deepcopy(_compose([]).algorithm)
    OmegaConf.set_struct(cfg, False)
    return cfg


def _compose(overrides):
    import verl
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"),
                               version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


CASES = [  # (adv_estimator, algorithm keys, the algorithm they mean)
    ("iama_bon", {"iama_n": 4}, BestOfN(4)),
    ("iama_won", {"iama_n": 4}, WorstOfN(4)),
    ("iama_soft_bon", {"iama_n": 4, "iama_temperature": 0.5}, SoftBestOfN(4, 0.5)),
    ("iama_tilted", {"iama_temperature": 0.3}, Tilted(0.3)),
    ("iama", {"iama_algorithm": "bon:2"}, BestOfN(2)),
    ("iama", {"iama_algorithm": "soft_bon:3:0.2"}, SoftBestOfN(3, 0.2)),
    ("iama", {"iama_algorithm": "sampling"}, Sampling()),
]


@in_verl_env
@pytest.mark.parametrize("estimator", ["unbiased", "plugin"])
@pytest.mark.parametrize("baseline", ["loo", "group_mean", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2].spec}")
def test_dispatcher_matches_objective(case, baseline, estimator, base_algorithm):
    """verl's compute_advantage with adv_estimator=iama*, on groups in order and shuffled (verl groups by uid),
    gives Objective(...)(rewards).advantages."""
    name, keys, algorithm = case
    rng = np.random.default_rng(len(name) + 10 * len(baseline) + 100 * len(estimator))
    groups = _groups(rng, [8] * 6)
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": name, "norm_adv_by_std_in_grpo": False, "iama_estimator": estimator,
                   "iama_baseline": baseline, **keys})
    objective = Objective([Criterion("reward", algorithm)], estimator=estimator, baseline=baseline,
                          scale_rewards="none")
    expected = objective(np.stack(_rounded(groups, np.float32))).advantages
    for shuffle in (False, True):
        data, rows, mask, _ = _batch(groups, rng, shuffle)
        out = compute_advantage(data, adv_estimator=name, config=config)
        _check(out.batch["advantages"], expected, rows, mask)
        assert torch.equal(out.batch["returns"], out.batch["advantages"])


@in_verl_env
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [None, "group", "batch", "none"])
def test_dispatcher_matches_objective_with_scaling(scale, dtype, base_algorithm):
    """Without iama_scale_rewards the scaling follows verl's norm_adv_by_std_in_grpo (true by default: 'group')."""
    rng = np.random.default_rng(7)
    groups = _groups(rng, [8] * 5)
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": "iama_bon", "iama_n": 4})
    if scale is not None:
        config.iama_scale_rewards = scale
    assert config.norm_adv_by_std_in_grpo is True
    objective = Objective([Criterion("reward", BestOfN(4))], scale_rewards=scale or "group")
    expected = objective(np.stack(_rounded(groups, getattr(np, dtype)))).advantages
    data, rows, mask, _ = _batch(groups, rng, shuffle=True, dtype=dtype)
    _check(compute_advantage(data, adv_estimator="iama_bon", config=config).batch["advantages"], expected, rows, mask)
    if scale is None:  # verl's switch off: no scaling
        config.norm_adv_by_std_in_grpo = False
        unscaled = Objective([Criterion("reward", BestOfN(4))], scale_rewards="none")
        expected = unscaled(np.stack(_rounded(groups, getattr(np, dtype))))
        advantages = compute_advantage(data, adv_estimator="iama_bon", config=config).batch["advantages"]
        _check(advantages, expected.advantages, rows, mask)


@in_verl_env
@pytest.mark.parametrize("norm", [False, True])
def test_bon_m_on_verl_against_verls_own_grpo_passk(norm, base_algorithm):
    """Pass@k's k = n case on verl, against verl's grpo_passk in the same batch. norm_adv_by_std_in_grpo off:
    iama's bon:M (scaling 'none') is exactly M times verl's; on (iama's default 'group'): the same support and
    sign, at magnitude sqrt(M - 1), so no advantage exceeds it (ties and 0/1 groups included)."""
    from verl.trainer.ppo.core_algos import compute_grpo_passk_outcome_advantage

    rng = np.random.default_rng(11)
    m = 8
    groups = _groups(rng, [m] * 6)
    groups[1][:, 0] = np.eye(m)[3]  # one success
    groups[2][:, 0] = 1.0  # all succeed: no signal
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": "iama_bon", "iama_n": m, "norm_adv_by_std_in_grpo": norm})
    data, _, mask, _ = _batch(groups, rng, shuffle=True, dtype="float64")
    ours = compute_advantage(data, adv_estimator="iama_bon", config=config).batch["advantages"].numpy()
    verls, _ = compute_grpo_passk_outcome_advantage(data.batch["token_level_rewards"], data.batch["response_mask"],
                                                     data.non_tensor_batch["uid"], config=config)
    verls = verls.numpy()
    if norm:
        np.testing.assert_allclose(ours, np.sqrt(m - 1) * np.sign(verls) * mask, atol=1e-9)
        assert np.abs(ours).max() <= np.sqrt(m - 1) + 1e-9
    else:
        np.testing.assert_allclose(ours, m * verls, atol=1e-9)


@in_verl_env
def test_groups_of_different_sizes(base_algorithm):
    """Groups of unequal size (dropped or failed rollouts) are estimated each from its own samples; a group too
    small for the leave-one-out baseline gets advantage 0, as in the objective."""
    rng = np.random.default_rng(3)
    groups = _groups(rng, [8, 5, 8, 4, 1])
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": "iama_bon", "iama_n": 4, "norm_adv_by_std_in_grpo": False})
    objective = Objective([Criterion("reward", BestOfN(4))], scale_rewards="none")
    expected = [objective(g[None]).advantages[0] if len(g) >= objective.min_group_size() else np.zeros(len(g))
                for g in _rounded(groups, np.float32)]
    data, rows, mask, _ = _batch(groups, rng, shuffle=True)
    _check(compute_advantage(data, adv_estimator="iama_bon", config=config).batch["advantages"], expected, rows, mask)
    assert np.all(expected[-1] == 0)


@in_verl_env
@pytest.mark.parametrize("aggregator", ["sum", "min", "smoothmin"])
def test_several_criteria_on_verl_reward(aggregator, base_algorithm):
    """Criteria without a `key` all read verl's reward: best-of-4 and plain sampling of one reward, say."""
    rng = np.random.default_rng(11)
    groups = _groups(rng, [8] * 6)
    criteria = [{"name": "best_of_4", "algorithm": "bon:4", "weight": 0.7},
                {"name": "one_sample", "algorithm": "sampling", "weight": 0.3}]
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": "iama", "iama_criteria": criteria, "iama_aggregator": aggregator,
                   "iama_gamma": 2.0, "norm_adv_by_std_in_grpo": False})
    objective = Objective([Criterion(**c) for c in criteria], aggregator=aggregator, gamma=2.0, scale_rewards="none")
    both = np.stack([np.repeat(g, 2, axis=1) for g in _rounded(groups, np.float32)])
    expected = objective(both).advantages
    data, rows, mask, _ = _batch(groups, rng, shuffle=True)
    _check(compute_advantage(data, adv_estimator="iama", config=config).batch["advantages"], expected, rows, mask)


def _per_criterion_config(base, aggregator):
    config = copy.deepcopy(base)
    config.update({"adv_estimator": "iama", "iama_aggregator": aggregator, "norm_adv_by_std_in_grpo": False,
                   "iama_criteria": [{"name": "helpful", "algorithm": "bon:4", "weight": 0.5, "key": "crit1"},
                                     {"name": "harmless", "algorithm": "won:4", "weight": 0.5, "key": "crit2"}]})
    objective = Objective([Criterion("helpful", "bon:4", 0.5), Criterion("harmless", "won:4", 0.5)],
                          aggregator=aggregator, scale_rewards="none")
    return config, objective


@in_verl_env
@pytest.mark.parametrize("aggregator", ["sum", "min", "smoothmin"])
def test_per_criterion_scores_when_verl_passes_them(aggregator, base_algorithm):
    """Given verl's non_tensor_batch (what verl hands its own 'gdpo' estimator), each criterion reads its field."""
    rng = np.random.default_rng(5)
    groups = _groups(rng, [8] * 6, criteria=3)
    config, objective = _per_criterion_config(base_algorithm, aggregator)
    expected = objective(np.stack(groups)[..., 1:]).advantages
    data, rows, mask, _ = _batch(groups, rng, shuffle=True)
    fn = ADV_ESTIMATOR_REGISTRY["iama"]
    advantages, _ = fn(token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
                       index=data.non_tensor_batch["uid"], config=config, non_tensor_batch=data.non_tensor_batch,
                       batch=data.batch)
    _check(advantages, expected, rows, mask)


@in_verl_env
def test_same_advantages_as_a_trl_config(base_algorithm):
    """A training config's objective (what `iama train` uses) and the same settings as verl keys, at their
    defaults otherwise, give the same advantages: the two paths share defaults (scaling by the group's std)."""
    from iama.config import build_objective, load_config

    cfg = load_config(criteria=[{"name": "short", "reward": "length:8:32", "algorithm": "bon:4", "weight": 0.5},
                                {"name": "long", "reward": "length:24:32", "algorithm": "won:2", "weight": 0.5}],
                      aggregator="smoothmin", gamma=3.0, num_generations=8)
    rng = np.random.default_rng(12)
    groups = _groups(rng, [cfg.num_generations] * 4, criteria=1 + len(cfg.criteria))
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": "iama", "iama_aggregator": cfg.aggregator, "iama_gamma": cfg.gamma,
                   "iama_estimator": cfg.estimator, "iama_baseline": cfg.baseline,
                   "iama_criteria": [{"name": c.name, "algorithm": c.algorithm.spec, "weight": c.weight,
                                      "key": f"crit{i + 1}"} for i, c in enumerate(cfg.criteria)]})
    expected = build_objective(cfg)(np.stack(groups)[..., 1:]).advantages
    data, rows, mask, _ = _batch(groups, rng, shuffle=True)
    advantages, _ = ADV_ESTIMATOR_REGISTRY["iama"](
        token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
        index=data.non_tensor_batch["uid"], config=config, non_tensor_batch=data.non_tensor_batch)
    _check(advantages, expected, rows, mask)


@in_verl_env
def test_hydra_overrides_reach_the_estimator():
    """The documented command-line form: `algorithm.adv_estimator=iama +algorithm.iama_...=...`."""
    cfg = _compose(["algorithm.adv_estimator=iama", "+algorithm.iama_algorithm=soft_bon:4:0.5",
                    "+algorithm.iama_estimator=plugin", "+algorithm.iama_baseline=loo",
                    "+algorithm.iama_scale_rewards=batch"])
    rng = np.random.default_rng(9)
    groups = _groups(rng, [8] * 4)
    objective = Objective([Criterion("reward", SoftBestOfN(4, 0.5))], estimator="plugin", scale_rewards="batch")
    data, rows, mask, _ = _batch(groups, rng, shuffle=True)
    out = compute_advantage(data, adv_estimator=cfg.algorithm.adv_estimator, config=cfg.algorithm)
    _check(out.batch["advantages"], objective(np.stack(_rounded(groups, np.float32))).advantages, rows, mask)
    listed = _compose(["algorithm.adv_estimator=iama", "+algorithm.iama_aggregator=smoothmin",
                       ('+algorithm.iama_criteria=[{name: a, algorithm: "bon:4", weight: 0.5},'
                        '{name: b, algorithm: "tilted:0.1", weight: 0.5, key: b}]')])
    objective, keys = plugin.objective_from_config("iama", listed.algorithm)
    assert [c.algorithm for c in objective.criteria] == [BestOfN(4), Tilted(0.1)] and keys == [None, "b"]
    assert objective.aggregator == "smoothmin" and objective.scale_rewards == "group"


@in_verl_env
@pytest.mark.parametrize("name, keys, message", [
    ("iama_bon", {"iama_baselne": "loo"}, "iama_baselne: not an iama key"),
    ("iama", {"iama_n": 4, "iama_algorithm": "bon:4"}, "iama_n is read by"),
    ("iama", {}, "exactly one of"),
    ("iama", {"iama_algorithm": "bon:4", "iama_criteria": [{"name": "a"}]}, "exactly one of"),
    ("iama", {"iama_algorithm": "best:4"}, "unknown algorithm"),
    ("iama", {"iama_criteria": [{"name": "a", "algorithm": "bon:4", "reward": "x"}]}, "unknown field"),
    ("iama_soft_bon", {"iama_n": 4}, "needs a temperature"),
    ("iama_bon", {"iama_baseline": "mean"}, "iama_baseline='mean'"),
    ("iama_bon", {"iama_n": 0}, "positive integer"),
    ("iama_bon", {"use_kl_in_reward": True}, "use_kl_in_reward=False"),
    ("iama_bon", {"iama_n": 16, "iama_estimator": "unbiased"}, "at least N=16"),
    ("iama", {"iama_algorithm": "maj:4"}, "votes on each sample's answer, and verl gives the estimator none"),
])
def test_bad_settings_fail_clearly(name, keys, message, base_algorithm):
    rng = np.random.default_rng(0)
    data, _, _, _ = _batch(_groups(rng, [8] * 2), rng, shuffle=False)
    config = copy.deepcopy(base_algorithm)
    config.update({"adv_estimator": name, **keys})
    with pytest.raises(ValueError, match=re.escape(message)):
        compute_advantage(data, adv_estimator=name, config=config)


@in_verl_env
def test_missing_uid_fails_clearly():
    data = DataProto.from_dict(tensors={"token_level_rewards": torch.zeros(4, 3), "response_mask": torch.ones(4, 3)})
    with pytest.raises(ValueError, match="uid"):
        compute_advantage(data, adv_estimator="iama_bon", config=OmegaConf.create({"iama_n": 2}))


# ---------------------------------------------------------------------------------------------------------------
# several criteria from compute_score's dict, through verl's own training step


SCORE_FROM_JSON = '''
import json


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return json.loads(solution_str)  # the tests' responses decode to the dict they should score
'''


class _Vocabulary:
    """A tokenizer for verl's reward manager: token id i decodes to texts[i] (one token says the whole text)."""

    def __init__(self):
        self.texts = []

    def encode(self, text):
        self.texts.append(text)
        return len(self.texts) - 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.texts[int(i)] for i in ids[:1])


def _compose_with_score(tmp_path, overrides, source=SCORE_FROM_JSON):
    path = tmp_path / "reward.py"
    path.write_text(source)
    return _compose([*overrides, f"reward.custom_reward_function.path={path}",
                     "reward.custom_reward_function.name=compute_score"])


def _fit_batch(cfg, texts, rng):
    """The batch RayPPOTrainer.fit holds at its advantage step, built by verl's own functions: each response (groups
    of texts, one group per prompt, rollout.n each) scored by verl's reward manager with cfg's compute_score, the
    agent loop's _postprocess, the prompts' uids repeated and unioned as fit does, rows shuffled as _balance_batch
    does, then fit's reward step: extract_reward and the lines of its "adv" block. Returns the batch and each row's
    (group, position)."""
    import types
    import uuid

    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopWorker, _InternalAgentLoopOutput
    from verl.trainer.ppo.reward import extract_reward, load_reward_manager

    vocabulary = _Vocabulary()
    manager = load_reward_manager(cfg, vocabulary)
    prompt_len, width = 3, 6
    outputs = []
    for group in texts:
        for text in group:
            length = int(rng.integers(1, width + 1))
            response = torch.zeros(1, width, dtype=torch.int64)
            response[0, 0] = vocabulary.encode(text)
            mask = (torch.arange(width) < length).long()[None]
            attention = torch.cat([torch.ones(1, prompt_len, dtype=torch.int64), mask], dim=1)
            one = DataProto.from_dict(
                tensors={"prompts": torch.ones(1, prompt_len, dtype=torch.int64), "responses": response,
                         "attention_mask": attention},
                non_tensors={"data_source": np.array(["test"], dtype=object),
                             "reward_model": np.array([{"ground_truth": ""}], dtype=object),
                             "extra_info": np.array([{}], dtype=object)})
            # what RewardLoopWorker.compute_score runs, with a custom_reward_function
            result = manager.loop.run_until_complete(manager.run_single(one))
            outputs.append(_InternalAgentLoopOutput(
                prompt_ids=one.batch["prompts"], response_ids=response, response_mask=mask, attention_mask=attention,
                input_ids=torch.cat([one.batch["prompts"], response], dim=1),
                position_ids=torch.arange(prompt_len + width)[None], reward_score=result["reward_score"], num_turns=2,
                metrics=AgentLoopMetrics(), extra_fields={"reward_extra_info": result["reward_extra_info"]}))
    # the agent loop with its reward workers (reward_loop_worker_handles set), as fit's rollout returns it
    generated = AgentLoopWorker._postprocess(types.SimpleNamespace(reward_loop_worker_handles=[None]), outputs)
    n = cfg.actor_rollout_ref.rollout.n
    batch = DataProto.from_dict(tensors={"dummy_tensor": torch.zeros(len(texts), 1, dtype=torch.uint8)},
                                non_tensors={"uid": np.array([str(uuid.uuid4()) for _ in texts], dtype=object)})
    batch = batch.repeat(repeat_times=n, interleave=True).union(generated)
    rows = [(g, j) for g in range(len(texts)) for j in range(n)]
    order = rng.permutation(len(rows))
    batch.reorder(torch.as_tensor(order))
    reward_tensor, reward_extra_infos_dict = extract_reward(batch)
    # RayPPOTrainer.fit, "adv": (use_kl_in_reward is False: the plugin refuses it)
    batch.batch["token_level_scores"] = reward_tensor
    if reward_extra_infos_dict:
        batch.non_tensor_batch.update({k: np.array(v) for k, v in reward_extra_infos_dict.items()})
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    return batch, [rows[i] for i in order]


def _fit_advantage(cfg, batch):
    """RayPPOTrainer.fit's compute_advantage call, then its data metrics."""
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    plugin.take_metrics()  # none left from other tests
    batch = compute_advantage(batch, adv_estimator=cfg.algorithm.adv_estimator, gamma=cfg.algorithm.gamma,
                              lam=cfg.algorithm.lam, num_repeat=cfg.actor_rollout_ref.rollout.n,
                              norm_adv_by_std_in_grpo=cfg.algorithm.get("norm_adv_by_std_in_grpo", True),
                              config=cfg.algorithm)
    return batch, compute_data_metrics(batch=batch, use_critic=False)


MIXED = [{"name": "helpful", "algorithm": "bon:4", "weight": 0.5, "key": "helpful"},
         {"name": "harmless", "algorithm": "won:2", "weight": 0.3, "key": "harmless"},
         {"name": "score", "algorithm": "sampling", "weight": 0.2}]  # verl's own reward, compute_score's "score"


def _criteria_override(criteria):
    return "+algorithm.iama_criteria=" + json.dumps(criteria).replace('"', "")


def _scores(rng, groups, m):
    """Random reward dicts (score, helpful, harmless); the first group's helpful is 0/1 (ties)."""
    values = rng.uniform(-1, 1, size=(groups, m, 3))
    values[0, :, 1] = rng.integers(0, 2, size=m)
    return values, [[json.dumps({"score": v[0], "helpful": v[1], "harmless": v[2]}) for v in g] for g in values]


@in_verl_env
@pytest.mark.parametrize("aggregator", ["sum", "min"])
def test_criteria_from_compute_score_through_fit(aggregator, tmp_path):
    """compute_score returns several keys; verl's reward step and fit's compute_advantage, on uids repeated n times
    and shuffled, give Objective(...)(rewards).advantages (verl's 'score' through its float32 rm_scores), and verl's
    metrics carry each criterion's mean reward and its value under its algorithm."""
    m = 8
    cfg = _compose_with_score(tmp_path, ["algorithm.adv_estimator=iama", f"+algorithm.iama_aggregator={aggregator}",
                                         _criteria_override(MIXED), f"actor_rollout_ref.rollout.n={m}"])
    rng = np.random.default_rng(21)
    values, texts = _scores(rng, 5, m)
    batch, rows = _fit_batch(cfg, texts, rng)
    assert sorted(batch.meta_info["reward_extra_keys"]) == ["harmless", "helpful", "score"]
    batch, metrics = _fit_advantage(cfg, batch)
    rewards = np.stack([values[..., 1], values[..., 2], values[..., 0].astype(np.float32).astype(np.float64)], -1)
    objective = Objective([Criterion(c["name"], c["algorithm"], c["weight"]) for c in MIXED], aggregator=aggregator,
                          scale_rewards="group")
    expected = objective(rewards)
    _check(batch.batch["advantages"], expected.advantages, rows, batch.batch["response_mask"].numpy())
    for i, c in enumerate(objective.criteria):
        assert metrics[f"iama/{c.name}/reward"] == pytest.approx(rewards[..., i].mean(), abs=1e-12)
        assert metrics[f"iama/{c.name}/{c.algorithm.spec}"] == pytest.approx(expected.values[:, i].mean(), abs=1e-12)
    assert metrics["iama/objective"] == pytest.approx(expected.objective, abs=1e-12)
    assert metrics["iama/dropped_samples"] == 0 and "critic/score/mean" in metrics


def _bad_texts(rng, bad):
    values, texts = _scores(rng, 3, 4)
    texts[1][2] = texts[1][2].replace('"helpful": ', f'"helpful": {bad}, "was": ')
    return values, texts


@in_verl_env
@pytest.mark.parametrize("bad", ["NaN", "null", '"n/a"'])
def test_invalid_criterion_values_stop_or_drop(bad, tmp_path):
    """A compute_score key that is NaN, None or not a number: stops naming the criterion and key (iama train's
    default), or with iama_invalid_rewards=drop, drops the sample from its group and counts it."""
    criteria = [{"name": "helpful", "algorithm": "bon:2", "weight": 0.5, "key": "helpful"},
                {"name": "harmless", "algorithm": "won:2", "weight": 0.5, "key": "harmless"}]
    overrides = ["algorithm.adv_estimator=iama", _criteria_override(criteria), "actor_rollout_ref.rollout.n=4"]
    cfg = _compose_with_score(tmp_path, overrides)
    values, texts = _bad_texts(np.random.default_rng(4), bad)
    batch, rows = _fit_batch(cfg, texts, np.random.default_rng(5))
    with pytest.raises(ValueError, match=r"criterion 'helpful' \(compute_score's 'helpful'\) is NaN, None, inf or "
                                         r"not a number for 1 of 12 samples.*iama_invalid_rewards=drop"):
        _fit_advantage(cfg, batch)
    cfg = _compose_with_score(tmp_path, [*overrides, "+algorithm.iama_invalid_rewards=drop"])
    batch, rows = _fit_batch(cfg, texts, np.random.default_rng(5))
    batch, metrics = _fit_advantage(cfg, batch)
    values[1, 2, 1] = np.nan
    objective = Objective([Criterion(c["name"], c["algorithm"], c["weight"]) for c in criteria], scale_rewards="group")
    expected = objective(values[..., 1:])
    assert expected.dropped == 1 and metrics["iama/dropped_samples"] == 1
    _check(batch.batch["advantages"], expected.advantages, rows, batch.batch["response_mask"].numpy())


@in_verl_env
def test_missing_criterion_key_names_the_keys_compute_score_returned(tmp_path):
    """A criterion key that compute_score did not return: one error naming it and the keys there are."""
    criteria = [{"name": "helpful", "algorithm": "bon:2", "key": "helpfull"},
                {"name": "harmless", "algorithm": "won:2", "key": "harmlessness"}]
    cfg = _compose_with_score(tmp_path, ["algorithm.adv_estimator=iama", _criteria_override(criteria),
                                         "actor_rollout_ref.rollout.n=4"])
    batch, _ = _fit_batch(cfg, _scores(np.random.default_rng(1), 2, 4)[1], np.random.default_rng(2))
    with pytest.raises(ValueError, match=re.escape("read ['helpfull', 'harmlessness'] from compute_score's dict, "
                                                   "which has no such key: compute_score returned ['harmless', "
                                                   "'helpful', 'score']")):
        _fit_advantage(cfg, batch)


def _dispatchers():
    """Stand-ins for verl's compute_advantage: verl 0.9's (non_tensor_batch for 'gdpo' only) and one with
    verl-project/verl#7473 (non_tensor_batch and batch for every estimator that accepts them)."""
    import inspect

    from verl.trainer.ppo import core_algos

    def dispatcher(passes):
        def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True,
                              config=None):
            fn = core_algos.get_adv_estimator_fn(adv_estimator)
            kwargs = {"token_level_rewards": data.batch["token_level_rewards"],
                      "response_mask": data.batch["response_mask"], "config": config,
                      "index": data.non_tensor_batch["uid"]}
            accepts = inspect.signature(fn).parameters
            if passes and ("non_tensor_batch" in accepts or any(p.kind == p.VAR_KEYWORD for p in accepts.values())):
                kwargs.update(non_tensor_batch=data.non_tensor_batch, batch=data.batch)
            data.batch["advantages"], data.batch["returns"] = fn(**kwargs)
            return data

        return compute_advantage

    return {"verl 0.9": dispatcher(False), "verl#7473": dispatcher(True)}


@in_verl_env
@pytest.mark.parametrize("version", ["verl 0.9", "verl#7473"])
def test_dispatcher_patched_only_where_verl_lacks_non_tensor_batch(version, tmp_path, caplog):
    """The plugin patches a dispatcher that does not pass non_tensor_batch, once and logged once, and leaves one that
    does (#7473) alone; through either the keyed objective's advantages are exact; other estimators are verl's."""
    import logging
    import types

    original = _dispatchers()[version]
    stub = types.ModuleType("stub_ray_trainer")
    stub.compute_advantage = original
    patched = version == "verl 0.9"
    with caplog.at_level(logging.INFO, logger=plugin.__name__):
        assert plugin.patch_dispatcher(stub) is patched
        assert plugin.patch_dispatcher(stub) is patched
    assert (stub.compute_advantage is original) is not patched
    assert sum("patched stub_ray_trainer.compute_advantage" in r.getMessage() for r in caplog.records) == int(patched)
    cfg = _compose_with_score(tmp_path, ["algorithm.adv_estimator=iama", _criteria_override(MIXED[:2]),
                                         "actor_rollout_ref.rollout.n=4"])
    rng = np.random.default_rng(8)
    values, texts = _scores(rng, 3, 4)
    batch, rows = _fit_batch(cfg, texts, rng)
    out = stub.compute_advantage(batch, adv_estimator="iama", config=cfg.algorithm)
    objective = Objective([Criterion(c["name"], c["algorithm"], c["weight"]) for c in MIXED[:2]],
                          scale_rewards="group")
    _check(out.batch["advantages"], objective(values[..., 1:]).advantages, rows, batch.batch["response_mask"].numpy())
    grpo = stub.compute_advantage(batch, adv_estimator="grpo_passk", config=cfg.algorithm).batch["advantages"].clone()
    assert torch.equal(grpo, original(batch, adv_estimator="grpo_passk", config=cfg.algorithm).batch["advantages"])


@in_verl_env
def test_installed_verl_is_patched_as_its_dispatcher_needs():
    """On the installed verl: compute_advantage is patched exactly when it does not pass non_tensor_batch (verl
    0.9.1 does not), and everything that imported it by name (the v1 trainer's utils) holds the patched one."""
    from verl.trainer.ppo import metric_utils, ray_trainer
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1 import utils as v1_utils

    dispatcher = ray_trainer.compute_advantage
    original = getattr(dispatcher, "__wrapped__", dispatcher)
    assert plugin.passes_non_tensor_batch(original) is not None
    assert getattr(dispatcher, "_iama_patch", False) is not plugin.passes_non_tensor_batch(original)
    assert v1_utils.compute_advantage is dispatcher is compute_advantage
    assert trainer_base.compute_data_metrics is ray_trainer.compute_data_metrics is metric_utils.compute_data_metrics
    assert metric_utils.compute_data_metrics._iama_patch and trainer_base.PPOTrainer._compute_advantage._iama_patch
    assert plugin.PROBE not in ADV_ESTIMATOR_REGISTRY


PATCHED = ("import json, verl; from verl.trainer.ppo import ray_trainer as r; from verl.trainer.ppo.v1 import "
           "trainer_base as t, utils as u; print(json.dumps([getattr(f, '_iama_patch', False) for f in "
           "(r.compute_advantage, u.compute_advantage, t.compute_data_metrics, t.PPOTrainer._compute_advantage)]))")


@in_verl_env
def test_patches_applied_when_verl_loads_the_plugin():
    """In a fresh process, `import verl` loads the plugin and the plugin patches verl's trainer modules as they are
    imported later; with plugins off, verl stays as it is."""
    for env, want in (({}, [True] * 4), ({"VERL_USE_EXTERNAL_PLUGINS": "none"}, [False] * 4)):
        out = subprocess.run([sys.executable, "-c", PATCHED], check=False, capture_output=True, text=True,
                             env=_clean_env(**env), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == want, env


@pytest.fixture(scope="module")
def transfer_queue():
    """A local Ray cluster with verl's TransferQueue, which the v1 trainer keeps its batches in."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token file
        try:  # logical CPUs: TransferQueue's controller and storage units take one each
            ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
            tq.init()
        except Exception as e:  # noqa: BLE001 - the machine cannot run Ray: say so, as for a missing verl
            ray.shutdown()
            if os.environ.get("IAMA_REQUIRE_VERL") == "1":
                pytest.fail(f"Ray with TransferQueue did not start: {e}")
            pytest.skip(f"Ray with TransferQueue did not start: {e}")
        try:
            yield tq
        finally:
            tq.close()
            ray.shutdown()


@in_verl_env
@pytest.mark.parametrize("layout", ["agent loop", "colocated reward model"])
def test_criteria_through_the_v1_trainer(layout, transfer_queue, tmp_path):
    """verl's v1 trainer (trainer.use_v1, verl 0.9's default): samples stored in its TransferQueue as the agent loop
    stores them (compute_score's keys under extra_fields), or with the keys as fields of their own (a colocated
    reward model), uids shuffled, filled up with verl's no-op padding rows as its _balance_batch does; its own
    _compute_advantage gives the objective's advantages (the padding left out: smoothmin weighs the batch)."""
    import types

    from transfer_queue.metadata import KVBatchMeta
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1 import trainer_base
    from verl.utils import tensordict_utils as tu

    tq, m = transfer_queue, 4
    cfg = _compose(["algorithm.adv_estimator=iama", _criteria_override(MIXED), "+algorithm.iama_aggregator=smoothmin",
                    "+algorithm.iama_gamma=4", f"actor_rollout_ref.rollout.n={m}"])
    rng = np.random.default_rng(13)
    values = _scores(rng, 3, m)[0]
    fields, keys, rows = [], [], []
    for g, group in enumerate(values):
        for j, (score, helpful, harmless) in enumerate(group):
            length = int(rng.integers(1, 6))
            rm_scores = torch.zeros(length)
            rm_scores[-1] = score
            info = {"score": score, "helpful": helpful, "harmless": harmless}
            fields.append({"uid": f"{layout}-{g}", "response_mask": torch.ones(length, dtype=torch.int64),
                           "rm_scores": rm_scores,
                           "extra_fields": {"reward_extra_info": info} if layout == "agent loop" else {}})
            keys.append(f"{layout}-{g}_{j}_0")
            rows.append((g, j))
    tq.kv_batch_put(keys=keys, partition_id="train", fields=tu.list_of_dict_to_tensordict(fields))
    if layout != "agent loop":  # _compute_reward_colocate writes compute_score's keys as fields
        tq.kv_batch_put(keys=keys, partition_id="train", fields=tu.get_tensordict(
            {k: values[..., i].reshape(-1) for i, k in enumerate(["score", "helpful", "harmless"])}))
    order = rng.permutation(len(keys))
    batch = KVBatchMeta(partition_id="train", keys=[keys[i] for i in order],
                        tags=[{"seq_len": 8, "min_global_steps": 0, "max_global_steps": 0} for _ in order])
    batch = upsample_batch_to_divisible_size(batch, batch_multiple=16, eos_token_id=0)  # a whole group of padding
    assert [bool(tag.get("is_padding")) for tag in batch.tags] == [False] * len(keys) + [True] * m
    plugin.take_metrics()
    trainer_base.PPOTrainer._compute_advantage(types.SimpleNamespace(config=cfg), batch, {})
    got = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages"])["advantages"]
    advantages = np.array([a[0].item() if len(a) else 0.0 for a in got.unbind(0)])
    rewards = np.stack([values[..., 1], values[..., 2], values[..., 0].astype(np.float32).astype(np.float64)], -1)
    objective = Objective([Criterion(c["name"], c["algorithm"], c["weight"]) for c in MIXED], aggregator="smoothmin",
                          gamma=4.0, scale_rewards="group")
    expected = objective(rewards)
    _check(advantages[: len(keys), None], expected.advantages, [rows[i] for i in order], np.ones((len(keys), 1)))
    assert np.all(advantages[len(keys):] == 0)
    metrics = plugin.take_metrics()
    assert metrics["iama/helpful/bon:4"] == pytest.approx(expected.values[:, 0].mean(), abs=1e-12)
    assert metrics["iama/helpful/reward"] == pytest.approx(values[..., 1].mean(), abs=1e-12)
    assert metrics["iama/objective"] == pytest.approx(expected.objective, abs=1e-12)
    assert metrics["iama/dropped_samples"] == 0


# ---------------------------------------------------------------------------------------------------------------
# the scaling guide's verl command is a valid verl config for the plugin


def _doc_overrides():
    text = (ROOT / "docs" / "scaling.md").read_text()
    blocks = [b for b in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL) if "verl.trainer.main_ppo" in b]
    assert len(blocks) == 1, "docs/scaling.md should hold exactly one verl launch block"
    words = [w for w in shlex.split(blocks[0], comments=True) if w.strip()]
    start = words.index("verl.trainer.main_ppo") + 1
    return [os.path.expandvars(w) for w in words[start:]]


def _words(monkeypatch):
    """The guide's compute_score with a whitespace tokenizer standing in for the model's."""
    import transformers

    class Words:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": text.split()}

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Words())


@in_verl_env
def test_scaling_guide_verl_command_is_valid(monkeypatch, tmp_path):
    """The guide's verl command composes with verl's config and passes verl's validate_config; with the guide's
    compute_score (saved where the command looks for it), verl's reward step and fit's compute_advantage give the
    objective's advantages on the dict's two criteria."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "length_reward.py").write_text(_doc_python("def compute_score"))
    _words(monkeypatch)
    overrides = _doc_overrides()
    assert all("=" in w for w in overrides), [w for w in overrides if "=" not in w]
    cfg = _compose(overrides)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    algorithm = cfg.algorithm
    assert algorithm.adv_estimator in NAMES and not algorithm.use_kl_in_reward
    assert cfg.actor_rollout_ref.actor.use_kl_loss
    objective, keys = plugin.objective_from_config(algorithm.adv_estimator, algorithm)
    assert keys == ["short", "long"] and cfg.actor_rollout_ref.rollout.n >= objective.min_group_size()
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 250, size=(3, cfg.actor_rollout_ref.rollout.n))
    batch, rows = _fit_batch(cfg, [["word " * int(n) for n in group] for group in lengths], rng)
    batch, metrics = _fit_advantage(cfg, batch)
    rewards = np.stack([-(((lengths - target) / 256) ** 2) for target in (50, 150)], axis=-1)
    _check(batch.batch["advantages"], objective(rewards).advantages, rows, batch.batch["response_mask"].numpy())
    assert {"iama/short/bon:4", "iama/long/bon:4", "iama/short/reward", "iama/objective"} <= set(metrics)


def _doc_python(marker):
    text = (ROOT / "docs" / "scaling.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def test_scaling_guide_verl_reward_function(monkeypatch):
    """The guide's compute_score runs (with a whitespace tokenizer standing in for the model's)."""
    _words(monkeypatch)
    namespace = {}
    exec(compile(_doc_python("def compute_score"), "length_reward.py", "exec"), namespace)  # noqa: S102
    out = namespace["compute_score"]("ultrafeedback", "word " * 100, "", extra_info={})
    short, long = -((100 - 50) / 256) ** 2, -((100 - 150) / 256) ** 2
    assert out == {"score": 0.5 * short + 0.5 * long, "short": short, "long": long, "length": 100}


def test_scaling_guide_verl_data_preparation(monkeypatch, tmp_path):
    """The guide's data script writes verl's parquet layout (from a stand-in for the hub dataset)."""
    import datasets
    import pandas as pd

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_dict(
        {"prompt": ["What is 2+2?", "Say hi."], "prompt_id": ["a", "b"], "messages": [[], []]}))
    exec(compile(_doc_python("prepare_ultrafeedback"), "prepare_ultrafeedback.py", "exec"), {})  # noqa: S102
    frame = pd.read_parquet(tmp_path / "data" / "ultrafeedback" / "train.parquet")
    assert sorted(frame.columns) == ["data_source", "extra_info", "prompt", "reward_model"]
    row = frame.iloc[1]
    assert list(row["prompt"]) == [{"role": "user", "content": "Say hi."}]
    assert row["reward_model"]["ground_truth"] == "" and row["extra_info"]["index"] == 1


# ---------------------------------------------------------------------------------------------------------------
# the paper-scale TRL configs load (no model is loaded; hub ids are checked for form only)


SCALE_CONFIGS = sorted(p for p in (ROOT / "iama" / "configs" / "scale").glob("*.yaml")
                       if not p.name.startswith("accelerate"))


@pytest.mark.parametrize("path", SCALE_CONFIGS, ids=lambda p: p.stem)
def test_scale_configs_load(path, monkeypatch):
    from iama.config import build_objective, load_config

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a hub id is then valid without its files
    cfg = load_config(path)
    assert cfg.trl.get("use_vllm") is True
    assert cfg.num_generations >= 2 * build_objective(cfg).max_n  # keep M >= 2N (METHOD.md §7)


def test_scale_accelerate_config():
    import yaml

    cfg = yaml.safe_load((ROOT / "iama" / "configs" / "scale" / "accelerate-zero3.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == 3

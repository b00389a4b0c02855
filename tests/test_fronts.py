"""Pareto fronts and hypervolumes against brute force, closed forms, and the paired bootstrap of a difference."""

import itertools

import numpy as np
import pytest

from iama.fronts import bootstrap_fronts, front_line, hypervolume, pareto_mask, pearson_bootstrap


def brute_front(x):
    return np.array([not any(np.all(q >= p) and np.any(q > p) for q in x) for p in x])


def brute_hypervolume(x, ref):
    """The cells of the grid of all coordinates (and the reference's): the volume of those a point dominates."""
    x, ref = np.asarray(x, dtype=float), np.asarray(ref, dtype=float)
    grids = [np.unique(np.append(x[:, i], ref[i])) for i in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*[range(len(g) - 1) for g in grids]):
        lo = np.array([g[c] for g, c in zip(grids, cell)])
        hi = np.array([g[c + 1] for g, c in zip(grids, cell)])
        if np.all(lo >= ref) and np.any(np.all(x >= hi, axis=1)):
            total += np.prod(hi - lo)
    return total


def test_pareto_mask_keeps_duplicates_and_drops_the_dominated():
    pts = np.array([[1, 1], [2, 0], [0, 2], [0.5, 0.5], [1, 1], [2, -1]], dtype=float)
    np.testing.assert_array_equal(pareto_mask(pts), [True, True, True, False, True, False])
    assert pareto_mask(np.array([[0.0, 0.0]])).tolist() == [True]


@pytest.mark.parametrize("m", [2, 3])
def test_pareto_mask_matches_brute_force_with_ties(m):
    rng = np.random.default_rng(m)
    for _ in range(50):
        x = rng.integers(0, 4, size=(rng.integers(1, 12), m)).astype(float)  # small integers: many ties
        np.testing.assert_array_equal(pareto_mask(x), brute_front(x))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_the_grid(m):
    rng = np.random.default_rng(10 + m)
    for trial in range(40):
        k = rng.integers(1, 8)
        x = rng.integers(-2, 5, size=(k, m)).astype(float) if trial % 2 else rng.normal(size=(k, m))
        ref = rng.normal(size=m) - 0.5
        assert hypervolume(x, ref) == pytest.approx(brute_hypervolume(x, ref), abs=1e-12)


def test_hypervolume_closed_forms():
    assert hypervolume([[3.0, 2.0]], [1.0, 1.0]) == pytest.approx(2.0)
    assert hypervolume([[2.0, 1.0], [1.0, 2.0]], [0.0, 0.0]) == pytest.approx(3.0)  # 2 + 2 - 1
    assert hypervolume([[2.0, 3.0, 4.0]], [0.0, 0.0, 0.0]) == pytest.approx(24.0)
    assert hypervolume([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0]], [0.0, 0.0, 0.0]) == pytest.approx(3.0)
    assert hypervolume([[2.0, 2.0], [2.0, 2.0], [1.0, 1.0]], [0.0, 0.0]) == pytest.approx(4.0)  # duplicates


def test_points_not_above_the_reference_add_nothing():
    ref = [1.0, 1.0]
    assert hypervolume([[0.5, 3.0], [3.0, 1.0], [1.0, 1.0]], ref) == 0.0  # below in one, or on the boundary
    assert hypervolume([[0.5, 3.0], [2.0, 2.0]], ref) == pytest.approx(1.0)
    assert hypervolume(np.empty((0, 2)), ref) == 0.0


def test_front_line_is_the_staircase():
    line = front_line([[1.0, 3.0], [2.0, 2.0], [0.5, 0.5], [3.0, 1.0]], [0.0, 0.0])
    np.testing.assert_allclose(line, [[0, 3], [1, 3], [1, 2], [2, 2], [2, 1], [3, 1], [3, 0]])
    line = front_line([[1.0, 3.0], [3.0, 1.0]], [2.0, 2.0])  # the reference beyond neither end: no tails
    np.testing.assert_allclose(line, [[1, 3], [1, 1], [3, 1]])


def test_bootstrap_difference_covers_the_truth_and_is_zero_for_equal_models():
    rng = np.random.default_rng(0)
    p = 400
    # two criteria, per-prompt values with their true means at the rows below
    truth = {"i1": [1.0, 3.0], "i2": [3.0, 1.0], "g1": [2.0, 2.0], "g2": [1.5, 1.5]}
    values = {k: np.array(v) + rng.normal(scale=0.5, size=(p, 2)) for k, v in truth.items()}
    groups = {"iama": ["i1", "i2"], "grpo": ["g1", "g2"]}
    out = bootstrap_fronts(values, groups, [0.0, 0.0], resamples=500)
    true_diff = hypervolume(np.array([truth["i1"], truth["i2"]]), [0, 0]) - hypervolume([truth["g1"]], [0, 0])
    d = out["difference"]
    assert d["ci_low"] < true_diff < d["ci_high"] and d["ci_low"] < d["mean"] < d["ci_high"]
    assert out["methods"]["grpo"]["front"] == ["g1"]
    for k, v in truth.items():
        pt = out["points"][k]
        assert all(lo < t < hi for lo, t, hi in zip(pt["ci_low"], v, pt["ci_high"]))

    same = bootstrap_fronts({"a": values["i1"], "b": values["i1"]}, {"iama": ["a"], "grpo": ["b"]}, [0.0, 0.0])
    assert same["difference"]["mean"] == same["difference"]["ci_low"] == same["difference"]["ci_high"] == 0.0
    assert bootstrap_fronts(values, {"iama": ["i1"]}, [0.0, 0.0])["difference"] is None


def test_pearson_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    y = -x + 0.5 * rng.normal(size=(300, 4))
    out = pearson_bootstrap(x, y)
    assert out["mean"] == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    assert out["ci_low"] < -1 / np.sqrt(1.25) < out["ci_high"] < 0

"""Inference-time algorithms: exact values and first variations, and their estimates from a group of samples.

An N-sample algorithm draws Y_1..Y_N iid from the policy pi and selects one by reward; its kernel
f(r_1..r_N) is the expected reward of the selected sample and its value is R[pi] = E f(r(Y_1)..r(Y_N)).
Its first variation (up to a constant; we always return this canonical form) is

    dR/dpi(y) = N * E_{Y_2..Y_N ~ pi} f(r(y), r(Y_2), ..., r(Y_N)).

`Tilted` is the N -> infinity limit of soft best-of-N: T[pi] ∝ pi * exp(r / tau).

Every array function works on the last axis, so a batch of groups of shape (..., M) is handled at once.

Over 500 lines because it is the algorithms themselves: each one class (value, first variation, estimators,
selection) registered in ALGORITHMS, and they read best side by side.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import numpy as np
from scipy.signal import convolve2d
from scipy.special import gammaln, log_softmax, logsumexp

# Largest number of (subsets x samples x N) a generic kernel may enumerate before we sample or refuse.
MAX_ENUMERATION = 20_000_000
# Subsets drawn per sample by the generic U-statistic when enumerating all of them would cost more.
MAX_SUBSETS = 4096


# ---------------------------------------------------------------------------------------------------------------
# input handling


def to_numpy(x, name="rewards", check=True):
    """float64 numpy copy of x and a function that turns a result back into x's type (numpy or torch).
    With check, refuse what no estimator can use: a scalar, an empty group, NaN or inf."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        dtype, device = x.dtype, x.device
        arr = x.detach().cpu().double().numpy()

        def back(a):
            import torch

            out = torch.as_tensor(np.asarray(a), device=device)
            return out.to(dtype) if dtype.is_floating_point else out.double()

    else:
        arr = np.asarray(x, dtype=np.float64)

        def back(a):
            return np.asarray(a, dtype=np.float64)

    if not check:
        return arr, back
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (the group); got a scalar")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} has an empty group (last axis of length 0)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values; drop or fix those samples first")
    return arr, back


def _check_distribution(probs, rewards):
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if p.ndim != 1 or r.ndim != 1 or p.shape != r.shape or p.size == 0:
        raise ValueError(f"probs and rewards must be 1-D arrays of equal, non-zero length; got {p.shape} and {r.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        raise ValueError("probs and rewards must be finite")
    if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-8:
        raise ValueError(f"probs must be non-negative and sum to 1; they sum to {p.sum():.10g}")
    return p, r


def _check_group(m, n, estimator):
    if n is not None and m < n:
        raise ValueError(
            f"the {estimator!r} estimator needs at least N={n} samples per group, got M={m}; "
            "raise the group size or use estimator='plugin'"
        )


# ---------------------------------------------------------------------------------------------------------------
# order statistics: best-of-N in closed form (worst-of-N is best-of-N of -r, negated)


def _log_comb(n, k):
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    ok = (k >= 0) & (k <= n)
    out = gammaln(np.where(ok, n, 0) + 1) - gammaln(np.where(ok, k, 0) + 1) - gammaln(np.where(ok, n - k, 0) + 1)
    return np.where(ok, out, -np.inf)


def max_weights(m: int, n: int) -> np.ndarray:
    """w_i = C(i-1, n-1) / C(m, n), i = 1..m: the probability that the largest of a random n-subset of m
    sorted items is item i. So sum_i w_i r_(i) is the unbiased estimate of E[max of n] from m samples."""
    i = np.arange(1, m + 1)
    return np.exp(_log_comb(i - 1, n - 1) - _log_comb(m, n))


def _loo_mean(a):
    """The mean of the other samples of each sample's group (last axis): N = 1's leave-one-out baseline."""
    m = a.shape[-1]
    return (a.sum(-1, keepdims=True) - a) / (m - 1) if m > 1 else np.zeros_like(a)


def _max_value_exact(sorted_r, cum_p, n):
    """E[max of n iid] for sorted rewards with cumulative probabilities cum_p (last axis)."""
    prev = np.concatenate([np.zeros_like(cum_p[..., :1]), cum_p[..., :-1]], axis=-1)
    return np.sum(sorted_r * (cum_p**n - prev**n), axis=-1)


def _max_first_variation(sorted_r, cum_p, n):
    """n * E[max(r_(p), M')] at every sorted position p, M' the max of n-1 iid draws.

    The distribution puts mass cum_p[i] - cum_p[i-1] on sorted_r[i]; ties need no care because
    max(r, a) only depends on values, and tied positions come out equal."""
    if n == 1:
        return sorted_r.copy()
    prev = np.concatenate([np.zeros_like(cum_p[..., :1]), cum_p[..., :-1]], axis=-1)
    q = cum_p ** (n - 1) - prev ** (n - 1)  # P(M' = sorted_r[i]) by position
    tail = np.cumsum((q * sorted_r)[..., ::-1], axis=-1)[..., ::-1]  # sum_{i >= p} q_i a_i
    above = np.concatenate([tail[..., 1:], np.zeros_like(tail[..., :1])], axis=-1)  # sum_{i > p}
    return n * (sorted_r * cum_p ** (n - 1) + above)


def _max_estimates_sorted(a, n, estimator):
    """First-variation estimates s and leave-one-out baselines b at each sorted position of groups a (..., M).

    unbiased: s_p = n * mean over (n-1)-subsets S of the others of max(a_p, a_S),
              b_p = n * mean over the same subsets of max(a_S).
    plugin:   s_p = the first variation at the group's empirical distribution,
              b_p = n * E[max of n-1 draws with replacement from the others].
    Both baselines weight the others' order statistics o_0 <= ... <= o_{M-2}; o_i = a_i below p, a_{i+1} above.
    """
    m = a.shape[-1]
    if n == 1:  # plain sampling: RLOO baseline
        return a.copy(), _loo_mean(a)
    if m == 1:  # plugin on a single sample: the others are empty
        return n * a, np.zeros_like(a)
    k = np.arange(1, m)  # order-statistic ranks among the m-1 others
    if estimator == "unbiased":
        w = max_weights(m - 1, n - 1)
    else:
        w = (k / (m - 1)) ** (n - 1) - ((k - 1) / (m - 1)) ** (n - 1)
    lower = np.concatenate([np.zeros_like(a[..., :1]), np.cumsum(w * a[..., :-1], axis=-1)], axis=-1)
    upper_terms = w * a[..., 1:]
    upper = np.concatenate([np.cumsum(upper_terms[..., ::-1], axis=-1)[..., ::-1], np.zeros_like(a[..., :1])], axis=-1)
    b = n * (lower + upper)
    if estimator == "unbiased":
        cw = np.concatenate([[0.0], np.cumsum(w)])  # weight of the others below p
        s = n * (a * cw + upper)
    else:
        cum = np.broadcast_to(np.arange(1, m + 1) / m, a.shape)
        s = _max_first_variation(a, cum, n)
    return s, b


def _sorted_apply(r, fn):
    """Apply fn to r sorted along the last axis and put its outputs back in r's order."""
    order = np.argsort(r, axis=-1, kind="stable")
    a = np.take_along_axis(r, order, axis=-1)
    outs = fn(a)
    inv = np.argsort(order, axis=-1, kind="stable")
    return tuple(np.take_along_axis(o, inv, axis=-1) for o in outs)


# ---------------------------------------------------------------------------------------------------------------
# generic symmetric kernels (soft best-of-N): enumeration, or sampling when enumeration is too large


def _multisets(k, size):
    """All multisets of `size` items from range(k) as an index array (S, size), with multinomial coefficients."""
    idx = np.array(list(itertools.combinations_with_replacement(range(k), size)), dtype=np.int64).reshape(-1, size)
    coef = np.full(len(idx), math.factorial(size), dtype=np.float64)
    for row, c in enumerate(idx):
        for count in np.unique(c, return_counts=True)[1]:
            coef[row] /= math.factorial(int(count))
    return idx, coef


def _generic_first_variation(probs, rewards, n, kernel):
    """n * E[f(r_j, Y_2..Y_n)] with Y iid from probs, for every j (last axis), by enumerating multisets."""
    k = rewards.shape[-1]
    if n == 1:
        return kernel(rewards[..., None])
    count = math.comb(k + n - 2, n - 1)
    if count * k * n > MAX_ENUMERATION:
        raise ValueError(
            f"exact soft best-of-{n} over {k} distinct rewards needs {count:,} multisets per response, "
            f"more than the enumeration limit; use fewer distinct rewards or a smaller N"
        )
    idx, coef = _multisets(k, n - 1)
    weight = coef * np.prod(probs[..., idx], axis=-1)  # (..., S)
    others = rewards[..., idx]  # (..., S, n-1)
    own = np.broadcast_to(rewards[..., :, None, None], rewards.shape + (len(idx), 1))
    full = np.concatenate([own, np.broadcast_to(others[..., None, :, :], own.shape[:-1] + (n - 1,))], axis=-1)
    return n * np.sum(kernel(full) * weight[..., None, :], axis=-1)


def _subset_index(m, n, rng):
    """Indices into the m-1 others of each sample: (m, S, n-1), all subsets if few, else S random ones."""
    others = np.array([[i for i in range(m) if i != j] for j in range(m)], dtype=np.int64).reshape(m, m - 1)
    total = math.comb(m - 1, n - 1)
    if total * m * n <= MAX_ENUMERATION and total <= MAX_SUBSETS:
        combos = np.array(list(itertools.combinations(range(m - 1), n - 1)), dtype=np.int64).reshape(-1, n - 1)
        return others[:, combos]
    rng = np.random.default_rng(rng)
    picks = np.argsort(rng.random((m, MAX_SUBSETS, m - 1)), axis=-1)[..., : n - 1]
    return np.take_along_axis(others[:, None, :], picks, axis=-1)


def _generic_estimates(r, n, kernel, estimator, rng):
    """(s, b) for a generic kernel; see _max_estimates_sorted for what they are."""
    m = r.shape[-1]
    if n == 1:
        return r.copy(), _loo_mean(r)
    if estimator == "plugin":
        uniform = np.full(r.shape, 1.0 / m)
        s = _generic_first_variation(uniform, r, n, kernel)
        others = np.stack([np.delete(r, j, axis=-1) for j in range(m)], axis=-2)  # (..., m, m-1)
        b = n * _generic_first_variation(np.full(others.shape, 1.0 / (m - 1)), others, n - 1, kernel).mean(-1) / (n - 1)
        # n * E f_{n-1}(Z_1..Z_{n-1}) = n * mean_j' [E f_{n-1}(z_j', Z_2..)] = n * mean(fv_{n-1}) / (n-1)
        return s, b
    idx = _subset_index(m, n, rng)  # (m, S, n-1)
    subsets = r[..., idx]  # (..., m, S, n-1)
    own = np.broadcast_to(r[..., :, None, None], subsets.shape[:-1] + (1,))
    s = n * kernel(np.concatenate([own, subsets], axis=-1)).mean(-1)
    b = n * kernel(subsets).mean(-1)
    return s, b


def _generic_value_estimate(r, n, kernel, rng):
    """Unbiased E f(Y_1..Y_n) from a group: the mean of f over n-subsets (all, or MAX_SUBSETS random ones)."""
    m = r.shape[-1]
    total = math.comb(m, n)
    if total <= MAX_SUBSETS:
        idx = np.array(list(itertools.combinations(range(m), n)), dtype=np.int64).reshape(-1, n)
    else:
        idx = np.argsort(np.random.default_rng(rng).random((MAX_SUBSETS, m)), axis=-1)[:, :n]
    return kernel(r[..., idx]).mean(-1)


# ---------------------------------------------------------------------------------------------------------------
# the algorithms


class Algorithm:
    """Base class. A subclass sets the three class attributes below, takes N (if its value depends on N) as its
    first constructor argument and stores it as `n`, returns its other arguments from `_args`, and implements
    `kernel` and `_select`. Exact values and first variations then come from enumerating the kernel, estimates
    from the U-statistic; a closed form overrides them. ALGORITHMS (end of file) reads its spec."""

    name: str  # the spec's first word: 'bon' in 'bon:4'
    # True if the value grows with N, False if it falls; None if it does not depend on N, and then N is not
    # written in the spec (sampling is N = 1, tilted has no N)
    increasing: bool | None = None
    # the spec's arguments after N, in order: {"TAU": float} for 'soft_bon:N:TAU'
    params: ClassVar[dict[str, type]] = {}
    n: int | None = None
    estimators: tuple[str, ...] = ("unbiased", "plugin")
    default_estimator = "unbiased"
    # Every method takes a group's rewards and, optionally, its answers (`answers=`, one hashable key per sample,
    # None for no answer): the group data. Most algorithms select by rewards alone and ignore the answers; one that
    # votes (MajorityVote) needs them, says so here, and refuses a call without them.
    needs_answers = False

    def _args(self) -> tuple:
        """The values of `params`, in order."""
        return ()

    def kernel(self, r):
        """Expected reward of the selected sample, for samples' rewards on the last axis."""
        raise NotImplementedError

    # what it is called, and the same algorithm at another N ---------------------------------------------------
    @property
    def family(self) -> str:
        """The spec without N ('bon:4' -> 'bon', 'soft_bon:4:0.1' -> 'soft_bon:0.1'): the algorithm at every N."""
        return ":".join([self.name, *(f"{a:g}" for a in self._args())])

    @property
    def spec(self) -> str:
        """'bon:4', 'soft_bon:4:0.1', 'tilted:0.1': what parse_algorithm reads back."""
        if self.increasing is None:
            return self.family
        return ":".join([self.name, str(self.n), *(f"{a:g}" for a in self._args())])

    def at(self, n: int) -> Algorithm:
        """The same algorithm with N = n. One whose value does not depend on N is itself (sampling only at N = 1)."""
        if self.increasing is not None:
            return type(self)(n, *self._args())
        if self.n is not None and n != self.n:
            raise ValueError(f"{self.spec} is the N = {self.n} algorithm")
        return self

    def _init_args(self) -> tuple:
        return ((self.n,) if self.increasing is not None else ()) + self._args()

    # exact, on a finite response set ---------------------------------------------------------------------------
    def value(self, probs, rewards, *, answers=None) -> float:
        p, r = _check_distribution(probs, rewards)
        vals, inv = np.unique(r, return_inverse=True)
        pv = np.bincount(inv, weights=p, minlength=len(vals))
        idx, coef = _multisets(len(vals), self.n) if self._feasible(len(vals)) else self._too_large(len(vals))
        return float(np.sum(coef * np.prod(pv[idx], axis=-1) * self.kernel(vals[idx])))

    def first_variation(self, probs, rewards, *, answers=None) -> np.ndarray:
        p, r = _check_distribution(probs, rewards)
        vals, inv = np.unique(r, return_inverse=True)
        pv = np.bincount(inv, weights=p, minlength=len(vals))
        return _generic_first_variation(pv, vals, self.n, self.kernel)[inv]

    def _feasible(self, k):
        return math.comb(k + self.n - 1, self.n) * self.n <= MAX_ENUMERATION

    def _too_large(self, k):
        raise ValueError(f"exact {self} over {k} distinct rewards needs too many multisets to enumerate")

    # estimates from groups -------------------------------------------------------------------------------------
    def _estimates(self, r, estimator, rng):
        return _generic_estimates(r, self.n, self.kernel, estimator, rng)

    def estimate(self, group_rewards, estimator=None, *, answers=None, rng=None):
        """Per-sample first-variation estimates s and leave-one-out baselines b (built from the other samples
        only), both shaped like group_rewards (..., M) and of its type (numpy or torch)."""
        estimator = estimator or self.default_estimator
        if estimator not in self.estimators:
            raise ValueError(f"unknown estimator {estimator!r} for {self}; choose one of {self.estimators}")
        r, back = to_numpy(group_rewards)
        if estimator == "unbiased":
            _check_group(r.shape[-1], self.n, estimator)
        s, b = self._estimates(r, estimator, rng)
        return back(s), back(b)

    def estimate_first_variation(self, group_rewards, estimator=None, *, answers=None, rng=None):
        return self.estimate(group_rewards, estimator, answers=answers, rng=rng)[0]

    def loo_baseline(self, group_rewards, estimator=None, *, answers=None, rng=None):
        return self.estimate(group_rewards, estimator, answers=answers, rng=rng)[1]

    def estimate_value(self, group_rewards, *, answers=None, rng=None):
        """Unbiased estimate of R per group (shape (...)), from the group's M >= N samples."""
        r, back = to_numpy(group_rewards)
        _check_group(r.shape[-1], self.n, "unbiased")
        return back(self._value_estimate(r, rng))

    def _value_estimate(self, r, rng):
        return _generic_value_estimate(r, self.n, self.kernel, rng)

    def estimate_values(self, group_rewards, ns, *, answers=None, rng=None):
        """Value estimates at every N in ns, shape (..., len(ns)), all from the same groups of M >= max(ns)."""
        r, back = to_numpy(group_rewards)
        rng = np.random.default_rng(rng)
        return back(np.stack([self.at(n).estimate_value(r, answers=answers, rng=rng) for n in ns], axis=-1))

    # deployment ------------------------------------------------------------------------------------------------
    def select(self, rewards, generator=None, *, answers=None):
        """Index of the selected candidate among N (last axis); batched over leading axes."""
        r = np.asarray(rewards, dtype=np.float64)
        if r.ndim == 0 or r.shape[-1] != self.n:
            raise ValueError(f"{self} selects among exactly {self.n} candidates; got shape {r.shape}")
        if not np.all(np.isfinite(r)):
            raise ValueError("candidate rewards contain NaN or infinite values")
        return self._select(r, np.random.default_rng(generator))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{v!r}' for v in self._init_args())})"

    def __eq__(self, other):
        return type(self) is type(other) and self._init_args() == other._init_args()

    def __hash__(self):
        return hash((type(self).__name__, self._init_args()))


class OrderStatistic(Algorithm):
    """Best-of-N (sign +1, kernel max) and worst-of-N (sign -1, kernel min) in closed form: O(M log M) per group.
    Worst-of-N of r is minus best-of-N of -r."""

    sign = 1.0

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise ValueError(f"N must be a positive integer, got {n!r}")
        self.n = int(n)

    def pool_weights(self, m: int, ns=None) -> np.ndarray:
        """(len(ns), m): the probability that this algorithm at N, run on a random N-subset of m samples, selects
        the i-th smallest of them, for each N in ns (default its own). The sorted pool times these weights is
        the unbiased value at each N; evaluation weights cross-effects and win rates with them too."""
        ns = [self.n] if ns is None else [self.at(n).n for n in ns]
        w = np.stack([max_weights(m, n) for n in ns])
        return w[:, ::-1].copy() if self.sign < 0 else w

    def kernel(self, r):
        return self.sign * np.max(self.sign * np.asarray(r), axis=-1)

    def value(self, probs, rewards, *, answers=None):
        p, r = _check_distribution(probs, rewards)
        order = np.argsort(self.sign * r, kind="stable")
        return float(self.sign * _max_value_exact(self.sign * r[order], np.cumsum(p[order]), self.n))

    def first_variation(self, probs, rewards, *, answers=None):
        p, r = _check_distribution(probs, rewards)
        order = np.argsort(self.sign * r, kind="stable")
        out = np.empty_like(r)
        out[order] = self.sign * _max_first_variation(self.sign * r[order], np.cumsum(p[order]), self.n)
        return out

    def _estimates(self, r, estimator, rng):
        s, b = _sorted_apply(self.sign * r, lambda a: _max_estimates_sorted(a, self.n, estimator))
        return self.sign * s, self.sign * b

    def _value_estimate(self, r, rng):
        return np.sort(r, axis=-1) @ self.pool_weights(r.shape[-1])[0]

    def estimate_values(self, group_rewards, ns, *, answers=None, rng=None):
        r, back = to_numpy(group_rewards)
        _check_group(r.shape[-1], max(ns), "unbiased")
        return back(np.sort(r, axis=-1) @ self.pool_weights(r.shape[-1], ns).T)

    def _select(self, r, rng):
        return np.argmax(self.sign * r, axis=-1)


class BestOfN(OrderStatistic):
    """Draw N, keep the highest reward. Kernel max."""

    name = "bon"
    increasing = True


class WorstOfN(OrderStatistic):
    """Draw N, keep the lowest reward (an attacker searching for the worst response). Kernel min."""

    name = "won"
    increasing = False
    sign = -1.0


class Sampling(OrderStatistic):
    """One sample, no selection: R = E_pi r, the linear objective of ordinary RLHF/GRPO."""

    name = "sampling"

    def __init__(self):
        self.n = 1


class SoftBestOfN(Algorithm):
    """Draw N, pick sample k with probability softmax(r / temperature)_k. Kernel sum_k softmax(r/tau)_k r_k."""

    name = "soft_bon"
    increasing = True
    params: ClassVar = {"TAU": float}

    def __init__(self, n: int, temperature: float):
        if int(n) != n or n < 1:
            raise ValueError(f"N must be a positive integer, got {n!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.n, self.temperature = int(n), float(temperature)

    def _args(self):
        return (self.temperature,)

    def kernel(self, r):
        return np.sum(np.exp(log_softmax(r / self.temperature, axis=-1)) * r, axis=-1)

    def _select(self, r, rng):
        p = np.exp(log_softmax(r / self.temperature, axis=-1))
        u = rng.random(r.shape[:-1] + (1,))
        return np.minimum((np.cumsum(p, axis=-1) < u).sum(-1), self.n - 1)


class Tilted(Algorithm):
    """T[pi] ∝ pi * exp(r / temperature), the N -> infinity limit of soft best-of-N.

    R = E_pi[r e^{r/tau}] / Z and dR/dpi(y) = e^{r(y)/tau} / Z * (r(y) - R), Z = E_pi e^{r/tau}. From a group:
    'plugin' takes Z and R from the whole group, 'loo' (the default) from the other M-1 samples. Both have
    (nearly) zero mean already, so the leave-one-out baseline is 0. The value estimate is self-normalised:
    consistent, not unbiased (no unbiased estimator of a ratio exists)."""

    name = "tilted"
    params: ClassVar = {"TAU": float}
    estimators = ("loo", "plugin")
    default_estimator = "loo"

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)

    def _args(self):
        return (self.temperature,)

    def value(self, probs, rewards, *, answers=None):
        p, r = _check_distribution(probs, rewards)
        with np.errstate(divide="ignore"):
            return float(np.sum(np.exp(log_softmax(np.log(p) + r / self.temperature)) * r))

    def first_variation(self, probs, rewards, *, answers=None):
        p, r = _check_distribution(probs, rewards)
        with np.errstate(divide="ignore"):
            log_z = logsumexp(np.log(p) + r / self.temperature)
        return np.exp(r / self.temperature - log_z) * (r - self.value(p, r))

    def _estimates(self, r, estimator, rng):
        m = r.shape[-1]
        x = r / self.temperature
        if estimator == "plugin" or m == 1:
            w = np.exp(x - logsumexp(x, axis=-1, keepdims=True))  # softmax = e^{x_j} / (M Z)
            value = np.sum(w * r, axis=-1, keepdims=True)
            return m * w * (r - value), np.zeros_like(r)
        # leave-one-out: for sample j, Z and R from the others (an (M, M) mask per group; M is small)
        mask = ~np.eye(m, dtype=bool)
        xo = np.where(mask, x[..., None, :], -np.inf)  # (..., M, M): row j holds the others of j
        log_zo = logsumexp(xo, axis=-1) - np.log(m - 1)
        value_o = np.sum(np.exp(xo - logsumexp(xo, axis=-1, keepdims=True)) * np.where(mask, r[..., None, :], 0), axis=-1)
        log_w = x - log_zo
        if np.any(log_w > 700):  # e^700 is near float64's limit: the estimate itself is not representable
            raise ValueError(
                f"{self}: leave-one-out weights exp(r_j/tau)/Z_-j overflow (rewards spread {np.ptp(r):.3g} "
                f"over temperature {self.temperature:g}); raise the temperature or use estimator='plugin'"
            )
        return np.exp(log_w) * (r - value_o), np.zeros_like(r)

    def _value_estimate(self, r, rng):
        return np.sum(np.exp(log_softmax(r / self.temperature, axis=-1)) * r, axis=-1)

    def estimate_value(self, group_rewards, *, answers=None, rng=None):
        r, back = to_numpy(group_rewards)
        return back(self._value_estimate(r, rng))

    def select(self, rewards, generator=None, *, answers=None):
        """Sample a candidate with probability ∝ exp(r / temperature) (soft best-of-N over the given pool)."""
        r = np.asarray(rewards, dtype=np.float64)
        return SoftBestOfN(r.shape[-1], self.temperature).select(r, generator)


# ---------------------------------------------------------------------------------------------------------------
# majority voting: selects by answers, counted rather than enumerated


def _vote_sum(w, w_abstain, r, r_abstain, k):
    """sum over vote counts (n_1..n_C, n_0) totalling k of prod_a w[a, n_a] * w_abstain[n_0] * f(n), where f(n) is
    the mean of r over the answers with the most votes (a uniform tie-break; n_0 abstain) and r_abstain if all k
    abstain. w: (C, k + 1), w_abstain: (k + 1,). With w[a, s] = C(c_a, s) this sums f over the k-subsets of a
    group with c_a samples of answer a; with w[a, s] = p_a^s / s! it is E f / k! under draws with replacement.

    For a winner a with t votes, the other answers' generating polynomial in x (votes) and y (answers tied at t),
    prod_{b != a} (sum_{s<t} w[b, s] x^s + w[b, t] x^t y) * sum_s w_abstain[s] x^s, gives in its x^(k-t) y^j
    coefficient the weight of a (j+1)-way tie. Products over b != a come from prefix and suffix products."""
    n_answers = w.shape[0]
    total = r_abstain * w_abstain[k] * np.prod(w[:, 0])
    for t in range(1, k + 1):
        rows, cols = k - t + 1, k // t + 1  # x up to k - t; y up to the ties that fit
        factors = []
        for b in range(n_answers):
            g = np.zeros((min(t, rows - 1) + 1, 2))
            g[: min(t, rows), 0] = w[b, : min(t, rows)]
            if t < rows:
                g[t, 1] = w[b, t]
            factors.append(g)
        prefix = [np.zeros((rows, cols))]
        prefix[0][0, 0] = 1.0
        for g in factors[:-1]:
            prefix.append(convolve2d(prefix[-1], g)[:rows, :cols])
        suffix = np.zeros((rows, cols))
        suffix[:, 0] = w_abstain[:rows]  # abstentions: any number, never tied
        tie_share = 1.0 / np.arange(1, cols + 1)
        for a in range(n_answers - 1, -1, -1):
            if w[a, t] != 0 and r[a] != 0:
                others = convolve2d(prefix[a], suffix)[:rows, :cols]
                total += r[a] * w[a, t] * float(others[k - t] @ tie_share)
            suffix = convolve2d(suffix, factors[a])[:rows, :cols]
    return float(total)


def _answer_classes(answers, rewards):
    """[(indices, mean reward)] per answer, first-seen order, and (indices, mean reward) of the abstainers."""
    members = {}
    for i, a in enumerate(answers):
        members.setdefault(a, []).append(i)
    abstain = members.pop(None, [])
    classes = [(m, float(np.mean(rewards[m]))) for m in members.values()]
    return classes, (abstain, float(np.mean(rewards[abstain])) if abstain else 0.0)


def _comb_row(c, k, shift=0):
    """C(c, s - shift) for s = 0..k: the ways to give an answer held by c samples s - shift of k votes."""
    return np.array([math.comb(c, s - shift) if 0 <= s - shift else 0 for s in range(k + 1)], dtype=np.float64)


def _power_row(p, k, shift=0):
    """p^(s - shift) / (s - shift)! for s = 0..k: the same for draws with replacement."""
    return np.array([p ** (s - shift) / math.factorial(s - shift) if s >= shift else 0.0 for s in range(k + 1)])


def answer_array(answers, shape):
    """answers as an object array of `shape` (nested lists of strings, tuples, None...), each checked hashable.
    Filled level by level, so that tuples stay answers rather than becoming an axis."""
    shape = tuple(shape)
    flat = [answers]
    for size in shape:
        if not all(isinstance(x, (list, tuple, np.ndarray)) and len(x) == size for x in flat):
            raise ValueError(f"answers must have the rewards' shape {shape}, one per sample")
        flat = [y for x in flat for y in x]
    a = np.empty(len(flat), dtype=object)
    a[:] = [x.item() if isinstance(x, np.generic) else x for x in flat]
    a = a.reshape(shape)
    for x in a.flat:
        try:
            hash(x)
        except TypeError:
            raise ValueError(f"answers must be hashable (strings, numbers, tuples or None); got {type(x).__name__}") from None
    return a


class MajorityVote(Algorithm):
    """maj@N, self-consistency: draw N, keep the answer most samples give (ties broken uniformly at random;
    samples without an answer, None, do not vote) and return a sample that gives it.

    Besides rewards it needs each sample's answer (`answers=`, shaped like the rewards). The reward is taken to
    be a function of the answer: where samples with the same answer differ, the answer's mean reward counts.
    Values, first variations and the U-statistic estimates are computed by counting votes (`_vote_sum`), never by
    enumerating subsets. Its value usually grows with N (when the right answer is the most likely one), so
    `increasing` is True for effective-N comparisons; a frequent wrong answer makes it fall."""

    name = "maj"
    increasing = True
    estimators = ("unbiased",)
    needs_answers = True

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise ValueError(f"N must be a positive integer, got {n!r}")
        self.n = int(n)

    def _answers(self, answers, shape):
        """The group's answers as an object array of `shape`; a vote without them is refused."""
        if answers is None:
            raise ValueError(f"{self.family} votes on answers: pass answers=, one per sample")
        return answer_array(answers, shape)

    # exact, on a finite response set ---------------------------------------------------------------------------
    def _exact(self, probs, rewards, answers, fixed=None):
        p, r = _check_distribution(probs, rewards)
        classes, (abstain, r0) = _answer_classes(self._answers(answers, p.shape), r)
        k = self.n - (fixed is not None)
        w = np.array([_power_row(p[m].sum(), self.n, shift=int(i == fixed)) for i, (m, _) in enumerate(classes)])
        w0 = _power_row(p[abstain].sum(), self.n, shift=int(fixed == -1))
        return math.factorial(k) * _vote_sum(w.reshape(len(classes), self.n + 1), w0,
                                             [c[1] for c in classes], r0, self.n), classes, abstain

    def value(self, probs, rewards, *, answers=None) -> float:
        return self._exact(probs, rewards, answers)[0]

    def first_variation(self, probs, rewards, *, answers=None) -> np.ndarray:
        """N E f(y, Y_2..Y_N): one vote fixed to y's answer."""
        _, classes, abstain = self._exact(probs, rewards, answers)
        out = np.empty(len(np.asarray(rewards)))
        for i, (m, _) in enumerate(classes):
            out[m] = self.n * self._exact(probs, rewards, answers, fixed=i)[0]
        if abstain:
            out[abstain] = self.n * self._exact(probs, rewards, answers, fixed=-1)[0]
        return out

    # estimates from groups -------------------------------------------------------------------------------------
    def _groups(self, group_rewards, answers):
        r, back = to_numpy(group_rewards)
        _check_group(r.shape[-1], self.n, "unbiased")
        a = self._answers(answers, r.shape)
        return r.reshape(-1, r.shape[-1]), a.reshape(-1, r.shape[-1]), r.shape, back

    def _group_sum(self, counts, values, abstain, r0, k, fixed=None, shift=0):
        """_vote_sum over the k-subsets of a group whose answers have `counts` samples; with `fixed` (an answer's
        index, -1 for abstain) one of its samples is taken out, and with shift=1 given a vote of its own."""
        w = np.array([_comb_row(c - (i == fixed), k, shift if i == fixed else 0) for i, c in enumerate(counts)])
        w0 = _comb_row(abstain - (fixed == -1), k, shift if fixed == -1 else 0)
        return _vote_sum(w.reshape(len(counts), k + 1), w0, values, r0, k)

    def estimate(self, group_rewards, estimator=None, *, answers=None, rng=None):
        """s_j = N mean_{S ⊂ others, |S| = N-1} f(j, S) and b_j = N mean_S f_{N-1}(S) (N = 1: the others' mean)."""
        if (estimator or "unbiased") != "unbiased":
            raise ValueError(f"unknown estimator {estimator!r} for {self}; choose one of {self.estimators}")
        r, a, shape, back = self._groups(group_rewards, answers)
        s, b = np.empty_like(r), np.empty_like(r)
        n, m = self.n, r.shape[-1]
        scale = n / math.comb(m - 1, n - 1)
        for g in range(len(r)):
            classes, (abstain, r0) = _answer_classes(a[g], r[g])
            counts, values = [len(c[0]) for c in classes], [c[1] for c in classes]
            for fixed, members in [*enumerate(c[0] for c in classes), (-1, abstain)]:
                if not members:
                    continue
                s[g, members] = scale * self._group_sum(counts, values, len(abstain), r0, n, fixed, shift=1)
                b[g, members] = (scale * self._group_sum(counts, values, len(abstain), r0, n - 1, fixed) if n > 1
                                 else (r[g].sum() - r[g, members]) / max(m - 1, 1))
        return back(s.reshape(shape)), back(b.reshape(shape))

    def estimate_first_variation(self, group_rewards, estimator=None, *, answers=None, rng=None):
        return self.estimate(group_rewards, estimator, answers=answers)[0]

    def loo_baseline(self, group_rewards, estimator=None, *, answers=None, rng=None):
        return self.estimate(group_rewards, estimator, answers=answers)[1]

    def estimate_value(self, group_rewards, *, answers=None, rng=None):
        """The mean of f over every N-subset of the group: unbiased."""
        r, a, shape, back = self._groups(group_rewards, answers)
        out = np.empty(len(r))
        for g in range(len(r)):
            classes, (abstain, r0) = _answer_classes(a[g], r[g])
            out[g] = self._group_sum([len(c[0]) for c in classes], [c[1] for c in classes], len(abstain), r0,
                                     self.n) / math.comb(r.shape[-1], self.n)
        return back(out.reshape(shape[:-1]))

    def estimate_values(self, group_rewards, ns, *, answers=None, rng=None):
        r, back = to_numpy(group_rewards)
        return back(np.stack([self.at(n).estimate_value(r, answers=answers) for n in ns], axis=-1))

    # deployment ------------------------------------------------------------------------------------------------
    def select(self, rewards, generator=None, *, answers=None):
        """Index of a candidate with the most frequent answer among N (last axis): ties, and the candidates
        giving it, drawn uniformly; all abstaining, any candidate."""
        r = np.asarray(rewards, dtype=np.float64)
        if r.ndim == 0 or r.shape[-1] != self.n:
            raise ValueError(f"{self} selects among exactly {self.n} candidates; got shape {r.shape}")
        a = self._answers(answers, r.shape).reshape(-1, self.n)
        rng = np.random.default_rng(generator)
        out = np.empty(len(a), dtype=np.int64)
        for g, row in enumerate(a):
            votes = {}
            for i, x in enumerate(row):
                if x is not None:
                    votes.setdefault(x, []).append(i)
            if not votes:
                out[g] = rng.integers(self.n)
                continue
            top = max(map(len, votes.values()))
            winners = [v for v in votes.values() if len(v) == top]
            out[g] = rng.choice(winners[rng.integers(len(winners))])
        return out.reshape(r.shape[:-1]) if r.ndim > 1 else int(out[0])



# ---------------------------------------------------------------------------------------------------------------
# a dense surrogate for majority voting: the vote counted as right against wrong


def _vote_share(n):
    """f(c), c = 0..n right votes of n, when every wrong vote goes to one answer: 1 above n/2, 1/2 at n/2 (a tie,
    broken uniformly as MajorityVote breaks it), 0 below."""
    c = np.arange(n + 1)
    return np.where(2 * c > n, 1.0, np.where(2 * c == n, 0.5, 0.0))


def _binomial_pmf(n, p):
    """(..., n + 1): P(Binomial(n, p) = c) for c = 0..n, for p of any shape (0^0 = 1, so p = 0 and 1 work)."""
    p = np.asarray(p, dtype=np.float64)[..., None]
    c = np.arange(n + 1)
    return np.array([math.comb(n, i) for i in range(n + 1)], dtype=np.float64) * p**c * (1 - p) ** (n - c)


def threshold_vote_value(p, n):
    """V_n(p) = P(Binomial(n, p) > n/2) + P(Binomial(n, p) = n/2) / 2: maj@n when the right answer has chance p
    and every wrong sample gives the same wrong answer. For even n it equals V_{n-1} (a coin-flipped tie)."""
    return _binomial_pmf(n, p) @ _vote_share(n)


def threshold_vote_slope(p, n):
    """dV_n/dp = n E[f(C + 1) - f(C)], C ~ Binomial(n - 1, p): n times the chance that one more right vote among
    the other n - 1 changes the outcome. Positive on (0, 1), zero at 0 and 1 (for n > 2)."""
    return n * (_binomial_pmf(n - 1, p) @ np.diff(_vote_share(n)))


class MajorityVoteDense(MajorityVote):
    """maj@N trained through a dense surrogate (Compute Aligned Training, arXiv 2604.24957): the vote counted as
    right against wrong. With p the chance of a right answer, maj@N is replaced by V_N(p) (threshold_vote_value),
    whose first variation is V_N'(p) r(y) plus a constant; from a group, p is the group's mean reward p̂, and
    every sample gets the one factor w = V_N'(p̂) times its reward minus the others' mean:

        s_j - b_j = w (r_j - mean of the others' rewards)       (baseline 'loo'; 'group_mean': w (r_j - p̂))

    That is RLOO with a per-prompt weight: dense (every group with both right and wrong samples moves), where
    maj:N's exact estimate is zero for every sample that cannot swing a vote. It is biased for maj@N twice: the
    surrogate is maj@N only when all wrong samples agree (one wrong answer, no abstentions; more wrong answers
    split the wrong vote and make the right answer win more often than V_N says), and w(p̂) is a plug-in, biased
    for V_N'(p) at finite M. `iama lab voting` measures the first. Its value, first variation, value estimates
    and selection are maj@N's (it serves the same objective: runs log and evaluate maj@N), only `estimate`
    differs; `surrogate_value` and `surrogate_first_variation` are the surrogate's, exact.

    The reward must be 0/1 correctness (estimate raises otherwise) that gives answers (for maj@N's value). Under
    `scale_rewards: group` a criterion alone loses its per-prompt factor to the group's scale and trains exactly
    as GRPO: the Objective refuses that. The group may be smaller than N (the factor is defined for any M)."""

    name = "maj_dense"
    estimators = ("dense",)
    default_estimator = "dense"

    def _check_binary(self, r):
        bad = r[~np.isin(r, (0.0, 1.0))]
        if bad.size:
            raise ValueError(f"{self.spec} needs a 0/1 reward (1 for a right answer, else 0); got {bad.flat[0]:g}")

    # the surrogate, exact on a finite response set -----------------------------------------------------------
    def surrogate_value(self, probs, rewards) -> float:
        """V_N(p), p = E_pi r."""
        p, r = _check_distribution(probs, rewards)
        self._check_binary(r)
        return float(threshold_vote_value(p @ r, self.n))

    def surrogate_first_variation(self, probs, rewards) -> np.ndarray:
        """N E f(r(y) + C), C ~ Binomial(N - 1, p): the canonical form (MajorityVote.first_variation's), which is
        V_N'(p) r(y) plus a constant."""
        p, r = _check_distribution(probs, rewards)
        self._check_binary(r)
        base, w = self._parts(p @ r)
        return base + w * r

    def _parts(self, p):
        """N E f(C) and V_N'(p), C ~ Binomial(N - 1, p): N E f(r + C) = N E f(C) + V_N'(p) r for r in {0, 1}."""
        return self.n * (_binomial_pmf(self.n - 1, p) @ _vote_share(self.n)[:-1]), threshold_vote_slope(p, self.n)

    # the dense estimate from groups ---------------------------------------------------------------------------
    def estimate(self, group_rewards, estimator=None, *, answers=None, rng=None):
        """s_j = N E f(r_j + C) and b_j = N E f(C) + w mean_{k != j} r_k, C ~ Binomial(N - 1, p̂), w = V_N'(p̂):
        the surrogate's first variation at the group's p̂, and the baseline that leaves s_j - b_j = w (r_j -
        the others' mean). Both depend on r_j through p̂; neither is an unbiased estimate."""
        if (estimator or "dense") != "dense":
            raise ValueError(f"unknown estimator {estimator!r} for {self}; choose one of {self.estimators}")
        r, back = to_numpy(group_rewards)
        self._answers(answers, r.shape)  # not used here, but checked as maj:N checks them
        self._check_binary(r)
        base, w = self._parts(r.mean(-1, keepdims=True))
        return back(base + w * r), back(base + w * _loo_mean(r))


# Every algorithm by its spec's name: training, evaluation and decoding all read specs through this table.
ALGORITHMS = {cls.name: cls for cls in (Sampling, BestOfN, WorstOfN, SoftBestOfN, Tilted, MajorityVote,
                                           MajorityVoteDense)}


def _usage(cls) -> str:
    return ":".join([cls.name, *(["N"] if cls.increasing is not None else []), *cls.params])


def parse_algorithm(spec, n: int | None = None) -> Algorithm:
    """'sampling', 'bon:4', 'won:4', 'soft_bon:4:0.1', 'tilted:0.1', 'maj:8', 'maj_dense:8' (or an Algorithm,
    returned as is). With n, spec may also be a family, a spec without its N ('bon', 'soft_bon:0.1'), which then
    gets N = n."""
    if isinstance(spec, Algorithm):
        return spec
    text = str(spec).strip().lower()
    name, *args = text.split(":")
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {spec!r}; write one of: {', '.join(map(_usage, ALGORITHMS.values()))}")
    cls = ALGORITHMS[name]
    takes_n = cls.increasing is not None
    family = takes_n and n is not None and len(args) == len(cls.params)  # N left out, so n gives it
    types = ([int] if takes_n and not family else []) + list(cls.params.values())
    if len(args) != len(types):
        raise ValueError(f"algorithm {spec!r} takes {len(types)} argument(s) after {name!r}")
    try:
        values = [t(a) for t, a in zip(types, args)]
    except ValueError:
        raise ValueError(f"algorithm {spec!r}: cannot read its arguments") from None
    return cls(n, *values) if family else cls(*values)
